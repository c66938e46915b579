"""Atomic checkpoints and exact resume.

A checkpoint is a directory `checkpoints/step-000123/` holding the trainable weights
(safetensors), optimizer and scheduler state, every RNG state, and the step. It is written into a
temporary (hidden) directory, a `COMPLETE` marker is written last, everything is fsynced, and only
then is the directory renamed into place: a run killed mid-write leaves no `step-*` directory.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..io import atomic_dir

MARKER = "COMPLETE"


def rng_state() -> dict[str, Any]:
    """Every RNG state, as tensors and plain lists so `torch.load(weights_only=True)` can read it."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(ckpt_root: Path, step: int, weights: dict[str, torch.Tensor], optimizer, scheduler,
                    extra: dict[str, Any], keep: int, protect: int | None = None) -> Path:
    """Write checkpoint `step` atomically and prune all but the newest `keep` complete ones
    (never the `protect` step: the best checkpoint so far)."""
    final = ckpt_root / f"step-{step:06d}"
    with atomic_dir(final, durable=True) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp / "weights.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
                   tmp / "state.pt")
        (tmp / "trainer.json").write_text(json.dumps({"step": step, **extra}, indent=2))
        (tmp / MARKER).write_text(str(step))
    for old in complete_checkpoints(ckpt_root)[:-keep]:
        if protect is None or old.name != f"step-{protect:06d}":
            shutil.rmtree(old, ignore_errors=True)
    return final


def complete_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoint directories, oldest first."""
    if not ckpt_root.is_dir():
        return []
    dirs = [d for d in ckpt_root.glob("step-*") if d.is_dir() and not d.name.endswith(".tmp")
            and (d / MARKER).is_file()]
    return sorted(dirs, key=lambda d: int(d.name.split("-")[1]))


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    found = complete_checkpoints(ckpt_root)
    return found[-1] if found else None


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(weights, state with optimizer/scheduler/rng, trainer.json contents)."""
    weights = load_file(str(path / "weights.safetensors"))
    state = torch.load(path / "state.pt", weights_only=True)
    meta = json.loads((path / "trainer.json").read_text())
    return weights, state, meta
