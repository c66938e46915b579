"""The two forwards the engine runs: a prompt's prefill (alone, unpadded) and one decode step of all
live rows of the slot cache, with an explicit attention mask and position ids.

Position ids count each row's real tokens (what `model.generate` computes from a left-padded
attention mask), so a row's numbers do not depend on the other rows of the batch.
"""

from __future__ import annotations

import inspect

import torch

from transformers.cache_utils import DynamicCache

from .kv import SlotCache, prefill_cache


class UnsupportedModel(ValueError):
    """The model's cache layout is one the engine does not handle (sliding-window or recurrent layers)."""


class ModelRunner:
    """Calls a transformers causal LM's forward with the engine's caches; returns last-position logits."""

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

    def prefill(self, prompt: list[int]) -> tuple[torch.Tensor, DynamicCache]:
        """Run one prompt [1, L]; return its last logits [1, V] and its one-row cache."""
        ids = torch.tensor([prompt], dtype=torch.long, device=self.device)  # [1, L]
        cache = prefill_cache()
        positions = torch.arange(len(prompt), device=self.device)[None, :]  # [1, L]
        return self._forward(ids, torch.ones_like(ids), positions, cache), cache

    def decode(self, tokens: torch.Tensor, cache: SlotCache) -> torch.Tensor:
        """Feed each live row's last token (tokens [n]); return logits [n, V]. Every row gains a column."""
        cache.before_step()
        lens = cache.row_lengths()  # [n]: real tokens before this one
        cols = torch.arange(cache.width + 1, device=self.device)  # [W]
        mask = (cols[None, :] <= lens[:, None]).long()  # [n, W]: a row's own columns and the new one
        logits = self._forward(tokens[:, None], mask, lens[:, None], cache)
        cache.after_step()
        return logits

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                 cache) -> torch.Tensor:
        kwargs = {self.cache_kw: cache, "use_cache": True}
        if self.keep_last:
            kwargs["logits_to_keep"] = 1
        self.forwards += 1
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs)
        return out.logits[:, -1, :].float()  # [B, V]
