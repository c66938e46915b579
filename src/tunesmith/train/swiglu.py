"""A memory-light SwiGLU MLP for training: backward keeps `gate` and `up`, nothing else.

A Llama-style MLP computes `down_proj(silu(gate_proj(x)) * up_proj(x))`. Under autograd every
intermediate of that line is saved for backward: `gate` (for silu), `silu(gate)` and `up` (for the
product) and the product `h` itself (the input of down_proj, needed for its LoRA A or full-weight
gradient): four [tokens, intermediate] tensors per layer, about 58% of all saved activations of
SmolLM2 (intermediate 1536 vs hidden 576). Here the product and the down projection are one
autograd function that saves only `gate` and `up` (and the [tokens, r] LoRA product) and
recomputes `silu(gate) * up` in backward -- two elementwise passes instead of two stored tensors,
so the same row fits in ~30% less memory at no GEMM cost.

down_proj may be a plain LoRA layer (see fused_lora: one active adapter, no dropout, no variant;
its product is accumulated into the base GEMM) or an `nn.Linear` (full fine-tuning or frozen). Its base
may be train.base_quant's QuantLinear: then the weight is dequantized in forward and again in backward
(it is frozen), and only the quantized buffers are referenced in between.
Anything else -- another activation, another MLP layout -- keeps the model's own forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fused_lora import _eligible as _plain_lora_adapter
from .fused_lora import base_dtype
from .patching import SKIP, patched_forwards


class _SwiGLUDown(torch.autograd.Function):
    """out = (silu(gate) * up) @ W.T + bias + ((silu(gate) * up) @ A.T) @ B_s.T, saving gate and up."""

    @staticmethod
    def forward(ctx, gate, up, weight, bias, lora_a, lora_b_scaled, quant_base=None):
        # gate, up [M, I]; weight [O, I] (None when quant_base, a frozen QuantLinear, holds it); bias [O] or None;
        # lora_a [r, I] and lora_b_scaled [O, r] or None
        h = F.silu(gate).mul_(up)  # [M, I], freed when forward returns
        out = F.linear(h, weight if quant_base is None else quant_base.dequantized(), bias)  # [M, O]
        h_a = None
        if lora_a is not None:
            h_a = h @ lora_a.t()  # [M, r]: the only extra thing kept for the adapter gradients
            out = torch.addmm(out, h_a, lora_b_scaled.t())
        ctx.save_for_backward(gate, up, weight, lora_a, lora_b_scaled, h_a)
        ctx.has_bias = bias is not None
        ctx.quant_base = quant_base
        return out

    @staticmethod
    def backward(ctx, grad_out):
        gate, up, weight, lora_a, lora_b_scaled, h_a = ctx.saved_tensors
        need_gate, need_up, need_w, need_bias, need_a, need_b, _ = ctx.needs_input_grad
        grad_w = grad_bias = grad_a = grad_b = None
        g = grad_out  # [M, O]
        if ctx.quant_base is not None:
            weight = ctx.quant_base.dequantized()  # [O, I], freed with grad_h's matmul done
        grad_h = g @ weight  # [M, I]
        del weight
        if lora_a is not None:
            g_b = g @ lora_b_scaled  # [M, r]
            grad_h.addmm_(g_b, lora_a)  # the adapter's share of d(loss)/dh
            if need_b:
                grad_b = g.t() @ h_a  # [O, r]
        silu = F.silu(gate)
        if need_w or need_a:
            h = silu * up  # recomputed: the tensor forward did not keep
            if need_w:
                grad_w = g.t() @ h  # [O, I]
            if need_a:
                grad_a = g_b.t() @ h  # [r, I]
            del h
        if need_bias and ctx.has_bias:
            grad_bias = g.sum(0)
        grad_up = grad_h * silu if need_up else None
        del silu
        # d(loss)/d(gate) = grad_h * up * silu'(gate), silu' in one fused pass
        grad_gate = torch.ops.aten.silu_backward(grad_h.mul_(up), gate) if need_gate else None
        return grad_gate, grad_up, grad_w, grad_bias, grad_a, grad_b, None


def _swiglu_parts(mlp: nn.Module):
    """The down projection's LoRA adapter name (None for an nn.Linear) when `mlp` is a SwiGLU MLP
    we can run, else SKIP."""
    if not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")):
        return SKIP
    act = mlp.act_fn
    if not (isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation"):
        return SKIP
    down = mlp.down_proj
    if type(down) is nn.Linear or getattr(down, "quantized", False):
        return None
    name = _plain_lora_adapter(down)
    return name if name is not None else SKIP


def _light_forward(mlp: nn.Module, adapter: str | None, x: torch.Tensor) -> torch.Tensor:
    gate, up = mlp.gate_proj(x), mlp.up_proj(x)  # [.., I] each
    down = mlp.down_proj
    base = down if adapter is None else down.base_layer
    dtypes = {gate.dtype, up.dtype, base_dtype(base)}
    if adapter is not None:
        dtypes |= {down.lora_A[adapter].weight.dtype, down.lora_B[adapter].weight.dtype}
    if len(dtypes) != 1:  # e.g. a bf16 base with fp32 adapters: PEFT's own casting path
        return mlp.down_proj(mlp.act_fn(gate) * up)
    shape = gate.shape
    gate2, up2 = gate.reshape(-1, shape[-1]), up.reshape(-1, shape[-1])  # [M, I]
    quant = base if getattr(base, "quantized", False) else None
    weight = None if quant is not None else base.weight
    if adapter is None:
        out = _SwiGLUDown.apply(gate2, up2, weight, base.bias, None, None, quant)
    else:
        a = down.lora_A[adapter].weight  # [r, I]
        b = down.lora_B[adapter].weight  # [O, r]
        scaling = down.scaling[adapter]
        b_scaled = b if scaling == 1 else b * scaling
        out = _SwiGLUDown.apply(gate2, up2, weight, base.bias, a, b_scaled, quant)
    return out.view(*shape[:-1], out.shape[-1])


def light_swiglu_enabled(model: nn.Module, enabled: bool = True):
    """Inside the block, the SwiGLU MLPs of `model` keep only gate and up for backward.

    Yields the number of MLPs switched over; their own forward is restored afterwards.
    """
    return patched_forwards(model, enabled, _swiglu_parts,
                            lambda mlp, adapter, x, *a, **k: _light_forward(mlp, adapter, x))
