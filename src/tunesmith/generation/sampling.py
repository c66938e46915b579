"""Choosing each row's next token: greedy, or temperature / top_k / top_p sampling with one seeded
torch.Generator per completion, and the log-probabilities callers ask for.

A sampled row draws exactly one uniform number per token from its own generator and picks the token
by inverse CDF over the filtered distribution, so a seeded completion samples the same tokens
whatever else shares the batch. Filtering follows transformers' order: temperature, then top_k,
then top_p on what top_k kept. Log-probabilities are log_softmax of the raw logits (before
temperature and filtering).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import torch

from .requests import SamplingParams


@dataclass
class RowSampler:
    """How one completion picks tokens; `generator` is None for greedy rows."""

    temperature: float
    top_p: float
    top_k: int
    generator: torch.Generator | None
    top_logprobs: int = -1  # -1: no logprobs; 0: the chosen token's only; k: and k alternatives

    @classmethod
    def for_completion(cls, params: SamplingParams, index: int) -> "RowSampler":
        """Completion `index` of a request: seeded with `seed + index` when the request has a seed."""
        generator = None
        if params.temperature > 0:
            generator = torch.Generator()
            generator.manual_seed(params.seed + index if params.seed is not None else secrets.randbits(63))
        top = params.top_logprobs if params.logprobs else -1
        return cls(params.temperature, params.top_p, params.top_k, generator, top)


@dataclass
class Choice:
    """The token a row chose, and (when asked) its log-probability and the top alternatives."""

    token: int
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None


def choose(logits: torch.Tensor, rows: list[RowSampler]) -> list[Choice]:
    """Next token of each row of `logits` [B, V] (float32)."""
    tokens = logits.argmax(dim=-1)  # [B]; the answer for greedy rows
    sampled = [r for r, s in enumerate(rows) if s.generator is not None]
    if sampled:
        idx = torch.tensor(sampled, device=logits.device)
        tokens = tokens.index_put((idx,), _sample(logits.index_select(0, idx), [rows[r] for r in sampled]))
    choices = [Choice(int(t)) for t in tokens.tolist()]
    wanted = [r for r, s in enumerate(rows) if s.top_logprobs >= 0]
    if wanted:
        idx = torch.tensor(wanted, device=logits.device)
        logp = torch.log_softmax(logits.index_select(0, idx), dim=-1)  # [b, V]
        chosen = logp.gather(1, tokens.index_select(0, idx)[:, None])[:, 0].tolist()
        k = max(rows[r].top_logprobs for r in wanted)
        top_v, top_i = logp.topk(k, dim=-1) if k > 0 else (logp[:, :0], logp[:, :0].long())
        for j, r in enumerate(wanted):
            kr = rows[r].top_logprobs
            choices[r].logprob = chosen[j]
            choices[r].top = list(zip(top_i[j, :kr].tolist(), top_v[j, :kr].tolist()))
    return choices


def _sample(logits: torch.Tensor, rows: list[RowSampler]) -> torch.Tensor:
    """Sampled tokens [b] for rows that sample; logits [b, V]."""
    b, vocab = logits.shape
    temps = torch.tensor([r.temperature for r in rows], device=logits.device, dtype=logits.dtype)
    scaled = logits / temps[:, None]  # [b, V]
    u = torch.tensor([torch.rand(1, generator=r.generator).item() for r in rows],
                     device=logits.device, dtype=torch.float64)  # [b], one draw per row per token
    if all(r.top_k <= 0 and r.top_p >= 1.0 for r in rows):
        probs = torch.softmax(scaled, dim=-1).double()
        order = None
    else:  # sort once; filter by rank (top_k) and by the mass before each token (top_p)
        scaled, order = scaled.sort(dim=-1, descending=True)  # [b, V]
        rank = torch.arange(vocab, device=logits.device)[None, :]
        top_k = torch.tensor([r.top_k if r.top_k > 0 else vocab for r in rows], device=logits.device)
        scaled = scaled.masked_fill(rank >= top_k[:, None], float("-inf"))
        probs = torch.softmax(scaled, dim=-1).double()
        top_p = torch.tensor([r.top_p for r in rows], device=logits.device, dtype=torch.float64)
        before = probs.cumsum(dim=-1) - probs  # mass of the more likely tokens
        probs = probs.masked_fill((before >= top_p[:, None]) & (rank > 0), 0.0)
    cdf = probs.cumsum(dim=-1)  # [b, V]
    pick = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0].clamp_(max=vocab - 1)
    return pick if order is None else order.gather(1, pick[:, None])[:, 0]
