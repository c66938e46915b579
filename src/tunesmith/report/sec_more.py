"""The exports, phases and provenance sections, and the overview at the top of the page."""

from __future__ import annotations

import hashlib
import platform
import re
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

import yaml

from .compare import comparison_header, comparison_note, comparison_rows
from .html import Section, cards, code, details, h3, link, p, plots, pre, table
from .plots import Chart, Marker, Series, line_chart, num
from .rundir import Run, export_folders, phase_dirs, read_run
from .sec_train import loss_chart
from .tables import change, fmt, title

PACKAGES = ("tunesmith", "torch", "transformers", "peft", "safetensors", "numpy")


def overview(run: Run) -> Section:
    s, cfg = run.summary, run.config
    model = s.get("model") or (cfg.get("model") or {}).get("name")
    items = [("model", model or "-", s.get("method") or (cfg.get("train") or {}).get("method") or "")]
    data = s.get("data") or run.data_report or {}
    if data.get("total") is not None:
        replay = ((run.data_report or {}).get("replay") or {}).get("rows", 0)
        items.append(("rows trained", f"{data.get('kept', 0) + replay:,}", f"of {data['total']:,} read" +
                      (f" + {replay:,} replay" if replay else "")))
    for suite, v in (s.get("eval") or {}).items():
        items.append((title(suite), f"{fmt(v.get('before'), suite)} → {fmt(v.get('after'), suite)}",
                      change(v.get("before"), v.get("after"), suite) + (f", n={v['n']}" if v.get("n") else "")))
    if s.get("wall_seconds") is not None:
        items.append(("wall time", f"{s['wall_seconds'] / 60:.1f} min", f"{s['wall_seconds']} s"))
    if s.get("phases"):
        items.append(("phases", len(s["phases"]), ", ".join(ph["name"] for ph in s["phases"])))
    return Section("overview", "Overview", cards(items))


# ---- exports ------------------------------------------------------------------------------------

def _export_table(run: Run, folder: str, report: dict[str, Any]) -> str:
    steps = report["steps"]
    suites = sorted({k for st in steps for k in (st.get("eval") or {}) if k != "tokens_per_s"})
    speed = any("tokens_per_s" in (st.get("eval") or {}) for st in steps)
    rows = []
    for st in steps:
        ev = st.get("eval") or {}
        rows.append([st.get("step"), code(st.get("path")), f"{st.get('bytes', 0) / 1e6:,.1f}",
                     *(fmt(ev.get(s), s) for s in suites), *([num(ev["tokens_per_s"]) if "tokens_per_s" in ev else "-"]
                                                             if speed else []), st.get("note", "")])
    head = ["export", "path", "size MB", *(title(s) for s in suites), *(["tokens/s"] if speed else []), "note"]
    out = h3(f"{folder}/") + table(head, rows, "export-table", numeric=tuple(range(2, 3 + len(suites) + speed)))
    out += _size_plot(folder, steps, suites)
    if report.get("command"):
        out += p("Made by:") + pre(report["command"])
    for st in steps:
        if st.get("sweep"):
            out += _sweep_plot(run.json(f"{folder}/{st['sweep']}"))
    return out


def _size_plot(folder: str, steps: list[dict[str, Any]], suites: list[str]) -> str:
    """The main score against size on disk, one labelled dot per export (exports of at least two sizes)."""
    main = next((s for s in ("tasks", "ifeval", "ifbench", "humaneval", "data") if s in suites), None)
    if main is None:
        return ""
    pts = [(st["bytes"] / 1e6, st["eval"][main], str(st.get("step"))) for st in steps
           if isinstance((st.get("eval") or {}).get(main), (int, float)) and st.get("bytes")]
    if len({round(a) for a, _, _ in pts}) < 2:
        return ""
    series = [Series(title(main), [a for a, _, _ in pts], [b for _, b, _ in pts], dots=True,
                     labels=[c for _, _, c in pts])]
    return plots(line_chart(Chart(f"{title(main)} against size on disk ({folder}/)", "MB", "score", series)))


def _sweep_plot(sweep: dict[str, Any] | None) -> str:
    """The interpolation sweep (WiSE-FT): every metric over alpha, the chosen alpha marked."""
    if not isinstance(sweep, dict) or not sweep.get("points"):
        return ""
    pts = [pt for pt in sweep["points"] if isinstance(pt, dict) and "alpha" in pt]
    alphas = [pt["alpha"] for pt in pts]
    metrics = sorted({k for pt in pts for k in pt.get("eval", {}) if k != "tokens_per_s"})
    series = [Series(title(m), alphas, [pt.get("eval", {}).get(m, float("nan")) for pt in pts]) for m in metrics]
    chosen = [Marker(float(sweep["chosen"]), f"chosen α={sweep['chosen']}", "#16a34a")] \
        if sweep.get("chosen") is not None else []
    chart = line_chart(Chart("interpolation: base (α=0) to tuned (α=1)", "α", "score", series, chosen))
    return plots(chart) + (p(f"Rule: {sweep['rule']}.") if sweep.get("rule") else "")


