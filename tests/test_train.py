"""The training loop: exact resume, gradient-accumulation equivalence, atomic checkpoints."""

import json

import pytest
import torch

from conftest import random_samples, tiny_llama
from tunesmith.train.config import TrainConfig
from tunesmith.train.checkpoint import complete_checkpoints, latest_checkpoint
from tunesmith.train.loop import step_indices, train
from tunesmith.train.setup import prepare_model


def fresh(cfg: TrainConfig, init_seed: int = 0):
    """The same base model every time; `init_seed` drives the LoRA initialisation."""
    base = tiny_llama(0)
    torch.manual_seed(init_seed)
    return prepare_model(base, cfg)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_resume_after_stop_is_bit_identical(tmp_path, method):
    samples = random_samples(40, seed=5)
    # Dropout on, so the restored RNG state matters too.
    cfg = TrainConfig(method=method, lora={"r": 4, "dropout": 0.1}, batch_size=4, max_steps=8, lr=1e-2,
                      warmup_steps=2, save_every=100, micro_batch_size=2)
    straight = train(fresh(cfg), samples, cfg, tmp_path / "a")
    first = train(fresh(cfg), samples, cfg, tmp_path / "b", stop_after=3)
    assert first.stopped_early and len(first.losses) == 3
    assert latest_checkpoint(tmp_path / "b" / "checkpoints").name == "step-000003"
    # A new process may initialise LoRA differently; resume must overwrite every trainable weight.
    second = train(fresh(cfg, init_seed=123), samples, cfg, tmp_path / "b", resume=True)
    assert second.resumed_from == 3
    resumed = first.losses + second.losses
    assert resumed == straight.losses  # bit-identical floats, not approximately equal
    logged = [json.loads(l)["loss"] for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert logged == straight.losses  # no duplicated or missing metric lines after resume


def test_grad_accumulation_4x2_equals_1x8():
    from tunesmith.train.distributed import DistInfo
    from tunesmith.train.loop import forward_backward
    from tunesmith.train.loss import PackedLoss

    samples = random_samples(8, seed=6)
    model = fresh(TrainConfig(method="full"))
    grads = []
    for micro in (2, None):  # 4 micro-batches of 2 samples, then 1 micro-batch of 8
        cfg = TrainConfig(method="full", batch_size=8, micro_batch_size=micro)
        loss_sum, _, n_rows = forward_backward(PackedLoss(model), model, samples, cfg, DistInfo())
        assert n_rows == (4 if micro else 1)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        model.zero_grad(set_to_none=True)
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[1].items():
        assert g.abs().sum() > 0, name
        assert torch.allclose(grads[0][name], g, atol=1e-7, rtol=1e-5), name
    # And whole training runs agree step by step.
    base = dict(method="full", batch_size=8, max_steps=3, lr=1e-3, save_every=100)
    ra = train(fresh(TrainConfig(**base)), samples, TrainConfig(**base, micro_batch_size=2), None)
    rb = train(fresh(TrainConfig(**base)), samples, TrainConfig(**base), None)
    assert ra.losses == pytest.approx(rb.losses, abs=1e-5)


def test_row_budget_split_equals_single_row(tmp_path):
    """Splitting a micro-batch into several packed rows changes nothing either."""
    samples = random_samples(8, seed=7)
    base = dict(method="full", batch_size=8, max_steps=2, lr=1e-2, warmup_steps=0, save_every=100)
    ra = train(fresh(TrainConfig(**base)), samples, TrainConfig(**base, max_tokens_per_row=40), None)
    rb = train(fresh(TrainConfig(**base)), samples, TrainConfig(**base), None)
    assert ra.losses == pytest.approx(rb.losses, abs=1e-6)


def test_data_order_is_a_function_of_seed_and_step():
    cfg = TrainConfig(batch_size=4, seed=3)
    epoch0 = [i for s in range(5) for i in step_indices(s, 20, cfg)]
    assert sorted(epoch0) == list(range(20))  # every sample once per epoch
    assert step_indices(5, 20, cfg) != step_indices(0, 20, cfg)  # a new permutation next epoch
    assert step_indices(2, 20, cfg) == step_indices(2, 20, TrainConfig(batch_size=4, seed=3))


def test_incomplete_checkpoint_is_ignored_and_old_ones_pruned(tmp_path):
    samples = random_samples(16, seed=8)
    cfg = TrainConfig(method="lora", lora={"r": 2}, batch_size=2, max_steps=5, save_every=1, keep_checkpoints=2)
    train(fresh(cfg), samples, cfg, tmp_path)
    ckpts = tmp_path / "checkpoints"
    assert [p.name for p in complete_checkpoints(ckpts)] == ["step-000004", "step-000005"]
    # A crash mid-write leaves a .tmp directory and a directory without the marker: both ignored.
    (ckpts / "step-000006.tmp").mkdir()
    (ckpts / "step-000007").mkdir()
    assert latest_checkpoint(ckpts).name == "step-000005"
    files = sorted(p.name for p in (ckpts / "step-000005").iterdir())
    assert files == ["COMPLETE", "state.pt", "trainer.json", "weights.safetensors"]


INTERRUPT_SCRIPT = """
import sys, json, torch
from pathlib import Path
sys.path.insert(0, {tests!r})
from conftest import random_samples, tiny_llama
from tunesmith.train.config import TrainConfig
from tunesmith.train.loop import train
from tunesmith.train.setup import prepare_model
cfg = TrainConfig(method="lora", lora={{"r": 4, "dropout": 0.1}}, batch_size=4, max_steps={steps}, lr=1e-2,
                  save_every=1000, micro_batch_size=2)
base = tiny_llama(0); torch.manual_seed(0); model = prepare_model(base, cfg)
try:
    r = train(model, random_samples(40, seed=5), cfg, Path({run!r}), resume={resume})
    print("LOSSES " + json.dumps(r.losses), flush=True)
except KeyboardInterrupt:
    print("INTERRUPTED", flush=True)
    sys.exit(130)
"""


def test_ctrl_c_saves_a_consistent_checkpoint_and_resume_is_exact(tmp_path):
    """A real SIGINT mid-run: the step in flight finishes, is checkpointed, and resume is bit-exact."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    tests = str(Path(__file__).parent)
    steps = 150
    straight = train(fresh(TrainConfig(method="lora", lora={"r": 4, "dropout": 0.1})), random_samples(40, seed=5),
                     TrainConfig(method="lora", lora={"r": 4, "dropout": 0.1}, batch_size=4, max_steps=steps,
                                 lr=1e-2, save_every=1000, micro_batch_size=2), None).losses
    run = str(tmp_path / "run")
    script = INTERRUPT_SCRIPT.format(tests=tests, steps=steps, run=run, resume=False)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    metrics = Path(run) / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "INTERRUPTED" in out
    stopped_at = int(latest_checkpoint(Path(run) / "checkpoints").name.split("-")[1])
    assert 3 <= stopped_at < steps
    script = INTERRUPT_SCRIPT.format(tests=tests, steps=steps, run=run, resume=True)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    resumed = json.loads(res.stdout.split("LOSSES ")[1])
    assert len(resumed) == steps - stopped_at
    assert resumed == straight[stopped_at:]  # bit-identical after a real interruption


def test_bf16_training_tracks_fp32():
    samples = random_samples(16, seed=11)
    cfg = TrainConfig(method="lora", lora={"r": 4}, batch_size=4, max_steps=4, lr=1e-2, warmup_steps=0)
    fp32 = train(fresh(cfg), samples, cfg, None).losses
    model = fresh(cfg).to(torch.bfloat16)
    # LoRA weights stay fp32 for the optimizer; the frozen base runs in bf16.
    for n, p in model.named_parameters():
        if p.requires_grad:
            p.data = p.data.float()
    bf16 = train(model, samples, cfg, None).losses
    assert all(torch.isfinite(torch.tensor(bf16)))
    assert bf16 == pytest.approx(fp32, rel=0.05)
    assert bf16 != fp32  # it really ran in another precision
