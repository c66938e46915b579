"""The two forwards the engine runs: a prompt's prefill (alone, unpadded) and one decode step of the
whole left-padded batch, with an explicit attention mask and position ids.

Position ids count each row's real tokens (what `model.generate` computes from a left-padded
attention mask), so a row's numbers do not depend on how much padding the batch gives it.
"""

from __future__ import annotations

import inspect

import torch

from .kv import BatchCache


class UnsupportedModel(ValueError):
    """The model's cache layout is one the engine does not handle (sliding-window or recurrent layers)."""


class ModelRunner:
    """Calls a transformers causal LM's forward with a BatchCache; returns last-position logits."""

    def __init__(self, model):
        self.model = model.eval()
        params = inspect.signature(model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"  # transformers < 5.24 names
        self.keep_last = "logits_to_keep" in params
        self.device = next(model.parameters()).device
        cfg = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
        self.max_len: int | None = getattr(cfg, "max_position_embeddings", None)
        kinds = set(getattr(cfg, "layer_types", None) or ["full_attention"])
        if kinds != {"full_attention"}:
            raise UnsupportedModel(f"the generation engine handles full-attention layers only; this model has "
                                   f"{sorted(kinds)} layers")
        self.forwards = 0  # forward calls so far (prefills and decode steps)

    def prefill(self, prompt: list[int]) -> tuple[torch.Tensor, BatchCache]:
        """Run one prompt [1, L]; return its last logits [1, V] and its one-row cache."""
        ids = torch.tensor([prompt], dtype=torch.long, device=self.device)  # [1, L]
        cache = BatchCache(pads=torch.zeros(1, dtype=torch.long, device=self.device))
        positions = torch.arange(len(prompt), device=self.device)[None, :]  # [1, L]
        return self._forward(ids, torch.ones_like(ids), positions, cache), cache

    def decode(self, tokens: torch.Tensor, cache: BatchCache) -> torch.Tensor:
        """Feed each row's last token (tokens [B]); return logits [B, V]. The cache grows a column."""
        cols = torch.arange(cache.length + 1, device=self.device)  # [T + 1]
        mask = (cols[None, :] >= cache.pads[:, None]).long()  # [B, T + 1]; 0 on left padding
        positions = cache.lengths()[:, None]  # [B, 1]: real tokens before this one
        return self._forward(tokens[:, None], mask, positions, cache)

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                 cache: BatchCache) -> torch.Tensor:
        kwargs = {self.cache_kw: cache, "use_cache": True}
        if self.keep_last:
            kwargs["logits_to_keep"] = 1
        self.forwards += 1
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs)
        return out.logits[:, -1, :].float()  # [B, V]
