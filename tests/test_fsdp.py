"""train.distributed: fsdp (FSDP2 on CPU with gloo): the same losses as one process, checkpoints through
torch.distributed.checkpoint that resume on another number of ranks (2 -> 1 -> 3), and the NaN stop."""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from conftest import random_samples, tiny_llama
from tunesmith.train.checkpoint import complete_checkpoints, is_sharded_checkpoint
from tunesmith.train.config import TrainConfig

BASE = dict(batch_size=6, max_steps=6, lr=1e-2, warmup_steps=1, save_every=2, distributed="fsdp",
            micro_batch_size=None, lora={"r": 4})
N_SAMPLES = 40


def _cfg(method: str, **kw) -> TrainConfig:
    return TrainConfig(**{**BASE, "method": method, **kw})


def _fresh(cfg: TrainConfig, vocab: int = 97):
    from tunesmith.train.setup import prepare_model

    base = tiny_llama(0, vocab=vocab)
    torch.manual_seed(0)
    return prepare_model(base, cfg)


def _samples():
    return random_samples(N_SAMPLES, seed=21)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, job: dict, out):
    import torch.distributed as dist

    from tunesmith.train.distributed import DistInfo
    from tunesmith.train.loop import train

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg = _cfg(job["method"], **job.get("cfg", {}))
        samples = _samples()
        if job.get("poison_step"):
            from test_nonfinite import poisoned

            samples, _ = poisoned(samples, cfg, job["poison_step"])
        model = _fresh(cfg, vocab=job.get("vocab", 97))
        if job.get("poison_step"):
            model.get_input_embeddings().register_forward_hook(
                lambda mod, inp, o: o.masked_fill((inp[0] == 97).unsqueeze(-1), float("nan")))
        try:
            result = train(model, samples, cfg, job.get("run_dir"), resume=job.get("resume", False),
                           stop_after=job.get("stop_after"), dist_info=DistInfo(rank=rank, world_size=world))
            out[rank] = {"losses": result.losses, "resumed_from": result.resumed_from}
        except Exception as exc:  # noqa: BLE001 - the parent asserts on it
            out[rank] = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        dist.destroy_process_group()


def _spawn(world: int, job: dict) -> list[dict]:
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(world, _port(), job, out), nprocs=world, join=True)
        return [dict(out[r]) for r in range(world)]


def _single(method: str, run_dir=None, **kw):
    from tunesmith.train.loop import train

    cfg = _cfg(method, **kw.pop("cfg", {}))
    return train(_fresh(cfg), _samples(), cfg, run_dir, **kw)


def test_one_process_writes_sharded_checkpoints_and_resumes_exactly(tmp_path):
    straight = _single("lora", cfg={"distributed": "ddp"}).losses
    first = _single("lora", tmp_path, stop_after=2)
    ckpt = complete_checkpoints(tmp_path / "checkpoints")[-1]
    assert ckpt.name == "step-000002" and is_sharded_checkpoint(ckpt)
    assert not (ckpt / "weights.safetensors").exists()
    marker = json.loads((ckpt / "COMPLETE").read_text())
    assert any(name.startswith("dcp/") for name in marker["sha256"])  # the shards are checked on load too
    second = _single("lora", tmp_path, resume=True)
    assert second.resumed_from == 2
    assert first.losses + second.losses == straight  # bit for bit, as with the safetensors checkpoints


@pytest.mark.parametrize("method", ["lora", "full"])
def test_two_ranks_equal_one_process(method):
    single = _single(method, cfg={"distributed": "ddp", "max_steps": 5}).losses
    ranks = _spawn(2, {"method": method, "cfg": {"max_steps": 5}})
    assert ranks[0]["losses"] == ranks[1]["losses"]
    assert ranks[0]["losses"] == pytest.approx(single, abs=1e-5)


def test_two_ranks_checkpoint_resumes_on_one_then_three(tmp_path):
    full = _spawn(2, {"method": "full"})[0]["losses"]
    run = tmp_path / "run"
    a = _spawn(2, {"method": "full", "run_dir": run, "stop_after": 2})[0]
    b = _single("full", run, resume=True, stop_after=4)  # one process, no process group
    assert b.resumed_from == 2
    c = _spawn(3, {"method": "full", "run_dir": run, "resume": True})
    assert c[0]["resumed_from"] == 4 and c[0]["losses"] == c[2]["losses"]
    assert a["losses"] + b.losses + c[0]["losses"] == pytest.approx(full, abs=1e-5)
    meta = json.loads((complete_checkpoints(run / "checkpoints")[-1] / "trainer.json").read_text())
    assert meta["world_size"] == 3 and meta["step"] == 6


