"""Optimizer and learning-rate schedule: AdamW with linear warmup then cosine decay."""

from __future__ import annotations

import math

import torch


def build_optimizer(params, lr: float, weight_decay: float, betas: tuple[float, float]) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters.

    The `fused` implementation (one kernel per parameter): on a 2-core CPU a full fine-tune of SmolLM2-135M
    steps 22% faster than with `foreach` (3.0 vs 3.8 s/step) and peaks lower, because `foreach` builds lists
    of parameter-sized temporaries (the square root of every second moment at once). Its arithmetic is per
    element, with no reduction, so a step's result does not depend on how the work is scheduled, which exact
    resume needs (tests: bit-identical resume, 4x2 == 1x8 accumulation).
    """
    params = [p for p in params if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, fused=True)


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
