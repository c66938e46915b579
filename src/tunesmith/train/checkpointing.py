"""Activation checkpointing of the decoder layers (train.gradient_checkpointing).

With it a training forward keeps only each decoder layer's input for backward; backward runs the
layer's forward again, one layer at a time, to get what it needs. Activation memory falls from all
layers' intermediates to one layer's, for one more forward of the decoder per step (quickstart LoRA on
SmolLM2-135M: peak RSS 1,932 -> 1,545 MB, 1.48x the step time; BENCHMARKS.md).

The recompute happens in backward, after the training forward's kernel switches (packed attention,
fused LoRA; see loss.PackedLoss) were switched off again. `recompute_context` re-enters them around
every recompute, so the replayed layer computes and saves exactly what the first pass did (torch's
non-reentrant checkpoint checks that the tensors it saves match).

transformers' decoder layers (`GradientCheckpointingLayer`) checkpoint themselves when their
`gradient_checkpointing` flag is set; this sets it, with our checkpoint function, only inside the block.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import partial

from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.modeling_layers import GradientCheckpointingLayer

from ..errors import UserError

_FLAG, _FUNC = "gradient_checkpointing", "_gradient_checkpointing_func"


def checkpointable_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder layers of `model` that can checkpoint themselves."""
    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


@contextmanager
def layer_checkpointing(model: nn.Module, enabled: bool,
                        recompute_context: Callable[[], AbstractContextManager] = nullcontext):
    """Inside the block, every decoder layer of `model` keeps only its input for backward and is run again
    (inside `recompute_context()`) when backward reaches it. Yields the number of layers checkpointed."""
    layers = checkpointable_layers(model) if enabled else []
    if enabled and not layers:
        raise UserError(f"train.gradient_checkpointing: {type(model).__name__} has no decoder layers that "
                        "transformers can checkpoint (GradientCheckpointingLayer): set "
                        "train.gradient_checkpointing: false")
    func = partial(checkpoint, use_reentrant=False,
                   context_fn=lambda: (nullcontext(), recompute_context()))
    for layer in layers:
        setattr(layer, _FLAG, True)
        setattr(layer, _FUNC, func)
    try:
        yield len(layers)
    finally:
        for layer in layers:
            for name in (_FLAG, _FUNC):
                layer.__dict__.pop(name, None)
