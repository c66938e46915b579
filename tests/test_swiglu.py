"""The memory-light SwiGLU MLP: same loss and gradients as the model's own MLP, less saved memory."""

import pytest
import torch

from conftest import random_samples, tiny_llama
from tunesmith.data.packing import make_row
from tunesmith.train.config import TrainConfig
from tunesmith.testing.reference import kept_activations
from tunesmith.train.loss import PackedLoss
from tunesmith.train.setup import prepare_model
from tunesmith.train.swiglu import light_swiglu_enabled


def _model(method: str, alpha: float = 8.0):
    torch.manual_seed(0)
    cfg = TrainConfig(method=method, lora={"r": 4, "alpha": alpha, "dropout": 0.0})
    model = prepare_model(tiny_llama(), cfg)
    for n, p in model.named_parameters():
        if "lora_B" in n:  # non-zero B so that every adapter gradient is non-trivial
            torch.nn.init.normal_(p, std=0.1)
    return model


@pytest.mark.parametrize("method,alpha", [("lora", 8.0), ("lora", 6.0), ("full", 8.0)])
def test_light_swiglu_matches_the_models_own_mlp(method, alpha):
    row = make_row(random_samples(4, seed=3))

    def run(light: bool):
        model = _model(method, alpha)
        loss = PackedLoss(model, chunk_size=7, swiglu_recompute=light)(row.input_ids, row.position_ids, row.targets)
        loss.backward()
        return loss.item(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    ours, g_ours = run(True)
    ref, g_ref = run(False)
    assert abs(ours - ref) <= 1e-6 * abs(ref)
    assert len(g_ref) == (28 if method == "lora" else len(g_ours))
    for name, g in g_ref.items():
        assert g is not None and torch.allclose(g_ours[name], g, atol=1e-5, rtol=1e-4), name
    # the MLP's own weights get gradients in full fine-tuning (down_proj's through the new path)
    if method == "full":
        assert g_ours["model.layers.0.mlp.down_proj.weight"].abs().sum() > 0


def _saved_bytes(model, row, light: bool) -> int:
    with kept_activations(model) as kept:
        PackedLoss(model, chunk_size=7, swiglu_recompute=light)(row.input_ids, row.position_ids, row.targets)
    return sum(kept.values())


def test_light_swiglu_keeps_two_fewer_intermediate_tensors_per_layer():
    model = _model("lora")
    row = make_row(random_samples(3, seed=5))
    tokens, inter, layers = row.n_tokens, model.config.intermediate_size, model.config.num_hidden_layers
    saved = _saved_bytes(model, row, True)
    plain = _saved_bytes(model, row, False)
    # silu(gate) and silu(gate) * up are no longer kept: [tokens, intermediate] fp32 each, per layer
    assert plain - saved == 2 * tokens * inter * 4 * layers


def test_light_swiglu_patches_only_silu_mlps_and_restores():
    model = _model("lora")
    with light_swiglu_enabled(model) as n:
        assert n == 2
    assert not any("forward" in m.__dict__ for m in model.modules())
    model.get_base_model().model.layers[0].mlp.act_fn = torch.nn.GELU()
    with light_swiglu_enabled(model) as n:
        assert n == 1
    with light_swiglu_enabled(model, enabled=False) as n:
        assert n == 0


def _quant_model(base_quant: str | None):
    torch.manual_seed(0)
    extra = {} if base_quant is None else {"base_quant": base_quant, "base_quant_group_size": 32}
    model = prepare_model(tiny_llama(), TrainConfig(method="lora", lora={"r": 4, "alpha": 8.0, "dropout": 0.0},
                                                    **extra))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    return model


@pytest.mark.parametrize("base_quant", ["int8", "int4"])
def test_quantized_base_runs_the_fused_lora_and_light_swiglu_with_the_same_gradients(base_quant):
    """On a train.base_quant base the fused LoRA forward and the SwiGLU recompute switch on (14 LoRA layers and
    2 MLPs of the tiny model) and give PEFT's own loss and adapter gradients."""
    from tunesmith.train.fused_lora import fused_lora_enabled

    row = make_row(random_samples(4, seed=3))
    model = _quant_model(base_quant)
    with fused_lora_enabled(model) as fused, light_swiglu_enabled(model) as light:
        assert (fused, light) == (14, 2)

    def run(kernels: bool):
        model.zero_grad(set_to_none=True)
        loss = PackedLoss(model, chunk_size=7, fused_lora=kernels, swiglu_recompute=kernels)(
            row.input_ids, row.position_ids, row.targets)
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    ours, g_ours = run(True)
    ref, g_ref = run(False)
    assert abs(ours - ref) <= 1e-6 * abs(ref)
    assert len(g_ref) == 28
    for name, g in g_ref.items():
        assert torch.allclose(g_ours[name], g, atol=1e-5, rtol=1e-4), name


def test_int4_base_keeps_the_same_activations_as_fp32_lora_plus_its_quantized_buffers():
    """With the fused kernels an int4 base keeps for backward exactly what fp32 LoRA keeps, plus references to
    its own int4 buffers (no dequantized weight, no extra SwiGLU intermediates)."""
    from tunesmith.train.quantbase import QuantLinear

    row = make_row(random_samples(3, seed=5))

    def kept(model):
        with kept_activations(model) as seen:
            PackedLoss(model, chunk_size=7, fused_lora=True, swiglu_recompute=True)(
                row.input_ids, row.position_ids, row.targets)
        return sum(seen.values())

    fp32, int4 = _quant_model(None), _quant_model("int4")
    # Not saved: down_proj's buffers (the SwiGLU function holds its module) and layer 0's q/k/v (their input,
    # the frozen embeddings' output, needs no gradient, so autograd records nothing for them).
    unsaved = ("mlp.down_proj", "layers.0.self_attn.q_proj", "layers.0.self_attn.k_proj", "layers.0.self_attn.v_proj")
    buffers = sum(b.untyped_storage().nbytes() for n, m in int4.named_modules() if isinstance(m, QuantLinear)
                  and not any(u in n for u in unsaved) for b in (m.qdata, m.scale, m.low))
    # int4 + fp16 scale and minimum per 32 inputs: q, o 2,560 bytes; k, v 1,280; gate, up 5,120
    assert buffers == (2560 + 2 * 5120) + (2 * 2560 + 2 * 1280 + 2 * 5120)  # layer 0 (o, gate, up) + layer 1
    assert kept(int4) == kept(fp32) + buffers
