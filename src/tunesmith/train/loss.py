"""Label-only, chunked cross-entropy: the (tokens x vocab) logit matrix is never materialised.

Only positions that have a target go through the output layer, and they go through it in chunks
of `chunk_size` rows. The gradient of each chunk is computed right away in the forward pass (the
softmax minus the one-hot, times the weight), so backward keeps no logits alive: peak extra memory
is one [chunk_size, vocab] block instead of [tokens, vocab].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.chat import IGNORE
from .attention import packed_attention_enabled
from .fused_lora import fused_lora_enabled
from .swiglu import light_swiglu_enabled


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(hidden_i @ weight.T + bias, target_i), gradients computed chunk by chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size):
        # hidden [M, H], weight [V, H], bias [V] or None, targets [M]
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start:start + chunk_size]  # [C, H]
            t = targets[start:start + chunk_size]  # [C]
            logits = (h @ weight.T).float()  # [C, V], fp32 for a stable log-sum-exp
            if bias is not None:
                logits += bias.float()
            lse = torch.logsumexp(logits, dim=-1)  # [C]
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            if need_h or need_w or need_b:
                # d(loss)/d(logits) = softmax - onehot, reusing the logits buffer in place.
                grad_logits = logits.sub_(lse[:, None]).exp_()
                grad_logits[torch.arange(t.shape[0], device=t.device), t] -= 1.0
                g = grad_logits.to(hidden.dtype)
                if need_h:
                    grad_h[start:start + chunk_size] = g @ weight
                if need_w:
                    grad_w += (g.T @ h).float()
                if need_b:
                    grad_b += grad_logits.sum(0)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        w_dtype, b_dtype = ctx.dtypes
        scale = lambda g, dt: None if g is None else (g * grad_out).to(dt)  # noqa: E731
        return (None if grad_h is None else grad_h * grad_out.to(grad_h.dtype),
                scale(grad_w, w_dtype), scale(grad_b, b_dtype), None, None)


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          targets: torch.Tensor, chunk_size: int = 512) -> torch.Tensor:
    """Summed cross-entropy of `hidden @ weight.T (+ bias)` against `targets`, computed in chunks.

    hidden [M, H] (label positions only), weight [V, H], targets [M]. Returns a 0-d fp32 tensor.
    """
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, bias, targets, chunk_size)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain transformers causal LM under DDP / PEFT wrappers."""
    if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


class PackedLoss(nn.Module):
    """forward(input_ids, position_ids, targets) -> summed label-only loss over the row.

    Wraps the causal LM so that DDP sees one module whose forward produces the loss: the decoder
    runs in a padding-free packed row, the output layer only at target positions, in chunks, and
    (fused_lora) plain LoRA layers fold their adapter product into the base GEMM, and
    (swiglu_recompute) SwiGLU MLPs keep only gate and up for backward.
    """

    def __init__(self, model: nn.Module, chunk_size: int = 512, fused_lora: bool = True,
                 swiglu_recompute: bool = True):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size
        self.fused_lora = fused_lora
        self.swiglu_recompute = swiglu_recompute

    def forward(self, input_ids, position_ids, targets):
        lm = unwrap(self.model)
        # attention_mask=None + restarting position_ids + no cache -> per-sample causal attention.
        with packed_attention_enabled(lm), fused_lora_enabled(self.model, self.fused_lora), \
                light_swiglu_enabled(self.model, self.swiglu_recompute):
            hidden = lm.get_decoder()(input_ids=input_ids, position_ids=position_ids, use_cache=False,
                                      attention_mask=None).last_hidden_state  # [1, L, H]
        keep = targets != IGNORE  # [1, L]
        head = lm.get_output_embeddings()
        return chunked_cross_entropy(hidden[keep], head.weight, head.bias, targets[keep], self.chunk_size)


def full_logits_loss(model: nn.Module, input_ids, position_ids, targets) -> torch.Tensor:
    """Reference: the plain full-logit summed loss (materialises [L, V]); used by tests and benchmarks."""
    logits = unwrap(model)(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits
    return F.cross_entropy(logits[0].float(), targets[0], ignore_index=IGNORE, reduction="sum")
