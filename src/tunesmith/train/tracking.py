"""What a training run records as it goes: metrics.jsonl (and TensorBoard), and the best step."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from ..io import write_json, write_text


class MetricsLog:
    """Appends one JSON line per logged step to metrics.jsonl (rank 0 only), optional TensorBoard."""

    def __init__(self, path: Path | None, tensorboard_dir: Path | None, resume_step: int):
        self.path = path
        self.writer = None
        if path is not None and path.exists():  # drop lines past the checkpoint we resume from
            kept = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= resume_step]
            write_text(path, "".join(ln + "\n" for ln in kept))
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("train.tensorboard is on but tensorboard is not installed: "
                                "pip install tensorboard (or set train.tensorboard: false)") from None
            self.writer = SummaryWriter(str(tensorboard_dir))

    def write(self, record: dict) -> None:
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
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