def exports_section(run: Run) -> Section | None:
    found = export_folders(run)
    if not found:
        return None
    body = [p("Each export with its size on disk and the scores measured on it (when the export was scored).")]
    for folder, report in found:
        body.append(_export_table(run, folder, report))
    return Section("exports", "Exports", "".join(body))


# ---- phases -------------------------------------------------------------------------------------

def phases_section(run: Run, href: str) -> Section | None:
    dirs = phase_dirs(run)
    if not dirs:
        return None
    listed = {ph["name"]: ph for ph in run.summary.get("phases") or []}
    rows, charts = [], []
    for name, path in dirs:
        sub = read_run(path, name)
        s = listed.get(name) or sub.summary
        t = s.get("train") or {}
        rows.append([name, s.get("method") or (sub.config.get("train") or {}).get("method"), t.get("steps"),
                     num(t["final_loss"]) if isinstance(t.get("final_loss"), (int, float)) else "-",
                     s.get("wall_seconds"), link(f"{href}phases/{name}/report.html", "its report")
                     if (path / "report.html").is_file() else code(f"tunesmith report {path}")])
        charts.append(loss_chart(sub, chart_title=f"phase {name}: loss"))
    body = [p("Each phase of the recipe's then: list trained from the previous phase's merged model, in a run "
              "directory of its own under phases/."),
            table(["phase", "method", "steps", "final loss", "wall s", "report"], rows, numeric=(2, 3, 4))]
    body.append(plots(*charts))
    cmp = run.summary.get("comparison")
    if cmp and cmp.get("rows"):
        body.append(h3("Every model on the same held-out items") +
                    table(comparison_header(cmp), comparison_rows(cmp), "ci-table", numeric=(2, 4, 5)) +
                    p(comparison_note(cmp)))
    return Section("phases", "Phases", "".join(body))


# ---- provenance ---------------------------------------------------------------------------------

def environment() -> dict[str, Any]:
    """Versions and machine of the process building the report (recorded by `tunesmith run` at its end)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    import os

    return {"versions": versions, "python": platform.python_version(),
            "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
            "at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def _base_sha(run: Run) -> str | None:
    card = run.path / "MODEL_CARD.md"
    if not card.is_file():
        return None
    m = re.search(r"weights sha256 `([0-9a-f]{64})`", card.read_text(errors="replace"))
    return m.group(1) if m else None


def provenance_section(run: Run, recorded: dict[str, Any] | None, href: str) -> Section:
    """Versions, machine and command (recorded at the end of the run: provenance.json), hashes, config."""
    rows = []
    if recorded:
        rows.append(["command", code(recorded.get("command") or "-")])
        rows.append(["finished", recorded.get("at", "-")])
        rows.append(["machine", f"{recorded.get('machine')}, Python {recorded.get('python')}"])
        rows.append(["versions", ", ".join(f"{k} {v}" for k, v in (recorded.get("versions") or {}).items())])
    base_sha = _base_sha(run)
    if base_sha:
        rows.append(["base weights sha256", code(base_sha)])
    for folder, report in export_folders(run):
        if report.get("source_sha256"):
            rows.append([f"merged model sha256 ({folder}/export_report.json)", code(report["source_sha256"])])
            break
    for src, v in ((run.data_report or {}).get("sources") or {}).items():
        rows.append([f"data {src} sha256", code(v.get("sha256"))])
    cfg_file = run.path / "config.yaml"
    if cfg_file.is_file():
        rows.append(["config.yaml sha256", code(hashlib.sha256(cfg_file.read_bytes()).hexdigest())])
        rows.append(["reproduce", code(f"tunesmith run {run.path / 'config.yaml'} --output.dir NEW_DIR")])
    if (run.path / "MODEL_CARD.md").is_file():
        rows.append(["model card", link(f"{href}MODEL_CARD.md", "MODEL_CARD.md")])
    body = p("Recorded when the run finished (provenance.json)." if recorded else
             "This run has no provenance.json (it was written before tunesmith recorded one): versions and machine "
             "are unknown; hashes below are read from the run's files.")
    body += table([], rows, "kv") if rows else ""
    if run.config:
        body += details("resolved recipe (config.yaml)", pre(yaml.safe_dump(run.config, sort_keys=False)))
    return Section("provenance", "Provenance", body)
