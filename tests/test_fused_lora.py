"""The fused LoRA training forward equals PEFT's own forward (loss and every adapter gradient)."""

import pytest
import torch

from conftest import random_samples, tiny_llama
from tunesmith.data.packing import make_row
from tunesmith.train.config import TrainConfig
from tunesmith.train.fused_lora import fused_lora_enabled
from tunesmith.train.loss import PackedLoss
from tunesmith.train.setup import prepare_model


def _model(alpha: float, dropout: float = 0.0):
    torch.manual_seed(0)
    model = prepare_model(tiny_llama(), TrainConfig(method="lora", lora={"r": 4, "alpha": alpha, "dropout": dropout}))
    for n, p in model.named_parameters():
        if "lora_B" in n:  # non-zero B so that every adapter gradient is non-trivial
            torch.nn.init.normal_(p, std=0.1)
    return model


@pytest.mark.parametrize("alpha", [8.0, 6.0])  # scaling 2 (power of two) and 1.5
def test_fused_lora_matches_peft_forward(alpha):
    row = make_row(random_samples(4, seed=7))

    def run(fused: bool):
        model = _model(alpha)
        loss = PackedLoss(model, chunk_size=7, fused_lora=fused)(row.input_ids, row.position_ids, row.targets)
        loss.backward()
        return loss.item(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    ours, g_ours = run(True)
    ref, g_ref = run(False)
    assert abs(ours - ref) <= 1e-6 * abs(ref)
    assert len(g_ref) == 2 * 7 * 2  # A and B of 7 linear layers in each of 2 layers
    for name, g in g_ref.items():
        assert torch.allclose(g_ours[name], g, atol=1e-5, rtol=1e-4), name


def test_fused_lora_patches_only_plain_adapters_and_restores():
    model = _model(8.0)
    with fused_lora_enabled(model) as n:
        assert n == 14
    assert not any("forward" in m.__dict__ for m in model.modules())
    with fused_lora_enabled(_model(8.0, dropout=0.1)) as n:  # dropout > 0 keeps PEFT's forward
        assert n == 0
    with fused_lora_enabled(model, enabled=False) as n:
        assert n == 0
