"""Packed attention without an L x L mask.

transformers' SDPA path turns a packed row into one [L, L] block-diagonal mask, and PyTorch's CPU
kernel then does the full L^2 work (and loses its fast causal path). Here every sample of the
packed row is attended on its own, as a view of the row, with `is_causal=True`: the work is
sum(len_i^2) rather than L^2 (or n * max_len^2 for a padded batch, which wastes most of its work
when lengths vary from tens to thousands of tokens), and nothing is copied into a padded layout.

Used only through `packed_attention_enabled(model)` (training and loss evaluation); anything that
is not a single packed row with restarting position ids (generation with a KV cache, left-padded
batches) goes to the standard SDPA function unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

NAME = "tunesmith_packed"


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """Attention for one packed row (query [1, H, L, D], key/value [1, H_kv, L, D]) -> [1, L, H, D]."""
    pos = kwargs.get("position_ids")
    length = query.shape[2]
    if (query.shape[0] != 1 or pos is None or key.shape[2] != length or pos.shape[-1] != length
            or int(pos.reshape(-1)[0]) != 0):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    pos = pos.reshape(-1)  # [L], restarting at 0 for every sample, +1 per token
    drop = dropout if module.training else 0.0
    gqa = query.shape[1] != key.shape[1]  # GQA: SDPA shares each key/value head, no repeated copies
    # Sample boundaries: positions restart at 0. One causal SDPA call per sample, on views of the
    # packed row: the work is sum(len_i^2), with no padding and no scatter/gather copies.
    bounds = (pos == 0).nonzero().flatten().tolist() + [length]
    sizes = [e - s for s, e in zip(bounds[:-1], bounds[1:])]
    # split (not slicing) so that backward joins the per-sample gradients with one cat
    outs = [F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True, scale=scaling,
                                           enable_gqa=gqa).transpose(1, 2)  # [1, len_i, H, D]
            for q, k, v in zip(query.split(sizes, 2), key.split(sizes, 2), value.split(sizes, 2))]
    out = outs[0] if len(outs) == 1 else torch.cat(outs, 1)  # [1, L, H, D]
    return out.contiguous(), None


AttentionInterface.register(NAME, packed_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)


@contextmanager
def attention_enabled(model, name: str):
    """Use the registered attention `name` inside the block on a model that runs SDPA; the model's
    own setting is restored afterwards. Eager / flash models keep their own kernel."""
    config = model.config
    old = config._attn_implementation
    if old not in ("sdpa", name):
        yield
        return
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = old


def packed_attention_enabled(model):
    """Use packed attention inside the block (see attention_enabled)."""
    return attention_enabled(model, NAME)
