"""LISA (Pan et al. 2024, "Layerwise Importance Sampled AdamW"): every `period` steps, `layers` decoder
layers drawn at random train fully and every other decoder layer is frozen; everything outside the decoder
layers (embeddings, final norm, output layer) always trains, as in the paper and LMFlow's implementation.

The draw is a pure function of (seed, period index), so a resumed run trains the same layers. When a layer
leaves the active set its AdamW state is dropped (a layer that comes back later starts with fresh moments),
as LMFlow does by giving each period a fresh optimizer for its layers; only the active layers and the
always-trained parameters hold optimizer state and gradients, which is where the memory goes down.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from ..kernels.unwrap import unwrap
from .config import TrainConfig


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    layers = getattr(unwrap(model).get_decoder(), "layers", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        raise UserError("train.method lisa needs a decoder with a list of layers (model.layers); this model has none")
    return layers


def active_layers(seed: int, period: int, n_layers: int, k: int) -> list[int]:
    """The decoder layers trained in period `period` (0-based): k of n_layers, drawn by (seed, period)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + 7_919 * period + 17)
    return sorted(torch.randperm(n_layers, generator=g)[:min(k, n_layers)].tolist())


class Lisa:
    """Switches the trained decoder layers at the first step of every period (`on_step`)."""

    def __init__(self, model: nn.Module, cfg: TrainConfig):
        self.layers = decoder_layers(model)
        self.seed, self.k, self.period = cfg.seed, cfg.lisa.layers, cfg.lisa.period
        self.current: int | None = None  # the period whose layers are set (None: not yet, e.g. after resume)
        self.active: list[int] = []

    def period_of(self, step: int) -> int:
        return (step - 1) // self.period  # 1-based step

    def on_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        period = self.period_of(step)
        if period == self.current:
            return
        self.active = active_layers(self.seed, period, len(self.layers), self.k)
        for i, layer in enumerate(self.layers):
            on = i in self.active
            for p in layer.parameters():
                p.requires_grad_(on)
                if not on:
                    optimizer.state.pop(p, None)  # reset: a layer that leaves forgets its moments
                    p.grad = None
        self.current = period


def trainable_count(model: nn.Module, cfg: TrainConfig) -> int:
    """Parameters trained in one LISA period: everything outside the decoder layers plus k layers (the
    largest k, so the count does not depend on the draw)."""
    layers = decoder_layers(model)
    inside = {id(p) for p in layers.parameters()}
    outside = sum(p.numel() for p in model.parameters() if id(p) not in inside)
    sizes = sorted((sum(p.numel() for p in layer.parameters()) for layer in layers), reverse=True)
    return outside + sum(sizes[:cfg.lisa.layers])
