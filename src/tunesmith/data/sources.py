"""Find what to read: expand files, folders and globs into SourceFiles, and say what was skipped.

A folder is walked depth-first in name order; hidden files, links to folders and files that are
not data (README.md, stray .arrow files...) are listed in the skipped list with the reason. A
datasets `save_to_disk` folder is read as a dataset, never as loose files:

  Dataset folder      (state.json beside its .arrow files): one source
  DatasetDict folder  (dataset_dict.json with one folder per split): only its 'train' split.
                      Every other split (test, validation...) is skipped, with the path to name
                      to read it: a held-out split must never become training data by accident.
                      Without a 'train' split nothing is read. A split folder named by its own
                      path (not matched by a glob) is read whatever its name.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.data.text_readers import encoding_problem, head, json_shape
from tunesmith.errors import UsageError, UserError

# Longest first: the suffix of "a.jsonl.gz" is ".jsonl.gz", not ".gz".
SUPPORTED = (".jsonl.gz", ".json.gz", ".csv.gz", ".jsonl", ".json", ".parquet", ".csv")
TRAIN_SPLIT = "train"  # the one split of a DatasetDict read when the DatasetDict folder is named

Skipped = list[tuple[Path, str]]


@dataclass(frozen=True)
class SourceFile:
    """One thing to read: a data file, or a datasets `save_to_disk` folder (one split).

    kind:  what it holds, for people: "jsonl", "jsonl.gz", "json array", "jsonl (in a .json
           file)", "csv", "parquet", "arrow (datasets save_to_disk, split train)"...
    parts: for a datasets folder, its .arrow files in reading order
    """

    path: Path
    kind: str
    parts: tuple[Path, ...] = ()


def resolve_paths(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The paths `scan` finds (files, and datasets folders), without the skipped list."""
    return [source.path for source in scan(spec)[0]]


def scan(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> tuple[list[SourceFile], Skipped]:
    """Expand a file, a folder (recursively), a glob, or a list of those into things to read.

    Returns (sources, skipped): skipped has (path, reason) for every file of a folder or glob
    that is not read (README.md, hidden files, stray .arrow files, the test split of a
    DatasetDict...). A file named explicitly must be a supported data file. Duplicates are
    dropped, first occurrence kept.
    """
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    if not specs:
        raise UserError("no data path given; set data.path to a file, a folder or a glob")
    sources: list[SourceFile] = []
    skipped: Skipped = []
    for item in specs:
        found, passed = _scan_one(str(item))
        sources += found
        skipped += passed
    seen: set[Path] = set()
    unique = []
    for source in sources:
        key = source.path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(source)
    return unique, skipped


def _scan_one(spec: str) -> tuple[list[SourceFile], Skipped]:
    path = Path(spec).expanduser()
    sources: list[SourceFile] = []
    skipped: Skipped = []
    if path.is_file():
        if suffix(path) is None:
            raise unsupported(path)
        return [_source(path)], []
    if path.is_dir():
        _walk(path, sources, skipped)
        if not sources and dataset_folder(path) == "dict":
            raise UserError(f"nothing to read in the datasets DatasetDict folder {spec}: it has no "
                            f"{TRAIN_SPLIT!r} split; name a split folder to read it{_skip_note(skipped)}")
        if not sources:
            raise UserError(f"no data files ({', '.join(SUPPORTED)}) in folder {spec}{_skip_note(skipped)}")
        return sources, skipped
    if any(c in spec for c in "*?["):
        matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True))
        datasets = {m for m in matches if m.is_dir() and dataset_folder(m)}
        for match in matches:
            owner = dataset_folder(match.parent) and match.parent
            if owner in datasets:
                continue  # a file or split of a dataset read whole: the dataset decides
            if match in datasets:
                held_out = _held_out_reason(match)
                if held_out:
                    skipped.append((match, held_out))
                else:
                    sources += dataset_sources(match, skipped)
            elif match.is_dir():
                continue  # a folder matched by the glob is not scanned
            elif owner:
                skipped.append((match, f"part of the datasets save_to_disk folder {owner}; name the folder to read it"))
            elif suffix(match) is not None:
                sources.append(_source(match))
            else:
                skipped.append((match, _not_data(match)))
        if not sources:
            why = f"{len(matches)} paths matched, none a {', '.join(SUPPORTED)} file" if matches else "nothing matched"
            raise UserError(f"no data files match {spec!r} ({why}){_skip_note(skipped)}")
        return sources, skipped
    raise UserError(f"data path not found: {spec} (relative paths are taken from {Path.cwd()})")


def _walk(folder: Path, sources: list[SourceFile], skipped: Skipped) -> None:
    """Depth-first in name order (the order of sorted paths), datasets folders read whole."""
    if dataset_folder(folder):
        sources += dataset_sources(folder, skipped)
        return
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        path = Path(entry.path)
        if entry.name.startswith("."):
            skipped.append((path, "hidden folder, not scanned" if entry.is_dir() else "hidden file"))
        elif entry.is_dir(follow_symlinks=False):
            _walk(path, sources, skipped)
        elif entry.is_dir():
            skipped.append((path, "link to a folder, not followed; name the folder to read it"))
        elif not entry.is_file():
            skipped.append((path, "not a regular file (a broken link?)"))
        elif suffix(path) is not None:
            sources.append(_source(path))
        else:
            skipped.append((path, _not_data(path)))


