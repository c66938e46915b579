"""The plain transformers model under the wrappers training puts around it (DDP, PEFT)."""

from __future__ import annotations

from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The plain transformers causal LM under DDP / PEFT wrappers."""
    if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def backbone_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The decoder stack (returns final normed hidden states) and the output layer, through wrappers."""
    lm = unwrap(model)
    return getattr(lm, lm.base_model_prefix), lm.get_output_embeddings()
