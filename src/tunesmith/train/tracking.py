"""What a training run records as it goes: metrics.jsonl (and TensorBoard), and the best step."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import DiskFullError, UserError
from ..io import is_disk_full, write_json, write_text


def _lines_up_to(text: str, step: int) -> list[str]:
    """The metrics lines of steps <= `step`. A last line cut short (a run killed while appending it: no newline,
    not JSON) belongs to a step after the last checkpoint and goes too; any other line is kept as it is."""
    lines = text.split("\n")
    torn = lines.pop()  # "" when the file ends with a newline
    kept = []
    for ln in lines:
        try:
            rec = json.loads(ln) if ln else None
        except ValueError:
            kept.append(ln)
            continue
        if isinstance(rec, dict) and rec.get("step", 0) <= step:
            kept.append(ln)
    if torn:
        try:
            rec = json.loads(torn)
            if isinstance(rec, dict) and rec.get("step", 0) <= step:
                kept.append(torn)
        except ValueError:
            pass
    return kept


class MetricsLog:
    """Appends one JSON line per logged step to metrics.jsonl (rank 0 only), optional TensorBoard."""

    def __init__(self, path: Path | None, tensorboard_dir: Path | None, resume_step: int):
        self.path = path
        self.writer = None
        if path is not None and path.exists():  # drop lines past the checkpoint we resume from
            write_text(path, "".join(ln + "\n" for ln in _lines_up_to(path.read_text(), resume_step)))
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("train.tensorboard is on but tensorboard is not installed: "
                                "pip install tensorboard (or set train.tensorboard: false)") from None
            self.writer = SummaryWriter(str(tensorboard_dir))

    def write(self, record: dict) -> None:
        if self.path is not None:
            try:
                with open(self.path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                raise DiskFullError(f"no space left on the device appending step {record.get('step')} to "
                                    f"{self.path}: the checkpoints already written are intact. Free some space (or "
                                    "set output.dir on a larger disk), then run again with --resume") from None
        if self.writer is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.writer.add_scalar(f"train/{k}", v, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class BestTracker:
    """Remembers the best evaluated step by one metric, in checkpoints/best.json (survives resume)."""

    def __init__(self, ckpt_root: Path, metric: str, lower_is_better: bool):
        self.path = ckpt_root / "best.json"
        self.metric, self.lower = metric, lower_is_better
        self.step: int | None = None
        self.value: float | None = None
        self.history: list[dict] = []
        if self.path.is_file():
            saved = json.loads(self.path.read_text())
            if saved.get("metric") == metric:
                self.step, self.value, self.history = saved["step"], saved["value"], saved.get("history", [])

    def update(self, step: int, scores: dict[str, float]) -> bool:
        """Record this evaluation; True when it is the new best."""
        value = scores.get(self.metric)
        if value is None:
            return False
        self.history.append({"step": step, "value": value})
        better = self.value is None or (value < self.value if self.lower else value > self.value)
        if better:
            self.step, self.value = step, value
        return better

    def save(self) -> None:
        write_json(self.path, {"metric": self.metric, "lower_is_better": self.lower, "step": self.step,
                               "value": self.value, "history": self.history})
