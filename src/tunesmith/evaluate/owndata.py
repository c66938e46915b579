"""The own-data suite: generate on the user's held-out conversations and match the reference answers.

An item is one conversation as `data.load` reads it: the prompt is every turn before its LAST
assistant turn, the reference is that turn. The model's greedy reply is compared by matchers:

    exact       equal after stripping the whitespace around both
    normalized  equal after `normalize_answer`: Unicode NFKC, case-folded, punctuation removed
                (except a minus sign or a decimal point / digit group mark inside a number, so
                "-3.5" stays unlike "35"), whitespace collapsed
    contains    the normalized reference occurs in the normalized output as whole words ("4" is
                not found in "14"; scripts written without spaces, such as CJK, need no boundary)
    regex       a Python regex found anywhere in the output (re.search): the row's `pattern`
                field, else the reference itself
    MOD:FUNC    a checker of your own: a module importable from the current directory
                (`checks:is_right`) or a file (`path/to/checks.py:is_right`), called as
                FUNC(output: str, reference: str, item: dict) -> bool or a float in [0, 1]

The suite's matcher (`--match`) applies to every item; a row may choose its own with a `match`
field (and its regex with a `pattern` field). `score` is the mean verdict of each item's matcher;
exact, normalized and contains are always reported too, regex over the items that have a pattern.
Bad patterns, unknown matchers and checkers that do not import or fail on their own reference
answer are reported before anything is generated.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import numbers
import os
import re
import sys
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..data.example import Example
from ..errors import UserError
from .generate import generate

MATCHERS = ("exact", "normalized", "contains", "regex")
ALWAYS = ("exact", "normalized", "contains")  # computed for every item
# Scripts written without spaces between words: `contains` needs no word boundary next to them.
_UNSPACED = ("CJK", "HIRAGANA", "KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR", "TIBETAN")


# ---- the text matchers ------------------------------------------------------------------------

def normalize_answer(text: str) -> str:
    """NFKC + case-folding, punctuation removed (not inside numbers), whitespace collapsed."""
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    kept = [ch for i, ch in enumerate(text) if not _is_punct(ch) or _in_number(text, i)]
    return " ".join("".join(kept).split())


def _is_punct(ch: str) -> bool:
    return unicodedata.category(ch).startswith("P")


def _in_number(text: str, i: int) -> bool:
    """A decimal point / digit group mark between digits, or a minus sign starting a number."""
    ch, before, after = text[i], text[i - 1] if i else "", text[i + 1] if i + 1 < len(text) else ""
    if ch in ".,'" and before.isdigit() and after.isdigit():
        return True
    return ch in "-‐‑" and after.isdigit() and not before.isalnum()


def _glued(a: str, b: str) -> bool:
    """Two adjacent characters of one word: both alphanumeric, neither from an unspaced script."""
    return a.isalnum() and b.isalnum() and not any(unicodedata.name(c, "").startswith(_UNSPACED) for c in (a, b))


def contains_words(output_norm: str, reference_norm: str) -> bool:
    """`reference_norm` occurs in `output_norm` and is not glued to a letter or digit on either side."""
    if not reference_norm:
        return not output_norm
    start = output_norm.find(reference_norm)
    while start >= 0:
        end = start + len(reference_norm)
        if (start == 0 or not _glued(output_norm[start - 1], reference_norm[0])) and \
                (end == len(output_norm) or not _glued(reference_norm[-1], output_norm[end])):
            return True
        start = output_norm.find(reference_norm, start + 1)
    return False


def text_verdicts(output: str, reference: str, pattern: str | None = None) -> dict[str, bool]:
    """exact, normalized and contains (and regex when a pattern is given) for one output."""
    out_n, ref_n = normalize_answer(output), normalize_answer(reference)
    verdicts = {"exact": output.strip() == reference.strip(), "normalized": out_n == ref_n,
                "contains": contains_words(out_n, ref_n)}
    if pattern is not None:
        verdicts["regex"] = re.search(pattern, output) is not None
    return verdicts


# ---- checkers of the user's own -----------------------------------------------------------------

def is_checker(spec: str) -> bool:
    """`module:function` or `file.py:function` (not a built-in matcher name)."""
    target, sep, name = spec.rpartition(":")
    return bool(sep and target.strip() and name.strip())


def check_match_spec(spec: str) -> str:
    """A matcher name or a checker spec, else ValueError naming the choices (for config validation)."""
    if spec in MATCHERS or is_checker(spec):
        return spec
    raise ValueError(f"unknown matcher {spec!r}; choose from {', '.join(MATCHERS)}, or a Python checker "
                     "module:function or path/file.py:function")


def load_checker(spec: str) -> Callable[..., Any]:
    """Import the checker function of `spec`; any failure is one UserError naming the module and function."""
    target, _, name = spec.rpartition(":")
    where = f"checker {spec!r}"
    try:
        if target.endswith(".py") or "/" in target or os.sep in target:
            path = Path(target).expanduser()
            if not path.is_file():
                raise UserError(f"{where}: file {path} not found (paths are relative to {os.getcwd()})")
            mod_spec = importlib.util.spec_from_file_location(f"tunesmith_checker_{path.stem}", path)
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            sys.path.insert(0, os.getcwd())  # "module:function" imports from the current directory
            try:
                module = importlib.import_module(target)
            finally:
                sys.path.remove(os.getcwd())
    except UserError:
        raise
    except (Exception, SystemExit) as exc:
        raise UserError(f"{where}: cannot import module {target!r}: {_one_line(exc)}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise UserError(f"{where}: module {target!r} has no function {name!r}")
    return fn


def call_checker(fn: Callable[..., Any], spec: str, output: str, reference: str, item: dict[str, Any],
                 where: str) -> float:
    """The checker's verdict as a float in [0, 1]; an exception or another value is a UserError."""
    try:
        value = fn(output, reference, item)
    except Exception as exc:
        raise UserError(f"checker {spec!r} failed on {where}: {_one_line(exc)}") from None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
        value = value.item()
    if isinstance(value, bool) or (isinstance(value, numbers.Real) and 0.0 <= float(value) <= 1.0):
        return float(value)
    raise UserError(f"checker {spec!r} returned {value!r} on {where}; a checker returns a bool or a number "
                    "in [0, 1]")


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


