"""The evaluation section: base vs tuned per suite (numbers as the eval JSON holds them), paired
bootstrap intervals, per task or instruction type, and the item browser."""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from typing import Any

from ..errors import UserError
from .compare import comparison_header, comparison_note, comparison_rows, compare_evals
from .html import Raw, Section, h3, json_block, link, p, plots, table
from .items import IF_SUITES, browser_items
from .plots import paired_bars
from .suites import suite_order
from .tables import LOWER_IS_BETTER, change, details as result_details, fmt, title

CI_RESAMPLES = 2000

PER_PAGE = 50


def _score_cell(result: dict[str, Any] | None, suite: str) -> tuple[str, dict[str, Any]]:
    v = None if result is None else result.get("score")
    return fmt(v, suite), {"data-value": repr(float(v)) if isinstance(v, (int, float)) else None,
                           "class": "score"}


def _change_cell(b: float | None, a: float | None, suite: str) -> tuple[str, dict[str, Any]]:
    text = change(b, a, suite)
    if b is None or a is None:
        return text, {}
    better = (a < b) if suite in LOWER_IS_BETTER else (a > b)
    return text, {"class": "up" if better else "down" if a != b else ""}


def eval_table(before: dict[str, Any], after: dict[str, Any], href: str) -> str:
    """One row per suite: n, base, tuned, change, the suite's other numbers, links to the JSON files."""
    rows, attrs = [], []
    for suite in suite_order(set(before) | set(after)):
        b, a = before.get(suite), after.get(suite)
        bs, as_ = (b or {}).get("score"), (a or {}).get("score")
        links = Raw(" ".join(link(f"{href}eval/{when}/{suite}.json", when)
                             for when, r in (("before", b), ("after", a)) if r is not None))
        rows.append([title(suite), (str((a or b or {}).get("n", "")), {"class": "n"}), _score_cell(b, suite),
                     _score_cell(a, suite), _change_cell(bs, as_, suite), result_details(a or b or {}),
                     (links, {"class": "links"})])
        attrs.append({"data-suite": suite})
    return table(["suite", "n", "base", "tuned", "change", "details (tuned)", "records"], rows, "eval-table",
                 numeric=(1, 2, 3, 4), row_attrs=attrs)


