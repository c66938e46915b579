"""Several runs on one page: what differs in their configs, their curves overlaid, their scores
side by side with paired intervals against the first run, and the items on which the first two
runs' tuned models disagree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import UserError
from .compare import comparison_header, comparison_note, comparison_rows, compare_evals
from .html import Section, code, h3, link, p, page, plots, table
from .items import browser_items
from .plots import Chart, Series, line_chart, num
from .rundir import Run, read_run
from .sec_eval import CI_RESAMPLES, browser, per_type, relative_href
from .sec_train import smooth
from .suites import suite_order
from .tables import change, fmt, title

SKIP_KEYS = ("output.dir",)


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested config (lists kept whole)."""
    if not isinstance(cfg, dict):
        return {prefix.rstrip("."): cfg}
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def config_diff(runs: list[Run]) -> tuple[list[str], int]:
    """The dotted keys whose values differ between the runs, and how many keys are the same."""
    flat = [flatten(r.config) for r in runs]
    keys = sorted(set().union(*flat))
    differ = [k for k in keys if k not in SKIP_KEYS and len({repr(f.get(k, "(absent)")) for f in flat}) > 1]
    return differ, len(keys) - len(differ)


def _runs_table(runs: list[Run], out_dir: Path) -> str:
    rows = []
    for r in runs:
        s, t = r.summary, r.summary.get("train") or {}
        rows.append([r.name, s.get("model") or (r.config.get("model") or {}).get("name"), s.get("method"),
                     t.get("steps"), num(t["final_loss"]) if isinstance(t.get("final_loss"), (int, float)) else "-",
                     t.get("tokens_per_s"), s.get("wall_seconds"),
                     link(relative_href(r.path, out_dir) + "report.html", "report")
                     if (r.path / "report.html").is_file() else code(f"tunesmith report {r.path}")])
    return table(["run", "model", "method", "steps", "final loss", "tokens/s", "wall s", ""], rows, "runs-table",
                 numeric=(3, 4, 5, 6))


def _config_section(runs: list[Run]) -> Section:
    differ, same = config_diff(runs)
    flat = [flatten(r.config) for r in runs]
    rows = [[code(k), *(code(repr(f[k]) if k in f else "(absent)") for f in flat)] for k in differ]
    body = p(f"{len(differ)} recipe keys differ; {same} are the same in every run (output.dir not counted).")
    if rows:
        body += table(["key", *(r.name for r in runs)], rows, "config-diff")
    return Section("config", "Config differences", body)


