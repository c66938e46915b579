"""Optimizer and learning-rate schedule: AdamW with linear warmup then cosine decay."""

from __future__ import annotations

import math

import torch


def build_optimizer(params, lr: float, weight_decay: float, betas: tuple[float, float]) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters.

    The `foreach` implementation is used explicitly (not `fused`): it is fast on CPU and its
    results do not depend on how the step is scheduled, which exact resume needs.
    """
    params = [p for p in params if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, foreach=True)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak lr at `step` (0-based): linear warmup, then cosine to `min_ratio`."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer, warmup_steps: int, total_steps: int, min_ratio: float):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, warmup_steps, total_steps, min_ratio))