def _not_data(path: Path) -> str:
    if path.name.lower().endswith(".arrow"):
        return "an .arrow file outside a datasets save_to_disk folder (no state.json beside it)"
    kind = "".join(path.suffixes[-2:]) if path.suffix.lower() == ".gz" else path.suffix
    return f"not a data file ({kind or 'no extension'})"


def _skip_note(skipped: Skipped) -> str:
    if not skipped:
        return ""
    shown = "; ".join(f"{p.name}: {why}" for p, why in skipped[:5])
    more = f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""
    return f" (skipped {shown}{more})"


def _source(path: Path) -> SourceFile:
    found = suffix(path)
    kind = found.lstrip(".")
    problem = encoding_problem(head(path)) if found != ".parquet" else None
    if problem:
        return SourceFile(path, f"{kind} ({problem.split(' ')[3]}, not readable)")
    if found in (".json", ".json.gz"):
        zipped = " (gzip)" if found.endswith(".gz") else ""
        shape = json_shape(path)
        kind = f"jsonl (in a {found} file)" if shape == "jsonl" else f"json {shape}{zipped}"
    return SourceFile(path, kind)


def suffix(path: Path) -> str | None:
    """The SUPPORTED suffix of a data file's name, or None."""
    name = path.name.lower()
    return next((s for s in SUPPORTED if name.endswith(s)), None)


def unsupported(path: Path) -> UsageError:
    """The error for a file named explicitly that is not a data file."""
    if path.suffix.lower() == ".arrow" and dataset_folder(path.parent):
        return UsageError(f"{path} is one file of a datasets save_to_disk folder; name the folder {path.parent}")
    kind = "".join(path.suffixes[-2:]) if path.suffix.lower() == ".gz" else path.suffix
    kind = repr(kind) if kind else "(no extension)"
    return UsageError(f"{path}: unsupported file type {kind}; expected {', '.join(SUPPORTED)} "
                      "or a datasets save_to_disk folder")


# --- datasets save_to_disk folders ----------------------------------------------------------


def dataset_folder(path: Path) -> str | None:
    """"dataset" for a Dataset folder, "dict" for a DatasetDict folder, else None."""
    if (path / "dataset_dict.json").is_file():
        return "dict"
    if (path / "state.json").is_file() and ((path / "dataset_info.json").is_file() or any(path.glob("*.arrow"))):
        return "dataset"
    return None


def dataset_sources(folder: Path, skipped: Skipped) -> list[SourceFile]:
    """What a datasets folder gives to read: a Dataset itself, a DatasetDict its 'train' split
    only. The splits and files not read go to `skipped`."""
    if dataset_folder(folder) == "dict":
        splits = dataset_listing(folder)
        if splits is None:
            return [SourceFile(folder, "arrow (datasets save_to_disk DatasetDict, unreadable dataset_dict.json)")]
        sources = []
        for split in splits:
            if dataset_folder(folder / split) != "dataset":
                skipped.append((folder / split, f"split {split!r} listed in dataset_dict.json has no dataset folder"))
            elif split == TRAIN_SPLIT:
                sources.append(_split_source(folder / split, split, skipped))
            else:
                skipped.append((folder / split, _split_reason(folder / split, split, TRAIN_SPLIT in splits)))
        known = {"dataset_dict.json", *splits}
        _skip_others(folder, known, "not a split listed in dataset_dict.json", skipped)
        return sources
    split = folder.name if folder.name in (dataset_listing(folder.parent) or ()) else _state(folder).get("_split")
    return [_split_source(folder, split, skipped)]


def _split_reason(path: Path, split: str, has_train: bool) -> str:
    if has_train:
        return f"split {split!r} of a DatasetDict (only {TRAIN_SPLIT!r} is read; name {path} to read it)"
    return (f"split {split!r} of a DatasetDict with no {TRAIN_SPLIT!r} split (nothing is read; "
            f"name {path} to read this split)")


def _held_out_reason(folder: Path) -> str | None:
    """Why a split folder matched by a glob is not read: every split of a DatasetDict but
    'train' is read only when named by its own path. None for anything else."""
    splits = dataset_listing(folder.parent)
    if splits is None or folder.name not in splits or folder.name == TRAIN_SPLIT:
        return None
    return _split_reason(folder, folder.name, TRAIN_SPLIT in splits)


def _split_source(folder: Path, split: str | None, skipped: Skipped) -> SourceFile:
    state = _state(folder)
    try:
        parts = tuple(folder / str(d["filename"]) for d in state["_data_files"])
    except (KeyError, TypeError):
        parts = ()
    kind = "arrow (datasets save_to_disk" + (f", split {split})" if split else ")")
    names = {"state.json", "dataset_info.json", *(p.name for p in parts)}
    _skip_others(folder, names, "not listed in state.json's _data_files", skipped)
    return SourceFile(folder, kind, parts)


def _skip_others(folder: Path, known: set[str], arrow_reason: str, skipped: Skipped) -> None:
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name in known:
            continue
        path = Path(entry.path)
        if entry.name.startswith("."):
            skipped.append((path, "hidden file" if entry.is_file() else "hidden folder, not scanned"))
        elif entry.name.endswith(".arrow") or entry.is_dir():
            skipped.append((path, arrow_reason))
        else:
            skipped.append((path, _not_data(path)))


def dataset_listing(folder: Path) -> list[str] | None:
    """The split names a dataset_dict.json lists; None when there is none or it is unreadable."""
    try:
        return [str(s) for s in json.loads((folder / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _state(folder: Path) -> dict[str, Any]:
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}
