"""Checkpoints that cannot hurt: a full disk leaves the previous one intact with one message; a damaged one is
never loaded (resume takes the one before); a state file carrying pickled code is refused and nothing runs."""

import errno
import json
import pickle

import pytest
import torch

from conftest import random_samples, tiny_llama
from tunesmith.errors import DiskFullError
from tunesmith.io import atomic_dir, sha256_files
from tunesmith.train import checkpoint as ckpt
from tunesmith.train.checkpoint import CheckpointError, complete_checkpoints, load_checkpoint, save_checkpoint
from tunesmith.train.config import TrainConfig
from tunesmith.train.loop import train
from tunesmith.train.schedule import build_optimizer, build_scheduler

CFG = dict(method="full", batch_size=4, max_steps=4, lr=1e-2, warmup_steps=1, save_every=1, keep_checkpoints=3)


def _save(root, step, model):
    opt = build_optimizer(model.parameters(), 1e-3, 0.0, (0.9, 0.999))
    return save_checkpoint(root, step, dict(model.named_parameters()), opt, build_scheduler(opt, 0, 10, 0.1),
                           {"total_steps": 10, "seed": 0}, keep=2)


def test_full_disk_keeps_the_previous_checkpoint_and_says_what_was_needed(tmp_path, monkeypatch):
    model = tiny_llama(0)
    root = tmp_path / "checkpoints"
    _save(root, 1, model)
    real = ckpt.save_file

    def half_then_full(tensors, path):  # writes part of the file, then the disk is full
        with open(path, "wb") as fh:
            fh.write(b"x" * 4096)
        raise OSError(errno.ENOSPC, "No space left on device", path)
    monkeypatch.setattr(ckpt, "save_file", half_then_full)
    with pytest.raises(DiskFullError) as err:
        _save(root, 2, model)
    msg = str(err.value)
    assert "no space left" in msg and "needs about" in msg and "are free" in msg
    assert "step-000001" in msg and "intact" in msg and "--resume" in msg
    assert [c.name for c in complete_checkpoints(root)] == ["step-000001"]
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # the partial write is gone
    monkeypatch.setattr(ckpt, "save_file", real)
    weights, _, meta = load_checkpoint(root / "step-000001")
    assert meta["step"] == 1 and torch.equal(weights["model.norm.weight"], model.model.norm.weight)


def test_full_disk_in_any_atomic_folder_is_one_message(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("kept")
    with pytest.raises(DiskFullError, match=r"needs about 2\.0 MB"):
        with atomic_dir(tmp_path / "out", need_bytes=2 << 20) as tmp:
            (tmp / "a").write_bytes(b"12345")
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
    assert (tmp_path / "out" / "old.txt").read_text() == "kept"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_damaged_checkpoint_is_never_loaded_resume_takes_the_one_before(tmp_path):
    cfg = TrainConfig(**CFG)
    samples = random_samples(20, seed=4)
    torch.manual_seed(0)
    train(tiny_llama(0), samples, cfg, tmp_path / "a", stop_after=3)
    latest = tmp_path / "a" / "checkpoints" / "step-000003"
    blob = bytearray((latest / "weights.safetensors").read_bytes())
    blob[-10] ^= 0x01  # one bit flipped in the last tensor's data
    (latest / "weights.safetensors").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="damaged: weights.safetensors does not match"):
        load_checkpoint(latest)
    resumed = train(tiny_llama(0), samples, cfg, tmp_path / "a", resume=True)
    assert resumed.resumed_from == 2
    straight = train(tiny_llama(0), samples, cfg, tmp_path / "b")
    assert resumed.losses == straight.losses[2:]


class _Canary:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):  # unpickling this would create the canary file
        return (open, (self.path, "w"))


def test_a_state_file_carrying_code_is_refused_and_nothing_runs(tmp_path):
    root = tmp_path / "checkpoints"
    path = _save(root, 1, tiny_llama(0))
    canary = tmp_path / "canary"
    with open(path / "state.pt", "wb") as fh:  # a hostile state.pt, its sum put in the marker too
        torch.save({"optimizer": _Canary(str(canary))}, fh, pickle_module=pickle)
    marker = json.loads((path / "COMPLETE").read_text())
    marker["sha256"]["state.pt"] = sha256_files([path / "state.pt"])
    (path / "COMPLETE").write_text(json.dumps(marker))
    with pytest.raises(CheckpointError, match="refused to load .*state.pt.*nothing in it was run"):
        load_checkpoint(path)
    assert not canary.exists()
