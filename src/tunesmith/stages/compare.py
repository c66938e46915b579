"""The compare verb: `tunesmith compare RUN_OR_EVAL_DIR ...` puts models scored on the same eval items side
by side (report.compare): each suite and metric with 95% bootstrap intervals, and every model's paired
difference to the first one (the base).

A run directory stands for its tuned model (RUN/eval/after) and its `then:` phases in order
(RUN/phases/<name>/eval/after); the first argument, when it is a run directory, also brings its base
model first (RUN/eval/before). Any other argument is a folder of <suite>.json results (an
eval/<label>/ folder, e.g. what `tunesmith eval MODEL` wrote).
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import Field

from .. import ui
from ..config import Section
from ..errors import UsageError, UserError
from ..io import write_json, write_text
from ..report.compare import comparison_markdown, comparison_rich_table, compare_evals
from ..report.stats import LEVEL, RESAMPLES
from .evaluate import load_evals
from .outputs import prepare_out

COMPARE_WRITES = ("comparison.json", "comparison.md")


class CompareConfig(Section):
    """`tunesmith compare RUN_OR_EVAL_DIR ...`: the first model is the base of every paired difference."""

    runs: list[str] = Field(..., description="run directories (base, tuned model, phases) or eval/<label>/ folders")
    resamples: int = Field(RESAMPLES, ge=100, description="bootstrap resamples")
    level: float = Field(LEVEL, gt=0, lt=1, description="interval level")
    seed: int = Field(0, description="bootstrap seed (the same seed gives the same intervals)")
    out: str | None = Field(None, description="folder for comparison.json and comparison.md (default: print only)")


def _phase_names(run: Path) -> list[str]:
    """The run's phases in recipe order (config.yaml's then:), else the folders under RUN/phases by name."""
    folders = {p.name for p in (run / "phases").iterdir() if p.is_dir()} if (run / "phases").is_dir() else set()
    try:
        then = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("then") or []
        ordered = [p["name"] for p in then if isinstance(p, dict) and p.get("name") in folders]
    except (OSError, yaml.YAMLError):
        ordered = []
    return ordered + sorted(folders - set(ordered))


def eval_folders(paths: list[str]) -> list[tuple[str, Path]]:
    """(label, folder of <suite>.json) for each argument, run directories expanded."""
    out: list[tuple[str, Path]] = []
    for i, spec in enumerate(paths):
        path = Path(spec)
        if not path.is_dir():
            raise UserError(f"{spec}: no such folder (give a run directory or an eval/<label>/ folder)")
        if (path / "eval").is_dir():
            found = [("base", path / "eval" / "before")] if i == 0 else []
            found.append((path.name, path / "eval" / "after"))
            found += [(name, path / "phases" / name / "eval" / "after") for name in _phase_names(path)]
            found = [(label, d) for label, d in found if any(d.glob("*.json"))]
            if not found:
                raise UserError(f"{spec}: a run directory without evaluations (no eval/before or eval/after)")
            out += found
        elif any(path.glob("*.json")):
            out.append((path.parent.parent.name + "/" + path.name if path.parent.name == "eval" else path.name, path))
        else:
            raise UserError(f"{spec}: holds no <suite>.json results (give a run directory or an eval/<label>/ folder)")
    labels: dict[str, int] = {}
    unique = []
    for label, d in out:  # the same name twice (two runs' phases called dpo): the later ones get #2, #3
        labels[label] = labels.get(label, 0) + 1
        unique.append((label if labels[label] == 1 else f"{label}#{labels[label]}", d))
    return unique


def run_compare(cfg: CompareConfig, overwrite: bool = False) -> int:
    """The `compare` verb: a table (and with --out, comparison.json and comparison.md)."""
    folders = eval_folders(cfg.runs)
    if len(folders) < 2:
        raise UsageError(f"only one set of evaluations found ({folders[0][1]}): give two or more to compare")
    out = prepare_out(cfg.out, overwrite=overwrite, inputs=[str(d) for _, d in folders], writes=COMPARE_WRITES,
                      marker="comparison.json") if cfg.out else None
    for label, d in folders:
        ui.log(f"{label}: {d}")
    cmp = compare_evals([(label, load_evals(d)) for label, d in folders], cfg.resamples, cfg.seed, cfg.level)
    cmp["folders"] = {label: str(d) for label, d in folders}
    ui.console.print(comparison_rich_table(cmp, f"paired comparison against {cmp['base']}"))
    for skipped in cmp["skipped"]:
        ui.log(f"[yellow]not compared:[/] {skipped['suite']} for {skipped['model']}: {skipped['reason']}")
    if out is not None:
        write_json(out / "comparison.json", cmp)
        write_text(out / "comparison.md", comparison_markdown(cmp))
        ui.log(f"comparison: {out / 'comparison.json'}, {out / 'comparison.md'}")
    return 0
