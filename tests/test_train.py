"""The training loop: exact resume, gradient-accumulation equivalence, atomic checkpoints."""

import json

import pytest
import torch

from conftest import random_samples, tiny_llama
from tunesmith.recipe import TrainConfig
from tunesmith.train.checkpoint import complete_checkpoints, latest_checkpoint
from tunesmith.train.loop import step_indices, train
from tunesmith.train.setup import prepare_model, trainable_state


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
