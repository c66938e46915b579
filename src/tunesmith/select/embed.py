"""RDS+ embeddings: the base model's final hidden states, position-weighted mean pooled.

Ivison et al. (2025) found this simple representation beats gradient- and loss-based ones for
instruction data selection at scale. Later tokens see more of the sequence, so pooling weights
grow linearly with position; vectors are L2-normalised so a dot product is a cosine.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..data.example import Example
from ..data.chat import IGNORE
from ..kernels.loss import padded_label_losses
from ..kernels.unwrap import backbone_and_head
from .features import ScoringContext, compute_cached, pad_batch


def position_weighted_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """hidden [B, T, H], mask [B, T] (1 = real token) -> pooled [B, H] with weights 1, 2, ..., len."""
    weights = torch.cumsum(mask, dim=1) * mask  # [B, T]: 1..len on real tokens, 0 on padding
    weights = weights.to(hidden.dtype)
    return (hidden * weights.unsqueeze(-1)).sum(1) / weights.sum(1, keepdim=True)


def forward_features(ctx: ScoringContext, examples: Sequence[Example]) -> np.ndarray:
    """One forward pass per example, cached, feeding two methods: [n, H + 2] holding the unit-norm
    RDS+ embedding, the mean response loss given the prompt (IFD's numerator) and the number of
    response tokens."""
    backbone, head = backbone_and_head(ctx.model)
    pad = ctx.tokenizer.pad_token_id or 0

    @torch.no_grad()
    def batch(exs: list[Example]) -> np.ndarray:
        toks = [ctx.tokenize(e) for e in exs]
        ids, mask = pad_batch([t.input_ids for t in toks], pad)
        labels, _ = pad_batch([t.labels for t in toks], IGNORE)
        hidden = backbone(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, T, H]
        pooled = torch.nn.functional.normalize(position_weighted_mean(hidden.float(), mask), dim=-1)
        loss, count = padded_label_losses(head, hidden, labels)
        return torch.cat([pooled, loss[:, None].float(), count[:, None].float()], dim=1).numpy()

    was_training = ctx.model.training
    ctx.model.eval()
    try:
        return compute_cached(ctx, "forward", "forward-v1", {"pool": "position-weighted-mean",
                              "max_seq_len": ctx.max_seq_len}, examples, batch, "forward pass (RDS+/IFD)")
    finally:
        ctx.model.train(was_training)


def embed_examples(ctx: ScoringContext, examples: Sequence[Example]) -> np.ndarray:
    """Unit-norm RDS+ embeddings [n, H] of whole conversations (prompt and response), cached."""
    return forward_features(ctx, examples)[:, :-2]