# ---- items ------------------------------------------------------------------------------------

@dataclass
class OwnItem:
    """One own-data item: the prompt turns, the reference answer and how it is matched."""

    example: Example
    prompt: list[dict[str, Any]]  # every turn before the last assistant turn
    reference: str
    matcher: str
    pattern: str | None = None  # a regex (the row's `pattern`, or the reference under `regex`)
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        ex = self.example
        return ex.where() if hasattr(ex, "where") else f"{ex.source}:{ex.line}"

    @property
    def last_user(self) -> str:
        return next((str(m.get("content", "")) for m in reversed(self.prompt) if m.get("role") == "user"), "")

    def to_checker(self) -> dict[str, Any]:
        """What a checker receives as `item`."""
        return {"source": self.example.source, "line": self.example.line, "messages": self.prompt,
                "prompt": self.last_user, "reference": self.reference, "fields": self.fields}


def _row_text(fields: dict[str, Any], key: str, where: str) -> str | None:
    """A text field of the row (`match`, `pattern`); empty or missing (CSV NaN too) is None."""
    value = fields.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return None
    if not isinstance(value, str):
        raise UserError(f"{where}: field {key!r} must be text, got {value!r}")
    return value


def prepare_items(examples: list[Example], match: str = "normalized"
                  ) -> tuple[list[OwnItem], dict[str, Callable[..., Any]], list[dict[str, str]]]:
    """(items, checkers by spec, skipped rows): every matcher, pattern and checker checked up front.

    A conversation whose last assistant turn has no text (a tool call) cannot be matched and is
    skipped, with its place and reason.
    """
    check_match_spec_or_fail(match, "--match")
    items, skipped = [], []
    for ex in examples:
        last = max((i for i, m in enumerate(ex.messages) if m.get("role") == "assistant"), default=None)
        where = ex.where() if hasattr(ex, "where") else f"{ex.source}:{ex.line}"
        reference = str(ex.messages[last].get("content") or "") if last is not None else ""
        if last is None or not reference.strip():
            skipped.append({"where": where, "reason": "no assistant text to compare with"})
            continue
        fields = dict(ex.meta.get("fields") or {})
        matcher = _row_text(fields, "match", where) or match
        check_match_spec_or_fail(matcher, f"{where}: field 'match'")
        pattern = _row_text(fields, "pattern", where)
        if pattern is None and matcher == "regex":
            pattern = reference
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise UserError(f"{where}: {pattern!r} is not a Python regex ({exc})") from None
        items.append(OwnItem(ex, ex.messages[:last], reference, matcher, pattern, fields))
    checkers = {spec: load_checker(spec) for spec in dict.fromkeys(it.matcher for it in items) if is_checker(spec)}
    for spec, fn in checkers.items():  # a checker that breaks on a right answer breaks before generation
        it = next(i for i in items if i.matcher == spec)
        call_checker(fn, spec, it.reference, it.reference, it.to_checker(), f"{it.where} (its reference answer, "
                     "tried before generating)")
    return items, checkers, skipped


