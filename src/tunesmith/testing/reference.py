"""Plain reference implementations that the optimised training code is checked against.

    full_logits_loss   the full-logit summed cross-entropy (materialises [L, V]): what `PackedLoss` computes
    kept_activations   the tensors autograd keeps for backward, to measure activation memory
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.data.chat import IGNORE
from tunesmith.kernels.unwrap import unwrap

__all__ = ["full_logits_loss", "kept_activations"]


def full_logits_loss(model: nn.Module, input_ids, position_ids, targets) -> torch.Tensor:
    """Reference: the plain full-logit summed loss (materialises [L, V]); used by tests and benchmarks."""
    logits = unwrap(model)(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits
    return F.cross_entropy(logits[0].float(), targets[0], ignore_index=IGNORE, reduction="sum")


@contextmanager
def kept_activations(model: nn.Module):
    """Within the block, records the tensors autograd keeps for backward: {storage ptr: bytes}.

    Distinct storages only, parameters excluded: the activation memory a forward holds until its
    backward runs (what row length and recomputation change).
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield seen