def _curves_section(runs: list[Run]) -> Section | None:
    with_metrics = [r for r in runs if r.metrics is not None and r.metrics.columns]
    if not with_metrics:
        return None
    charts = []
    for key, label in (("loss", "training loss"), ("lr", "learning rate"), ("tokens_per_s", "tokens per second"),
                       ("grad_norm", "gradient norm")):
        series = []
        for r in with_metrics:
            y = r.metrics.columns.get(key)
            if y is None:
                continue
            if key == "loss" and len(y) >= 50:
                y = smooth(y, max(5, len(y) // 50))
            series.append(Series(r.name, r.metrics.steps, y))
        note = " (trailing mean)" if key == "loss" and any(len(r.metrics.steps) >= 50 for r in with_metrics) else ""
        charts.append(line_chart(Chart(label + note, "step", "", series)))
    held = [Series(r.name, [s for s, sc in r.metrics.evals if "loss" in sc],
                   [sc["loss"] for _, sc in r.metrics.evals if "loss" in sc], dots=True) for r in with_metrics]
    held = [s for s in held if len(s.x)]
    if held:
        charts.append(line_chart(Chart("held-out loss during training", "step", "", held)))
    return Section("curves", "Curves", plots(*charts))


def _eval_rows(runs: list[Run]) -> list[list[Any]]:
    rows = []
    suites = suite_order({s for r in runs for when in r.evals.values() for s in when})
    for suite in suites:
        for i, r in enumerate(runs):
            b = (r.evals.get("before", {}).get(suite) or {}).get("score")
            a = (r.evals.get("after", {}).get(suite) or {}).get("score")
            first = (runs[0].evals.get("after", {}).get(suite) or {}).get("score")
            rows.append([title(suite) if i == 0 else "", r.name, fmt(b, suite), fmt(a, suite), change(b, a, suite),
                         "" if i == 0 else change(first, a, suite)])
    return rows


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def _eval_section(runs: list[Run], names: list[str]) -> tuple[Section | None, str]:
    if not any(r.evals for r in runs):
        return None, ""
    body = [table(["suite", "run", "base", "tuned", "tuned - base", f"tuned vs {names[0]}"], _eval_rows(runs),
                  "cmp-eval", numeric=(2, 3, 4, 5))]
    tuned = [(n, r.evals["after"]) for n, r in zip(names, runs) if r.evals.get("after")]
    if len(tuned) >= 2:
        try:
            cmp = compare_evals(tuned, CI_RESAMPLES, 0)
            body.append(h3(f"Tuned models, paired against {tuned[0][0]}") +
                        table(comparison_header(cmp), comparison_rows(cmp), "ci-table", numeric=(2, 4, 5)) +
                        p(comparison_note(cmp)) + "".join(p(f"not compared: {s['suite']} for {s['model']}: "
                                                            f"{s['reason']}") for s in cmp["skipped"]))
        except UserError as err:
            body.append(p(f"No paired intervals between the tuned models: {err}"))
    body.append(_per_type_table(runs, names))
    block = ""
    if len(tuned) >= 2:
        items = browser_items(tuned[0][1], tuned[1][1], (tuned[0][0], tuned[1][0]))
        if items:
            markup, block = browser(items, (tuned[0][0], tuned[1][0]))
            body.append(p(f"The items below compare the tuned model of {tuned[0][0]} (left) with that of "
                          f"{tuned[1][0]} (right): fixed = wrong in {tuned[0][0]}, right in {tuned[1][0]}.") + markup)
    return Section("evaluation", "Evaluation", "".join(body)), block


def _per_type_table(runs: list[Run], names: list[str]) -> str:
    out = []
    suites = suite_order({s for r in runs for s in r.evals.get("after", {})})
    for suite in suites:
        per = [per_type(suite, r.evals.get("after", {}).get(suite)) for r in runs]
        keys = sorted(set().union(*per))
        if not keys:
            continue
        rows = []
        for k in keys:
            vals = [(d.get(k) or (None, None))[1] for d in per]
            rows.append([k, *(fmt(v, suite) for v in vals), *(change(vals[0], v, suite) for v in vals[1:])])
        out.append(h3(f"{title(suite)} per type, tuned models") +
                   table(["type", *names, *(f"{n} vs {names[0]}" for n in names[1:])], rows,
                         numeric=tuple(range(1, 2 * len(names)))))
    return "".join(out)


def comparison_page(run_dirs: list[str | Path], out: str | Path) -> str:
    """The HTML of the comparison of several runs (the first is the reference of every difference)."""
    if len(run_dirs) < 2:
        raise UserError("a comparison needs two or more run directories")
    runs = [read_run(d) for d in run_dirs]
    names = _unique([r.name for r in runs])
    for r, n in zip(runs, names):
        r.name = n
    out_dir = Path(out).resolve().parent
    overview = Section("runs", "Runs", _runs_table(runs, out_dir))
    evaluation, block = _eval_section(runs, names)
    sections = [s for s in (overview, _config_section(runs), _curves_section(runs), evaluation) if s is not None]
    problems = [f"{r.name}: {x}" for r in runs for x in r.problems]
    return page(f"tunesmith comparison: {' vs '.join(names)}", " · ".join(str(r.path) for r in runs), sections,
                problems, [block] if block else [], f"tunesmith {__version__} · one self-contained file")