def check_match_spec_or_fail(spec: str, key: str) -> None:
    try:
        check_match_spec(spec)
    except ValueError as exc:
        raise UserError(f"{key}: {exc}") from None


# ---- scoring and the suite ------------------------------------------------------------------

def score_items(items: list[OwnItem], outputs: list[str], checkers: dict[str, Callable[..., Any]],
                match: str = "normalized", skipped: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """The suite result: score (mean verdict of each item's matcher), every matcher's mean, records."""
    records = []
    sums: dict[str, list[float]] = defaultdict(list)
    per_source: dict[str, list[float]] = defaultdict(list)
    for it, out in zip(items, outputs, strict=True):
        verdicts: dict[str, float | bool] = dict(text_verdicts(out, it.reference, it.pattern))
        if it.matcher in checkers:
            verdicts[it.matcher] = call_checker(checkers[it.matcher], it.matcher, out, it.reference,
                                                it.to_checker(), it.where)
        verdict = float(verdicts[it.matcher])
        for name, v in verdicts.items():
            sums[name].append(float(v))
        per_source[it.example.source].append(verdict)
        records.append({"source": it.example.source, "line": it.example.line, "prompt": it.last_user,
                        "reference": it.reference, "output": out, "matcher": it.matcher, "verdict": verdict,
                        "verdicts": verdicts})
    n = len(records)
    result: dict[str, Any] = {"suite": "data", "metric": match,
                              "score": sum(r["verdict"] for r in records) / n if n else 0.0, "n": n}
    for name in (*ALWAYS, "regex"):
        if sums[name]:
            result[name] = sum(sums[name]) / len(sums[name])
    if sums["regex"]:
        result["regex_n"] = len(sums["regex"])
    if checkers:
        result["checkers"] = {s: {"n": len(sums[s]), "score": sum(sums[s]) / len(sums[s])} for s in checkers}
    matchers_used = defaultdict(int)
    for it in items:
        matchers_used[it.matcher] += 1
    result["matchers_used"] = dict(matchers_used)
    if len(per_source) > 1:
        result["per_source"] = {s: {"n": len(v), "score": sum(v) / len(v)} for s, v in sorted(per_source.items())}
    result["skipped"] = skipped or []
    result["records"] = records
    return result


def eval_owndata(model, tokenizer, examples: list[Example], match: str = "normalized", max_new_tokens: int = 256,
                 batch_size: int = 32, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Greedy replies to each conversation's prompt, matched against its last assistant turn."""
    items, checkers, skipped = prepare_items(examples, match)
    outputs = generate(model, tokenizer, [it.prompt for it in items], max_new_tokens=max_new_tokens,
                       batch_size=batch_size, progress=progress)
    result = score_items(items, outputs, checkers, match, skipped)
    result["max_new_tokens"] = max_new_tokens
    return result
