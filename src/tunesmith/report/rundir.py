"""Reading a run directory for the report: every file the stages wrote, each optional.

A missing file means the stage did not run (its section is left out); a file that cannot be read
(cut short, not JSON) is noted in `problems` and shown at the top of the page instead of stopping
the report. Large files are streamed: metrics.jsonl into numeric columns, rejects.jsonl and the
curation removals into a few samples per reason, trained.jsonl into token lengths.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..errors import UserError

RUN_MARKERS = ("config.yaml", "summary.json", "metrics.jsonl", "data_report.json", "eval")
SAMPLES_PER_REASON = 5
NOT_CURVES = {"step", "tokens", "targets", "samples", "rows", "elapsed_s", "eval"}  # counters, not curves


@dataclass
class Metrics:
    """metrics.jsonl: one numeric column per key over the logged steps (NaN where a line lacks it),
    and the evaluations during training as (step, {suite: score})."""

    steps: np.ndarray
    columns: dict[str, np.ndarray]
    evals: list[tuple[int, dict[str, float]]]
    lines: int
    last: dict[str, Any]
    nonfinite: list[dict[str, Any]] = field(default_factory=list)  # steps whose loss or grad norm was not finite


@dataclass
class Run:
    path: Path
    name: str
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    data_report: dict[str, Any] | None = None
    metrics: Metrics | None = None
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)  # {"before"|"after": {suite: result}}
    problems: list[str] = field(default_factory=list)

    def json(self, rel: str) -> Any:
        """A JSON file of the run (None when absent; unreadable: noted in problems)."""
        path = self.path / rel
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as err:
            self.problems.append(f"{rel}: cannot be read ({err})")
            return None

    def jsonl(self, rel: str) -> Iterator[dict[str, Any]]:
        """The rows of a JSONL file of the run (none when absent; bad lines noted once in problems)."""
        path = self.path / rel
        if not path.is_file():
            return
        bad = 0
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    bad += 1
                    continue
                if isinstance(row, dict):
                    yield row
        if bad:
            self.problems.append(f"{rel}: {bad} lines are not JSON and were skipped")


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / m).exists() for m in RUN_MARKERS)


def require_run_dir(path: str | Path) -> Path:
    """The path, if it is a run directory; else a UserError saying what it is instead."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such run directory (give the output.dir of a tunesmith run)")
    if not path.is_dir():
        raise UserError(f"{path} is a file, not a run directory (give the output.dir of a tunesmith run)")
    if not is_run_dir(path):
        raise UserError(f"{path} is not a run directory: it holds none of {', '.join(RUN_MARKERS)} "
                        "(give the output.dir of a tunesmith run)")
    return path


def read_run(path: str | Path, name: str | None = None) -> Run:
    """The run directory's files (a UserError when the folder is missing or holds no run)."""
    path = require_run_dir(path)
    run = Run(path, name or path.resolve().name)
    try:
        if (path / "config.yaml").is_file():
            run.config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        run.problems.append(f"config.yaml: cannot be read ({err})")
    if not isinstance(run.config, dict):
        run.config = {}
    run.summary = run.json("summary.json") or {}
    run.data_report = run.json("data_report.json")
    run.metrics = read_metrics(run)
    for when in ("before", "after"):
        folder = path / "eval" / when
        if folder.is_dir():
            found = {p.stem: run.json(f"eval/{when}/{p.name}") for p in sorted(folder.glob("*.json"))}
            found = {k: v for k, v in found.items() if isinstance(v, dict)}
            if found:
                run.evals[when] = found
    return run


def read_metrics(run: Run) -> Metrics | None:
    """metrics.jsonl as columns (one pass; 100,000 lines read in well under a second)."""
    rows: list[dict[str, Any]] = []
    evals: list[tuple[int, dict[str, float]]] = []
    nonfinite: list[dict[str, Any]] = []
    n = 0
    for rec in run.jsonl("metrics.jsonl"):
        n += 1
        if rec.get("nonfinite"):
            nonfinite.append(rec)
            continue
        if isinstance(rec.get("eval"), dict):
            evals.append((int(rec.get("step", 0)), {k: v for k, v in rec["eval"].items()
                                                    if isinstance(v, (int, float))}))
        if "loss" in rec or len(rec) > 2:
            rows.append(rec)
    if not n:
        return None
    keys: dict[str, None] = {}
    for rec in rows[:50] + rows[-50:]:
        for k, v in rec.items():
            if k not in NOT_CURVES and isinstance(v, (int, float)) and not isinstance(v, bool):
                keys[k] = None
    steps = np.asarray([r.get("step", i + 1) for i, r in enumerate(rows)], dtype=np.float64)
    columns = {k: np.asarray([_number(r.get(k)) for r in rows], dtype=np.float64) for k in keys}
    return Metrics(steps, columns, evals, n, rows[-1] if rows else {}, nonfinite)


def _number(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else np.nan


def samples_by_reason(run: Run, rel: str, kind=lambda r: r.get("reason", ""), limit: int = SAMPLES_PER_REASON
                      ) -> tuple[dict[str, int], dict[str, list[dict[str, Any]]]]:
    """Counts and the first `limit` rows of a rejects/removed JSONL file by reason kind."""
    counts: dict[str, int] = defaultdict(int)
    samples: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in run.jsonl(rel):
        k = kind(row)
        counts[k] += 1
        if len(samples[k]) < limit:
            samples[k].append(row)
    return dict(counts), dict(samples)


def token_lengths(run: Run) -> tuple[np.ndarray, int]:
    """Token counts of the trained samples (trained.jsonl) and how many were truncated."""
    lengths, truncated = [], 0
    for row in run.jsonl("trained.jsonl"):
        if isinstance(row.get("tokens"), (int, float)):
            lengths.append(row["tokens"])
            truncated += bool(row.get("truncation"))
    return np.asarray(lengths, dtype=np.float64), truncated


def export_folders(run: Run) -> list[tuple[str, dict[str, Any]]]:
    """(folder name, export_report.json) of every export the run holds: export/ first, then any
    other folder of the run with an export report (export-bench/, wise/, ...)."""
    found = []
    for sub in sorted(p for p in run.path.iterdir() if p.is_dir()):
        if sub.name in ("phases", "eval", "checkpoints", "model", "adapter"):
            continue
        report = run.json(f"{sub.name}/export_report.json")
        if isinstance(report, dict) and report.get("steps"):
            found.append((sub.name, report))
    found.sort(key=lambda kv: kv[0] != "export")
    return found


def phase_dirs(run: Run) -> list[tuple[str, Path]]:
    """The run's `then:` phases in recipe order (config.yaml's then:), then any other folder under phases/."""
    root = run.path / "phases"
    if not root.is_dir():
        return []
    folders = {p.name: p for p in root.iterdir() if is_run_dir(p)}
    then = run.config.get("then") or []
    ordered = [p["name"] for p in then if isinstance(p, dict) and p.get("name") in folders]
    return [(n, folders[n]) for n in ordered + sorted(set(folders) - set(ordered))]


def checkpoints(run: Run) -> list[int]:
    """Steps of the complete checkpoints on disk."""
    root = run.path / "checkpoints"
    if not root.is_dir():
        return []
    steps = []
    for p in root.glob("step-*"):
        if (p / "COMPLETE").exists():
            try:
                steps.append(int(p.name.split("-", 1)[1]))
            except ValueError:
                continue
    return sorted(steps)
