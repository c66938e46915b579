"""Atomic checkpoints and exact resume.

A checkpoint is a directory `checkpoints/step-000123/` holding the trainable weights
(safetensors), optimizer and scheduler state, every RNG state, and the step. It is written into a
temporary (hidden) directory, a `COMPLETE` marker is written last, everything is fsynced, and only
then is the directory renamed into place: a run killed mid-write leaves no `step-*` directory.
The marker holds the sha256 of every file, checked on load: a damaged checkpoint (a bit flip, a
file truncated or replaced later) is never loaded; resume takes the newest one that checks out.
Only safetensors and `torch.load(weights_only=True)` are read: a state file holding other pickled
objects is refused, and nothing in it runs.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import UserError
from ..io import atomic_dir, sha256_files

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


class CheckpointError(UserError):
    """A checkpoint that must not be loaded: damaged (its files do not match the marker) or holding pickled objects."""


class DamagedCheckpoint(CheckpointError):
    """A checkpoint whose files do not match the sha256 sums of its marker (resume takes the one before)."""


def tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor in a nested dict/list (the size a checkpoint of it needs on disk, roughly)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def save_checkpoint(ckpt_root: Path, step: int, weights: dict[str, torch.Tensor] | None, optimizer, scheduler,
                    extra: dict[str, Any], keep: int, protect: int | None = None,
                    rng: dict[str, Any] | None = None, sharded: Path | None = None) -> Path:
    """Write checkpoint `step` atomically and prune all but the newest `keep` complete ones
    (never the `protect` step: the best checkpoint so far).

    rng: the RNG states to store (default: the current ones).
    sharded: a folder of torch.distributed.checkpoint files already holding the weights and the optimizer
        state (FSDP, train.fsdp); it is moved in as dcp/ (weights and optimizer are then not written again).
    A full disk ends in a DiskFullError naming the size needed; the checkpoints already there stay as they were.
    """
    final = ckpt_root / f"step-{step:06d}"
    sweep(ckpt_root, keep=sharded)
    opt_state = optimizer.state_dict() if sharded is None else None
    need = int(1.05 * (tensor_bytes(weights) + tensor_bytes(opt_state))) + (64 << 10)  # + headers, RNG, json
    latest = latest_checkpoint(ckpt_root)
    advice = (f"The latest complete checkpoint, {latest}, is intact. " if latest else "No earlier checkpoint exists. ") \
        + "Free some space (or set output.dir on a larger disk), then run again with --resume"
    with atomic_dir(final, durable=True, need_bytes=need, advice=advice) as tmp:
        state = {"scheduler": scheduler.state_dict(), "rng": rng or rng_state()}
        if sharded is None:
            save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()},
                      str(tmp / "weights.safetensors"))
            state["optimizer"] = opt_state
        else:
            os.replace(sharded, tmp / "dcp")
        with open(tmp / "state.pt", "wb") as fh:  # a file object: a full disk surfaces as an OSError (ENOSPC)
            torch.save(state, fh)
        (tmp / "trainer.json").write_text(json.dumps({"step": step, **extra}, indent=2))
        sums = {str(f.relative_to(tmp)): sha256_files([f]) for f in sorted(tmp.rglob("*")) if f.is_file()}
        (tmp / MARKER).write_text(json.dumps({"step": step, "sha256": sums}, indent=2))
    for old in complete_checkpoints(ckpt_root)[:-keep]:
        if protect is None or old.name != f"step-{protect:06d}":
            gone = old.with_name(f".{old.name}.del{os.getpid()}")
            os.replace(old, gone)  # out of sight at once: a kill mid-delete leaves no half checkpoint named step-*
            shutil.rmtree(gone, ignore_errors=True)
    return final


def sweep(ckpt_root: Path, keep: Path | None = None) -> None:
    """Remove what killed writers left behind: hidden .step-* and .dcp-* folders (half-written or half-deleted
    checkpoints), but `keep` (the shards being written now). Only one run writes a run directory at a time
    (runlock), so none of them is still in use."""
    if ckpt_root.is_dir():
        for left in [*ckpt_root.glob(".step-*"), *ckpt_root.glob(".dcp-*")]:
            if not left.name.endswith(f"{os.getpid()}") and left != keep:
                shutil.rmtree(left, ignore_errors=True)


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


def verify_checkpoint(path: Path) -> None:
    """Raise CheckpointError unless every file the marker lists has its recorded sha256 (markers without
    sums, from older versions, are taken as they are)."""
    try:
        marker = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return  # an older marker: the step number only
    if not isinstance(marker, dict):
        return
    for name, digest in marker.get("sha256", {}).items():
        f = path / name
        if not f.is_file():
            raise DamagedCheckpoint(f"checkpoint {path} is damaged: {name} is missing")
        if sha256_files([f]) != digest:
            raise DamagedCheckpoint(f"checkpoint {path} is damaged: {name} does not match the sha256 recorded "
                                  "when it was written")


def is_sharded_checkpoint(path: Path) -> bool:
    """Written by train.distributed fsdp: weights and optimizer state in dcp/ (torch.distributed.checkpoint)."""
    return (path / "dcp").is_dir()


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any], dict[str, Any]]:
    """(weights, state with optimizer/scheduler/rng, trainer.json contents), after verify_checkpoint.
    A sharded checkpoint (is_sharded_checkpoint) gives weights None and no optimizer: both are in dcp/,
    read by train.fsdp.read_sharded.

    The state is read with torch.load(weights_only=True): pickled objects other than tensors and plain
    containers are refused before anything in them runs (a CheckpointError)."""
    verify_checkpoint(path)
    weights = None if is_sharded_checkpoint(path) else load_file(str(path / "weights.safetensors"))
    try:
        state = torch.load(path / "state.pt", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"refused to load {path / 'state.pt'}: it holds pickled objects other than tensors "
                              f"and plain containers ({first[:200]}); nothing in it was run. A tunesmith checkpoint "
                              "never does: the file was made or changed elsewhere. Delete this checkpoint folder "
                              "(resume then takes the one before) or start a new output.dir") from None
    meta = json.loads((path / "trainer.json").read_text())
    return weights, state, meta
