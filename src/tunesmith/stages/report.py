"""The report verb: `tunesmith report RUN [RUN ...] [--out F]` (re)builds a run's report.html, or with
several runs one comparison page; `tunesmith run` calls `report_at_end` as its last step.

  RUN/report.html       one self-contained page (report.page): data funnel, selection, training curves,
                        evaluation with the item browser, exports, phases, provenance
  RUN/provenance.json   written by `tunesmith run` at its end: the command, versions and machine, so a
                        report rebuilt later still says where the run was made
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from pydantic import Field

from .. import ui
from ..config import Section
from ..errors import UsageError, UserError
from ..io import write_json, write_text
from ..report.compare_page import comparison_page
from ..report.page import PROVENANCE, run_page
from ..report.rundir import require_run_dir
from ..report.sec_more import environment

REPORT = "report.html"
COMPARISON = "comparison.html"


class ReportConfig(Section):
    """`tunesmith report RUN [RUN ...]`: one run's page, or several runs compared (the first is the reference)."""

    runs: list[str] = Field(..., description="run directories (output.dir of tunesmith run); two or more: one "
                                             "comparison page")
    out: str | None = Field(None, description=f"the HTML file to write (default: RUN/{REPORT}; with several "
                                              f"runs: {COMPARISON} in the current folder)")


def _out_file(cfg: ReportConfig) -> Path:
    out = Path(cfg.out) if cfg.out else (Path(cfg.runs[0]) / REPORT if len(cfg.runs) == 1 else Path(COMPARISON))
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give the HTML file to write (e.g. {out / REPORT})")
    if out.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--out {out}: give a file name ending in .html")
    if not out.parent.exists():
        raise UserError(f"--out {out}: the folder {out.parent} does not exist")
    return out


def write_report(run_dirs: list[str], out: Path) -> Path:
    """Build the page (one run, or the comparison of several) and write it atomically."""
    html = run_page(run_dirs[0], out) if len(run_dirs) == 1 else comparison_page(run_dirs, out)
    try:
        return write_text(out, html)
    except OSError as err:
        raise UserError(f"{out}: cannot be written ({err.strerror}); give another --out") from None


def run_report(cfg: ReportConfig) -> int:
    """The `report` verb."""
    t0 = time.perf_counter()
    for run in cfg.runs:
        require_run_dir(run)
    out = _out_file(cfg)
    write_report(cfg.runs, out)
    what = "comparison" if len(cfg.runs) > 1 else "report"
    ui.log(f"{what}: {out} ({out.stat().st_size / 1e6:.1f} MB, built in {time.perf_counter() - t0:.1f} s; "
           "one file, opens from disk)")
    return 0


def report_at_end(run_dir: str | Path) -> Path | None:
    """The last step of `tunesmith run`: record provenance.json, then write RUN/report.html. A report that
    cannot be built never costs the run: the failure is said and the run goes on (returns None)."""
    run_dir = Path(run_dir)
    try:
        write_json(run_dir / PROVENANCE, {**environment(), "command": "tunesmith " + " ".join(sys.argv[1:])
                                          if Path(sys.argv[0]).name == "tunesmith" else " ".join(sys.argv)})
        out = write_report([str(run_dir)], run_dir / REPORT)
    except Exception as err:  # noqa: BLE001 - the run's results are on disk; the page is a view of them
        from rich.markup import escape

        ui.log(f"[yellow]report: could not build {escape(str(run_dir / REPORT))}: {type(err).__name__}: "
               f"{escape(str(err))}[/] (the run is complete; try again with: tunesmith report {escape(str(run_dir))})")
        return None
    ui.log(f"report: {out}")
    return out
