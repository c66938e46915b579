"""A leaner LoRA linear forward for training: base matmul and adapter product in one `addmm`.

PEFT computes `base(x) + lora_B(lora_A(dropout(x))) * scaling`: two extra passes over the
[tokens, out_features] output (the scaling multiply and the add), and two more in backward. Here
the scaling is folded into the small [out, r] B matrix and the adapter product is accumulated into
the base output by the GEMM itself (`addmm`, beta=1):

    out = addmm(x @ W.T + bias, x @ A.T, (scaling * B).T)        # x [M, in], A [r, in], B [out, r]

Mathematically identical; bit-identical when `scaling` is a power of two (the default alpha=32,
r=16 gives 2). Used only through `fused_lora_enabled(model)` around the training forward, and only
for adapters in the plain case: one active adapter, not merged, not disabled, no DoRA or other
variant, no dropout (p=0) -- anything else keeps PEFT's own forward. A quantized base (train.base_quant's
QuantLinear) runs its own dequantizing forward for the base term, which keeps nothing of the weight's size
for backward, and the adapter product is accumulated into that output the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .patching import SKIP, patched_forwards


def _eligible(module: nn.Module) -> str | None:
    """The active adapter name when `module` is a PEFT LoRA Linear in the plain case, else None."""
    try:
        from peft.tuners.lora import Linear as LoraLinear
    except ImportError:  # pragma: no cover - peft is a dependency
        return None
    if not isinstance(module, LoraLinear) or module.disable_adapters or module.merged:
        return None
    active = module.active_adapters
    if len(active) != 1 or active[0] not in module.lora_A or active[0] in getattr(module, "lora_variant", {}):
        return None
    name = active[0]
    drop = module.lora_dropout[name]
    if not isinstance(drop, nn.Identity) and not (isinstance(drop, nn.Dropout) and drop.p == 0.0):
        return None
    if not isinstance(module.base_layer, nn.Linear) or module.lora_A[name].bias is not None \
            or module.lora_B[name].bias is not None or getattr(module, "fan_in_fan_out", False):
        return None
    return name


def base_dtype(base: nn.Linear) -> torch.dtype:
    """The dtype of a base layer's weight; a quantized base dequantizes to fp32 (asked without dequantizing)."""
    return torch.float32 if getattr(base, "quantized", False) else base.weight.dtype


def base_output(base: nn.Linear, x2: torch.Tensor) -> torch.Tensor:
    """x2 @ W.T + bias for a 2-D input; a quantized base dequantizes inside its own autograd function."""
    return base(x2) if getattr(base, "quantized", False) else F.linear(x2, base.weight, base.bias)


def _fused_forward(module: nn.Module, name: str, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    base = module.base_layer
    a = module.lora_A[name].weight  # [r, in]
    b = module.lora_B[name].weight  # [out, r]
    scaling = module.scaling[name]
    if x.dtype != a.dtype or base_dtype(base) != a.dtype:
        return type(module).forward(module, x, *args, **kwargs)
    x2 = x.reshape(-1, x.shape[-1])  # [M, in]
    b_scaled = b if scaling == 1 else b * scaling  # [out, r]
    out = torch.addmm(base_output(base, x2), x2 @ a.t(), b_scaled.t())  # [M, out]
    return out.view(*x.shape[:-1], out.shape[-1])


def fused_lora_enabled(model: nn.Module, enabled: bool = True):
    """Inside the block, eligible LoRA layers of `model` use the fused forward (yields how many)."""
    return patched_forwards(model, enabled, lambda m: SKIP if (name := _eligible(m)) is None else name,
                            _fused_forward)
