"""NEFTune (Jain et al. 2023): uniform noise on the input embeddings while training.

Each sample's noise is Uniform(-1, 1) * alpha / sqrt(L * d), L the sample's own token count (not the
packed row's) and d the embedding width. It is drawn from a generator seeded by (train.seed, step, the
sample's position in the step's batch): the same whatever the split into micro-batches, rows or ranks,
and the same after a resume. Evaluation and generation never see it.
"""

from __future__ import annotations

import math

import torch


def sample_noise(n_tokens: int, dim: int, alpha: float, seed: int, step: int, position: int) -> torch.Tensor:
    """[n_tokens, dim] noise for one sample."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + step) * 65_537 + position)
    return (torch.rand(n_tokens, dim, generator=g) * 2 - 1) * (alpha / math.sqrt(n_tokens * dim))


def row_noise(samples, positions: list[int], dim: int, alpha: float, seed: int, step: int) -> torch.Tensor:
    """[1, L, dim] noise for a packed row holding `samples` (in order) at batch `positions`."""
    parts = [sample_noise(len(s.input_ids), dim, alpha, seed, step, pos) for s, pos in zip(samples, positions)]
    return torch.cat(parts).unsqueeze(0)
