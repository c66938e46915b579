"""Models scored on the same eval items, side by side: per suite and metric, each model's mean with
its bootstrap interval, and its paired difference to the base (the first model) with its interval.

Per-item scores come from the records of each suite's eval/<label>/<suite>.json:

  ifeval, ifbench, guard   prompt_level_strict, prompt_level_loose (follow_all_strict / _loose), item id `key`
  tasks             exact_match (`correct`), item id the prompt (held-out prompts are unique)
  humaneval         pass@1 (passing samples / samples: the greedy answer, or the unbiased pass@1 of
                    sampled ones), item id `task_id`
  data              the suite's score (`verdict`), item id `source:line`

The mean of each column is the number the suite reports. Loss and robustness are left out: the loss
suite's score is a token-weighted mean, and robustness scores an item over several phrasings.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

from ..errors import UserError
from .stats import LEVEL, RESAMPLES, bootstrap_mean, paired_difference

Record = dict[str, Any]
_IF = (("prompt_level_strict", lambda r: r["follow_all_strict"]),
       ("prompt_level_loose", lambda r: r["follow_all_loose"]))
# suite -> (item id of a record, ((metric, score of a record), ...))
ITEM_METRICS: dict[str, tuple[Callable[[Record], str], tuple[tuple[str, Callable[[Record], Any]], ...]]] = {
    "ifeval": (lambda r: str(r["key"]), _IF),
    "ifbench": (lambda r: str(r["key"]), _IF),
    "guard": (lambda r: str(r["key"]), _IF),
    "tasks": (lambda r: r["prompt"], (("exact_match", lambda r: r["correct"]),)),
    "humaneval": (lambda r: r["task_id"], (("pass@1", lambda r: r["correct"] / max(1, len(r.get("results") or [1]))),)),
    "data": (lambda r: f"{r['source']}:{r['line']}", (("score", lambda r: r["verdict"]),)),
}
SUITE_NAMES = {"ifeval": "IFEval-style", "ifbench": "IFBench", "guard": "general guard (IFEval-style)", "tasks": "tasks", "humaneval": "HumanEval",
               "data": "data"}
METRIC_NAMES = {"prompt_level_strict": "prompt strict", "prompt_level_loose": "prompt loose",
                "exact_match": "exact match", "pass@1": "pass@1", "score": "score"}


def item_scores(suite: str, result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{metric: {item id: score}} of one suite result ({} for a suite without per-item scores here).
    An id seen twice gets `#2`, `#3`... in order, so repeated items still pair up."""
    if suite not in ITEM_METRICS or not result.get("records"):
        return {}
    item_id, metrics = ITEM_METRICS[suite]
    try:
        seen: Counter[str] = Counter()
        ids = []
        for rec in result["records"]:
            key = item_id(rec)
            seen[key] += 1
            ids.append(key if seen[key] == 1 else f"{key}#{seen[key]}")
        return {name: {i: float(score(rec)) for i, rec in zip(ids, result["records"])} for name, score in metrics}
    except (KeyError, TypeError) as err:
        raise UserError(f"the {suite} results lack the per-item field {err} (written by another tunesmith version?)")