def _per_instruction(records: list[dict[str, Any]]) -> dict[str, tuple[int, float]]:
    """IFEval/IFBench: (n, strict accuracy) per instruction id, from the records."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for rec in records:
        for iid, ok in zip(rec.get("instruction_id_list") or [], rec.get("follow_instruction_strict") or []):
            hits[str(iid)].append(bool(ok))
    return {k: (len(v), sum(v) / len(v)) for k, v in hits.items()}


def per_type(suite: str, result: dict[str, Any] | None) -> dict[str, tuple[int, float]]:
    """{type: (n, score)} of one suite result, where the suite has types."""
    if not result:
        return {}
    if suite == "tasks" and isinstance(result.get("per_task"), dict):
        return {k: (v.get("n", 0), v.get("exact_match")) for k, v in result["per_task"].items()}
    if suite in IF_SUITES and result.get("records"):
        return _per_instruction(result["records"])
    if suite == "robustness" and isinstance(result.get("per_task"), dict):  # the mean over phrasings
        per_task = {t: v["per_phrasing"] for t, v in result["per_task"].items() if v.get("per_phrasing")}
        counts = Counter(r.get("task") for r in result.get("records") or [])
        k = max(1, int(result.get("phrasings") or 1))
        return {t: (counts.get(t, 0) // k, sum(v) / len(v)) for t, v in per_task.items()}
    if suite == "data" and isinstance(result.get("per_source"), dict):
        return {k: (v.get("n", 0), v.get("score")) for k, v in result["per_source"].items()}
    return {}


def per_type_block(suite: str, before: dict[str, Any] | None, after: dict[str, Any] | None) -> str:
    b, a = per_type(suite, before), per_type(suite, after)
    if not b and not a:
        return ""
    keys = sorted(set(b) | set(a), key=lambda k: -(((a.get(k) or (0, 0))[1] or 0) - ((b.get(k) or (0, 0))[1] or 0)))
    label = {"tasks": "task type", "robustness": "task type", "data": "source"}.get(suite, "instruction")
    if label == "instruction":  # instruction-level: the share of items whose instruction was followed
        chart_title = heading = f"{title(suite).split(' ')[0]}: each instruction followed (strict)"
    else:
        chart_title, heading = f"{title(suite)} per {label}", f"{title(suite)}: per {label}"
    rows = []
    for k in keys:
        bv, av = (b.get(k) or (None, None))[1], (a.get(k) or (None, None))[1]
        n = (a.get(k) or b.get(k))[0]
        rows.append([k, str(n), fmt(bv, suite), fmt(av, suite), _change_cell(bv, av, suite)])
    chart = paired_bars([(k, (b.get(k) or (0, None))[1], (a.get(k) or (0, None))[1]) for k in keys],
                        chart_title, ("base", "tuned")) if len(keys) <= 40 else ""
    return (h3(f"{heading}, sorted by change") + '<div class="side">' + plots(chart)
            + table([label, "n", "base", "tuned", "change"], rows, "type-table", numeric=(1, 2, 3, 4)) + "</div>")


def interval_block(before: dict[str, Any], after: dict[str, Any]) -> str:
    """The paired comparison with bootstrap intervals (suites with per-item scores in both)."""
    if not before or not after:
        return ""
    try:
        cmp = compare_evals([("base", before), ("tuned", after)], CI_RESAMPLES, 0)
    except UserError as err:
        return p(f"No paired intervals: {err}")
    if not cmp["rows"]:
        return ""
    skipped = "".join(p(f"not compared: {s['suite']} for {s['model']}: {s['reason']}") for s in cmp["skipped"])
    return (h3("Paired comparison with bootstrap intervals")
            + table(comparison_header(cmp), comparison_rows(cmp), "ci-table", numeric=(2, 4, 5))
            + p(comparison_note(cmp)) + skipped)


def browser(items: list[dict[str, Any]], names: tuple[str, str]) -> tuple[str, str]:
    """The browser's markup and its data block."""
    markup = (h3("Items") + p(f"{len(items):,} items: prompt, reference or checker, and both outputs with their "
                              "verdicts. Fixed = wrong before and right after; broken = the other way round.")
              + '<div id="browser" data-count="' + str(len(items)) + '"><div class="controls">'
              '<label>show <select id="f-cat"></select></label><label>suite <select id="f-suite"></select></label>'
              '<label>type <select id="f-type"></select></label>'
              '<input id="f-text" type="search" placeholder="search prompts and outputs">'
              '<button id="prev" type="button">‹ previous</button><button id="next" type="button">next ›</button>'
              '<span id="pageinfo" class="muted"></span></div><div id="items"></div></div>')
    return markup, json_block("items-data", {"items": items, "labels": list(names), "per_page": PER_PAGE})


def relative_href(run_path: str | os.PathLike, out_dir: str | os.PathLike) -> str:
    """The run directory as seen from the page's folder ('' when the page is in the run directory)."""
    rel = os.path.relpath(run_path, out_dir)
    return "" if rel == "." else rel.replace(os.sep, "/") + "/"


def evaluation_section(evals: dict[str, dict[str, Any]], href: str = "", guard: dict[str, Any] | None = None
                       ) -> tuple[Section | None, str]:
    """The section and the browser's data block ('' when no suite has items). guard: the summary's
    specialisation-vs-general verdict (report.guard), shown under the table when the run has one."""
    before, after = evals.get("before") or {}, evals.get("after") or {}
    if not before and not after:
        return None, ""
    body = [p("Held-out evaluation of the base model (before) and the tuned model (after) on the same items. "
              "Scores are the suites' own numbers from eval/<when>/<suite>.json; loss: lower is better.")]
    body.append(eval_table(before, after, href))
    if guard and guard.get("message"):
        body.append(p(guard["message"], "warn" if guard.get("warning") else "note"))
    body.append(interval_block(before, after))
    for suite in suite_order(set(before) | set(after)):
        body.append(per_type_block(suite, before.get(suite), after.get(suite)))
    items = browser_items(before, after)
    block = ""
    if items:
        markup, block = browser(items, ("base", "tuned"))
        body.append(markup)
    return Section("evaluation", "Evaluation", "".join(body)), block
