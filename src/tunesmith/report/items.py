"""The item browser's data: every scored item of every suite, base and tuned side by side.

An item is a small dict (short keys: the page holds thousands): s suite, k type (task, instruction
group, source), id, p prompt, r reference or checker and rl its label, b/t the two outputs, bv/tv
their verdicts (true, false or null), c the category: fixed (wrong -> right), broken (right ->
wrong), still-wrong, still-right; right/wrong when only one model was evaluated; none when the
suite gives no verdict. Items of the two evaluations are paired by the same ids `report.compare`
uses (the IFEval key, the task prompt, the HumanEval task id, source:line).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

from .compare import ITEM_METRICS
from .suites import suite_order

IF_SUITES = ("ifeval", "ifbench", "guard")  # records with instruction ids and strict/loose verdicts
MAX_CHARS = 6000  # one text of one item; longer ones are cut (the eval JSON holds them whole)
Record = dict[str, Any]


def _verdict(suite: str, rec: Record) -> bool | None:
    if suite in IF_SUITES:
        v = rec.get("follow_all_strict")
    elif suite == "humaneval":
        v = rec.get("passed", (rec.get("correct") or 0) > 0)
    elif suite == "data":
        v = rec.get("verdict")
        v = None if v is None else float(v) >= 0.5
    else:
        v = rec.get("correct")
    return None if v is None else bool(v)


def _id_of(suite: str) -> Callable[[Record], str]:
    if suite in ITEM_METRICS:
        return ITEM_METRICS[suite][0]
    if suite == "robustness":
        return lambda r: f"{r.get('task')}|{r.get('phrasing')}|{r.get('prompt')}"
    return lambda r: str(r.get("prompt", r.get("id", "")))


def _ids(suite: str, records: list[Record]) -> list[str]:
    """Item ids in order; a repeated id gets #2, #3 (as report.compare does)."""
    fn, seen, out = _id_of(suite), Counter(), []
    for i, rec in enumerate(records):
        try:
            key = fn(rec)
        except (KeyError, TypeError):
            key = f"item {i}"
        seen[key] += 1
        out.append(key if seen[key] == 1 else f"{key}#{seen[key]}")
    return out


def _cut(value: Any) -> Any:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    if len(text) <= MAX_CHARS:
        return text
    return text[:MAX_CHARS] + f"… [cut: {len(text):,} characters in the eval JSON]"


def _kind(suite: str, rec: Record) -> str:
    if suite in IF_SUITES:
        return " + ".join(sorted({str(i).split(":")[0] for i in rec.get("instruction_id_list") or []}))
    if suite == "data":
        return str(rec.get("source", ""))
    return str(rec.get("task", ""))


def _reference(suite: str, base: Record | None, tuned: Record | None, names: tuple[str, str]) -> tuple[str, Any]:
    rec = tuned or base or {}
    if suite in IF_SUITES:
        lines = []
        for j, iid in enumerate(rec.get("instruction_id_list") or []):
            marks = []
            for name, r in zip(names, (base, tuned)):
                follows = (r or {}).get("follow_instruction_strict") or []
                if r is not None and j < len(follows):
                    marks.append(f"{name} {'✓' if follows[j] else '✗'}")
            lines.append(f"{iid}" + (f"   ({', '.join(marks)})" if marks else ""))
        return "instructions checked (strict)", "\n".join(lines)
    if suite == "humaneval":
        status = ", ".join(f"{name}: {r.get('status')}" for name, r in zip(names, (base, tuned)) if r)
        return "checker", f"{rec.get('task_id')}: the problem's unit tests ({status})"
    if suite == "data":
        return f"reference ({rec.get('matcher', 'match')})", rec.get("reference")
    return "reference", rec.get("reference")


def _category(bv: bool | None, tv: bool | None, has_b: bool, has_t: bool) -> str:
    if has_b and has_t and bv is not None and tv is not None:
        return {(False, True): "fixed", (True, False): "broken", (False, False): "still-wrong",
                (True, True): "still-right"}[(bv, tv)]
    v = tv if has_t else bv
    return "none" if v is None else "right" if v else "wrong"


def suite_items(suite: str, before: list[Record] | None, after: list[Record] | None,
                names: tuple[str, str] = ("base", "tuned")) -> list[dict[str, Any]]:
    """The browser items of one suite, in the tuned evaluation's order (then base-only items)."""
    b_map = dict(zip(_ids(suite, before), before)) if before else {}
    a_ids = _ids(suite, after) if after else []
    order = a_ids + [i for i in b_map if i not in set(a_ids)]
    a_map = dict(zip(a_ids, after)) if after else {}
    items = []
    for key in order:
        b, t = b_map.get(key), a_map.get(key)
        rec = t or b
        rl, ref = _reference(suite, b, t, names)
        item: dict[str, Any] = {"s": suite, "k": _kind(suite, rec), "id": _short_id(suite, rec, key),
                                "p": _cut(rec.get("prompt")), "rl": rl, "r": _cut(ref)}
        bv = tv = None
        if b is not None:
            item["b"], item["bv"] = _cut(b.get("output", b.get("completion"))), (bv := _verdict(suite, b))
        if t is not None:
            item["t"], item["tv"] = _cut(t.get("output", t.get("completion"))), (tv := _verdict(suite, t))
        item["c"] = _category(bv, tv, b is not None, t is not None)
        items.append(item)
    return items


def _short_id(suite: str, rec: Record, key: str) -> str:
    if suite in IF_SUITES:
        return f"key {rec.get('key')}"
    if suite == "humaneval":
        return str(rec.get("task_id"))
    if suite == "data":
        return f"{rec.get('source')}:{rec.get('line')}"
    if suite == "robustness":
        return f"phrasing {rec.get('phrasing')}"
    return ""


def has_items(result: dict[str, Any] | None) -> bool:
    """A suite whose records show outputs (the loss suite's records do not)."""
    recs = (result or {}).get("records") or []
    return bool(recs) and isinstance(recs[0], dict) and ("output" in recs[0] or "completion" in recs[0])


def browser_items(before: dict[str, Any], after: dict[str, Any], names: tuple[str, str] = ("base", "tuned")
                  ) -> list[dict[str, Any]]:
    """Every item of every suite with outputs, suites in name order."""
    items: list[dict[str, Any]] = []
    for suite in suite_order(set(before) | set(after)):
        b, a = before.get(suite), after.get(suite)
        if has_items(b) or has_items(a):
            items += suite_items(suite, (b or {}).get("records") if has_items(b) else None,
                                 (a or {}).get("records") if has_items(a) else None, names)
    return items