def compare_evals(models: list[tuple[str, dict[str, Any]]], resamples: int = RESAMPLES, seed: int = 0,
                  level: float = LEVEL) -> dict[str, Any]:
    """models: [(label, {suite: result})], the base first. Returns the comparison: one row per suite
    and metric with every model's interval and each later model's paired difference to the base;
    `skipped` says which (suite, model) cells could not be filled and why."""
    if len(models) < 1:
        raise UserError("nothing to compare: no evaluations")
    labels = [label for label, _ in models]
    dup = [lab for lab, k in Counter(labels).items() if k > 1]
    if dup:
        raise UserError(f"two compared models share the label {dup[0]!r}")
    base_label = labels[0]
    scores = [(label, {s: item_scores(s, r) for s, r in evals.items()}) for label, evals in models]
    suites = [s for s in ITEM_METRICS if any(s in per for _, per in scores)]
    rows, skipped = [], []
    for suite in suites:
        metric_names = next(list(per[suite]) for _, per in scores if per.get(suite))
        for metric in metric_names:
            row: dict[str, Any] = {"suite": suite, "metric": metric, "n": None, "models": {}, "diff": {}}
            base = scores[0][1].get(suite, {}).get(metric)
            for label, per in scores:
                items = per.get(suite, {}).get(metric)
                if not items:
                    if metric == metric_names[0]:
                        skipped.append({"suite": suite, "model": label, "reason": "not evaluated"})
                    continue
                row["models"][label] = bootstrap_mean([items[i] for i in sorted(items)], resamples, seed,
                                                      level).to_json()
                row["n"] = row["n"] or len(items)
                if label == base_label or base is None:
                    continue
                try:
                    row["diff"][label] = paired_difference(base, items, resamples, seed, level,
                                                           f"{base_label} and {label} ({suite})").to_json()
                except UserError as err:
                    if metric == metric_names[0]:
                        skipped.append({"suite": suite, "model": label, "reason": str(err)})
            rows.append(row)
    return {"base": base_label, "models": labels, "level": level, "resamples": resamples, "seed": seed,
            "rows": rows, "skipped": skipped}


# ---- formatting ---------------------------------------------------------------------------------

def _pct(v: float, signed: bool = False) -> str:
    return f"{100 * v:+.1f}" if signed else f"{100 * v:.1f}"


def score_cell(iv: dict[str, Any] | None) -> str:
    """`62.3 [57.0, 67.7]`: the mean and its interval, in percent."""
    return "-" if iv is None else f"{_pct(iv['mean'])} [{_pct(iv['low'])}, {_pct(iv['high'])}]"


def diff_cell(iv: dict[str, Any] | None) -> str:
    """`+12.0 [+7.1, +17.0] *`: percentage points, starred when the interval excludes 0."""
    if iv is None:
        return "-"
    star = " *" if iv["low"] > 0 or iv["high"] < 0 else ""
    return f"{_pct(iv['mean'], True)} [{_pct(iv['low'], True)}, {_pct(iv['high'], True)}]{star}"


def comparison_header(cmp: dict[str, Any]) -> list[str]:
    pct = f"{round(100 * cmp['level'])}%"
    return ["suite", "metric", "n", "model", f"score % [{pct} CI]", f"vs {cmp['base']}, pp [{pct} CI]"]


def comparison_rows(cmp: dict[str, Any]) -> list[list[str]]:
    """One row per suite, metric and model (the suite and metric named on the first), in
    comparison_header's order."""
    out = []
    for row in cmp["rows"]:
        first = True
        for model in cmp["models"]:
            if model not in row["models"]:
                continue
            head = [SUITE_NAMES.get(row["suite"], row["suite"]), METRIC_NAMES.get(row["metric"], row["metric"]),
                    str(row["n"] or "")] if first else ["", "", ""]
            diff = "" if model == cmp["base"] else diff_cell(row["diff"].get(model))
            out.append(head + [model, score_cell(row["models"][model]), diff])
            first = False
    return out


def comparison_note(cmp: dict[str, Any]) -> str:
    return (f"{round(100 * cmp['level'])}% percentile bootstrap intervals ({cmp['resamples']} resamples, seed "
            f"{cmp['seed']}); differences are paired by item against {cmp['base']}; * = the interval excludes 0.")


def comparison_markdown(cmp: dict[str, Any]) -> str:
    header = comparison_header(cmp)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in comparison_rows(cmp)]
    lines += ["", comparison_note(cmp)]
    lines += [f"- not compared: {s['suite']} for {s['model']}: {s['reason']}" for s in cmp["skipped"]]
    return "\n".join(lines) + "\n"


def comparison_rich_table(cmp: dict[str, Any], heading: str):
    from rich import box
    from rich.table import Table

    table = Table(title=heading, caption=comparison_note(cmp), box=box.SIMPLE_HEAD)
    for i, col in enumerate(comparison_header(cmp)):
        table.add_column(col, justify="right" if i in (2, 4, 5) else "left", no_wrap=i in (4, 5))
    for cells in comparison_rows(cmp):
        table.add_row(*cells)
    return table