def test_nan_stop_under_two_ranks(tmp_path):
    from test_nonfinite import poisoned

    out = _spawn(2, {"method": "full", "run_dir": tmp_path / "bad", "poison_step": 3, "vocab": 98})
    for rank in out:
        assert "NonFiniteError" in rank["error"] and "step 3" in rank["error"], rank
    cfg = _cfg("full")
    _, victim = poisoned(_samples(), cfg, 3)
    assert f"rand:{victim + 1}" in out[0]["error"]
    ckpt = complete_checkpoints(tmp_path / "bad" / "checkpoints")[-1]
    assert ckpt.name == "step-000002" and is_sharded_checkpoint(ckpt)
    # The state saved at the stop is the clean run's state after step 2, bit for bit.
    clean = _spawn(2, {"method": "full", "run_dir": tmp_path / "clean", "stop_after": 2, "vocab": 98})
    assert "error" not in clean[0]
    bad_w = _weights_of(ckpt, cfg)
    clean_w = _weights_of(tmp_path / "clean" / "checkpoints" / "step-000002", cfg)
    assert bad_w.keys() == clean_w.keys() and all(torch.equal(bad_w[k], clean_w[k]) for k in clean_w)


def _weights_of(ckpt, cfg):
    """The trainable weights of a sharded checkpoint, read into one process."""
    from tunesmith.train import fsdp
    from tunesmith.train.schedule import build_optimizer
    from tunesmith.train.setup import trainable_state

    model = _fresh(cfg, vocab=98)
    fsdp.read_sharded(ckpt / "dcp", model, build_optimizer(model.parameters(), cfg.lr, 0.0, cfg.betas))
    return {k: v.detach().clone() for k, v in trainable_state(model).items()}


@pytest.mark.slow
def test_torchrun_train_with_fsdp_saves_the_same_model_as_one_process(tmp_path, tiny_dir):
    """The stage under torchrun: 2 ranks shard, rank 0 gathers the weights and writes adapter/ and model/."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    def recipe(out):
        path = tmp_path / f"{out}.yaml"
        path.write_text(f"model: {tiny_dir}\ndata:\n  tasks: {{n_train: 24}}\noutput:\n  dir: {tmp_path / out}\n"
                        "train:\n  distributed: fsdp\n  max_steps: 3\n  batch_size: 4\n  save_every: 2\n"
                        "  lora: {r: 4}\n  threads: 1\n")
        return str(path)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                str(_port()), "-m", "tunesmith.cli", "train", recipe("two")]
    res = subprocess.run(torchrun, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    res = subprocess.run([sys.executable, "-m", "tunesmith.cli", "train", recipe("one")], capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    two = load_file(str(tmp_path / "two" / "model" / "model.safetensors"))
    one = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    assert two.keys() == one.keys()
    for k in one:
        assert torch.allclose(two[k], one[k], atol=1e-5), k
    assert is_sharded_checkpoint(complete_checkpoints(tmp_path / "two" / "checkpoints")[-1])
    lines = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    ones = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in lines] == pytest.approx([r["loss"] for r in ones], abs=1e-5)


def test_keep_best_reads_a_sharded_checkpoint(tmp_path):
    from tunesmith.stages.train import keep_best
    from tunesmith.train.setup import trainable_state
    from tunesmith.train.tracking import BestTracker

    scores = {2: 0.5, 4: 0.9, 6: 0.7}  # higher is better: step 4 is the best
    best = BestTracker(tmp_path / "checkpoints", "acc", lower_is_better=False)
    cfg = _cfg("lora", keep_checkpoints=1)
    model = _fresh(cfg)
    from tunesmith.train.loop import train

    train(model, _samples(), cfg, tmp_path, evaluate=lambda step: {"acc": scores[step]}, eval_every=2, best=best)
    assert best.step == 4 and is_sharded_checkpoint(tmp_path / "checkpoints" / "step-000004")
    at_4 = _single("lora", tmp_path / "again", stop_after=4)
    assert at_4.stopped_early
    kept = keep_best(model, best, True, tmp_path)
    assert kept["kept_step"] == 4
    want = _weights_of_lora(tmp_path / "again" / "checkpoints" / "step-000004", cfg)
    got = trainable_state(model)
    assert all(torch.equal(got[k], want[k]) for k in want)


def _weights_of_lora(ckpt, cfg):
    from tunesmith.train import fsdp
    from tunesmith.train.setup import trainable_state

    model = _fresh(cfg)
    fsdp.read_sharded(ckpt / "dcp", model)
    return {k: v.detach().clone() for k, v in trainable_state(model).items()}
