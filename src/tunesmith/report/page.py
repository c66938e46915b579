"""One run's report page: RUN/report.html, built from the run directory's files alone.

Sections in order: overview, synthetic data, data, selection, training, evaluation (with the item browser),
exports, phases, provenance; each only when the run holds its data.
"""

from __future__ import annotations

from pathlib import Path

from .. import __version__
from .html import Section, page
from .rundir import Run, read_run
from .sec_data import data_section, selection_section, synth_section
from .sec_eval import evaluation_section, relative_href
from .sec_more import exports_section, overview, phases_section, provenance_section
from .sec_train import training_section

PROVENANCE = "provenance.json"


def run_sections(run: Run, href: str) -> tuple[list[Section], list[str]]:
    """The run's sections (only those with data) and the page's data blocks."""
    evaluation, block = evaluation_section(run.evals, href, run.summary.get("guard"))
    sections = [overview(run), synth_section(run), data_section(run), selection_section(run), training_section(run),
                evaluation, exports_section(run), phases_section(run, href),
                provenance_section(run, run.json(PROVENANCE), href)]
    return [s for s in sections if s is not None], [block] if block else []


def run_page(run_dir: str | Path, out: str | Path | None = None) -> str:
    """The HTML of one run's report; `out` is where it will be written (for the links back to the run's files)."""
    run = read_run(run_dir)
    out_dir = Path(out).parent if out is not None else run.path
    sections, blocks = run_sections(run, relative_href(run.path, out_dir))
    s, cfg = run.summary, run.config
    model = s.get("model") or (cfg.get("model") or {}).get("name") or "model unknown"
    method = s.get("method") or (cfg.get("train") or {}).get("method") or "method unknown"
    return page(f"tunesmith run: {run.name}", f"{model} · {method} · {run.path}", sections, run.problems, blocks,
                f"tunesmith {__version__} · one self-contained file: opens from disk, loads nothing from the network")
