"""The two forwards the engine runs: the prefill of the prompts that join (packed into one unpadded
row) and one decode step of all live rows of the slot cache, with an explicit attention mask and
position ids.

Position ids count each row's real tokens (what `model.generate` computes from a left-padded
attention mask), so a row's numbers do not depend on the other rows of the batch.
"""

from __future__ import annotations

import inspect
import itertools

import torch

from transformers.cache_utils import DynamicCache

from ..kernels.attention import packed_attention_enabled
from ..kernels.decode_attention import decode_attention_enabled
from ..kernels.unwrap import unwrap
from .kv import PromptKV, SlotCache, prefill_cache
from .llama_step import LlamaStep


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
        # Llama-architecture models prefill and decode through the written-out step (same ops, less overhead)
        self.llama_step = LlamaStep(model) if LlamaStep.supports(model) else None

    def prefill(self, prompts: list[list[int]]) -> tuple[torch.Tensor, list[PromptKV]]:
        """Run prompts packed in one row [1, sum L]: positions restart at 0 for each and attention
        never crosses from one prompt to another (kernels.attention's per-sample causal attention),
        so each prompt gets the numbers it would get alone, with one pass over the weights for all.
        Returns each prompt's last logits [k, V] and its keys and values."""
        ends = list(itertools.accumulate(len(p) for p in prompts))
        self.forwards += 1
        if self.llama_step is not None:  # the same computation on the decode step's packed weights
            logits, cache = self.llama_step.prefill(prompts)
        else:
            ids = torch.tensor([[t for p in prompts for t in p]], dtype=torch.long, device=self.device)  # [1, L]
            positions = torch.cat([torch.arange(len(p), device=self.device) for p in prompts])[None, :]  # [1, L]
            last = torch.tensor(ends, device=self.device) - 1  # [k]: each prompt's last position
            cache = prefill_cache()
            if len(prompts) == 1:
                logits = self._forward(ids, torch.ones_like(ids), positions, cache)
            else:
                with packed_attention_enabled(unwrap(self.model)):
                    logits = self._forward(ids, None, positions, cache, keep=last)
        return logits, [PromptKV(cache, end - len(p), len(p)) for p, end in zip(prompts, ends)]

    def new_cache(self, template: DynamicCache, slots: int) -> SlotCache:
        """The slot cache for decode steps: pooled by prompt length for the written-out Llama step,
        one pool for the model's own forward (kv.py)."""
        return SlotCache(template, slots, pooled=self.llama_step is not None)

    def sort_rows(self, cache: SlotCache) -> list[int] | None:
        """Let the cache sort its rows by length where the decode step attends per group of rows
        (the written-out Llama step in fp32); returns the new order (SlotCache.sort_rows) or None."""
        return cache.sort_rows() if self.llama_step is not None and self.llama_step.groups_rows else None

    def decode(self, tokens: torch.Tensor, cache: SlotCache) -> torch.Tensor:
        """Feed each live row's last token (tokens [n]); return logits [n, V]. Every row gains a column."""
        cache.before_step()
        self.forwards += 1
        if self.llama_step is not None:
            logits = self.llama_step(tokens, cache)
            cache.after_step()
            return logits
        lens = cache.row_lengths()  # [n]: real tokens before this one
        cols = torch.arange(cache.single_pool().capacity, device=self.device)  # [C]: every column of the slots
        mask = (cols[None, :] <= lens[:, None]).long()  # [n, C]: a row's own columns and the new one
        with decode_attention_enabled(self.model):
            logits = self._forward(tokens[:, None], mask, lens[:, None], cache)
        cache.after_step()
        return logits

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor | None, positions: torch.Tensor,
                 cache, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, V] at each row's last position, or [k, V] at positions `keep` of a packed row."""
        kwargs = {self.cache_kw: cache, "use_cache": True}
        if self.keep_last:
            kwargs["logits_to_keep"] = 1 if keep is None else keep
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs)
        if keep is None:
            return out.logits[:, -1, :].float()  # [B, V]
        return (out.logits[0] if self.keep_last else out.logits[0, keep]).float()  # [k, V]
