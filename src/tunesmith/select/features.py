"""Cached, resumable, rank-sharded computation of per-example features with a model.

`compute_cached` is the one loop every model-aware method shares: it keys each example by
content, reads what the store already has, computes the rest in length-sorted batches (each
batch committed as it finishes, so an interrupted run resumes where it stopped), shows a
progress bar in examples/s, and under torchrun gives each rank every world_size-th missing
example, then merges the ranks' shard files.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import ui
from ..data.chat import TokenizedExample, end_of_turn_ids, tokenize_conversation
from ..data.example import Example
from ..io import cache_root
from ..train.distributed import DistInfo, barrier, init_distributed
from .store import FeatureStore, content_key, merge_shards, shard_path


def model_fingerprint(model_dir: str | os.PathLike) -> str:
    """A short hash of a model directory's config and weight file sizes (cheap, content-derived)."""
    root = Path(model_dir)
    h = hashlib.sha256()
    for f in sorted(root.glob("*.json")) + sorted(root.glob("*.safetensors")):
        h.update(f.name.encode())
        h.update(f.read_bytes() if f.suffix == ".json" else str(f.stat().st_size).encode())
    return h.hexdigest()[:16]


@dataclass
class ScoringContext:
    """What model-aware methods need: the model, its tokenizer and where features are cached."""

    model: torch.nn.Module | None = None  # None for model-free methods (zipfit)
    tokenizer: object = None
    fingerprint: str = "none"  # identifies the model weights in cache keys
    cache_dir: Path = field(default_factory=lambda: cache_root() / "select")
    batch_size: int = 16
    max_seq_len: int = 1024
    show_progress: bool = True
    dist: DistInfo | None = None

    def __post_init__(self) -> None:
        self.cache_dir = Path(self.cache_dir)
        self._eot = None
        self._tokenized: dict[str, TokenizedExample] = {}

    @property
    def info(self) -> DistInfo:
        if self.dist is None:
            self.dist = init_distributed()
        return self.dist

    def tokenize(self, example: Example) -> TokenizedExample:
        """The example's training tokens and labels (cut at max_seq_len)."""
        # Keyed by content, not id(): ids of freed examples are reused by new ones.
        key = json.dumps(example.messages, sort_keys=True, ensure_ascii=False)
        if key not in self._tokenized:
            if self._eot is None:
                self._eot = end_of_turn_ids(self.tokenizer)
            ids, labels = tokenize_conversation(self.tokenizer, example.messages, self._eot)
            self._tokenized[key] = TokenizedExample(ids[: self.max_seq_len], labels[: self.max_seq_len],
                                                    example.source, example.line, example.meta)
        return self._tokenized[key]


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [B, T] and attention mask [B, T] (right padding never disturbs a causal
    model's real positions)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def compute_cached(ctx: ScoringContext, store_name: str, kind: str, params: dict, examples: Sequence[Example],
                   compute_batch: Callable[[list[Example]], np.ndarray], label: str,
                   batch_size: int | None = None) -> np.ndarray:
    """Features [n, d] for `examples`, computing only what the store lacks.

    compute_batch(list of examples) -> float32 array [len, d]. Keys hash (kind, model
    fingerprint, params, messages), so the store can be shared by any pool.
    """
    store_path = ctx.cache_dir / f"{store_name}.sqlite"
    keys = [content_key(kind, ctx.fingerprint, params, ex.messages) for ex in examples]
    info = ctx.info
    if info.is_main and any(store_path.parent.glob(f"{store_path.stem}.rank*{store_path.suffix}")):
        merge_shards(store_path)  # shards an interrupted torchrun run left behind: their work counts
    if info.world_size > 1:
        if info.is_main:
            FeatureStore(store_path).close()  # create it (WAL, schema) before other ranks open it
        barrier(info)
    with FeatureStore(store_path) as store:
        have = store.get_many(keys)
    missing = sorted({k: i for i, k in enumerate(keys) if k not in have}.values())
    mine = missing[info.rank::info.world_size]
    if mine:
        own = store_path if info.world_size == 1 else shard_path(store_path, info.rank)
        if ctx.tokenizer is not None:
            # Longest first: memory trouble shows at once, and batches group similar lengths.
            mine.sort(key=lambda i: -len(ctx.tokenize(examples[i]).input_ids))
        step = batch_size or ctx.batch_size
        with FeatureStore(own) as out, _progress(ctx, label, len(mine)) as advance:
            for start in range(0, len(mine), step):
                idx = mine[start:start + step]
                values = compute_batch([examples[i] for i in idx])
                out.put_many((keys[i], v) for i, v in zip(idx, values))
                advance(len(idx))
    if info.world_size > 1:
        barrier(info)
        if info.is_main:
            merge_shards(store_path)
        barrier(info)
    with FeatureStore(store_path) as store:
        have = store.get_many(keys)
    return np.stack([have[k] for k in keys]) if keys else np.zeros((0, 0), dtype=np.float32)


def _progress(ctx: ScoringContext, label: str, total: int):
    return ui.progress_bar(label, total, "examples", show=ctx.show_progress and ctx.info.is_main)
