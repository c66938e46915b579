"""Cheap text embeddings for pools too large to embed with a model: hashed word uni- and
bigram counts (signed feature hashing), log-scaled and L2-normalised. Deterministic across
processes (crc32, not Python's salted hash)."""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable

import numpy as np

_WORD = re.compile(r"\w+|[^\w\s]")


def hashed_embeddings(texts: Iterable[str], dim: int = 256) -> np.ndarray:
    """[n, dim] float32 unit vectors."""
    rows = []
    for text in texts:
        vec = np.zeros(dim, dtype=np.float32)
        toks = _WORD.findall(text.lower())
        grams = toks + [a + " " + b for a, b in zip(toks, toks[1:])]
        for g in grams:
            h = zlib.crc32(g.encode("utf-8"))
            vec[h % dim] += 1.0 if (h >> 31) & 1 else -1.0
        rows.append(np.sign(vec) * np.log1p(np.abs(vec)))
    out = np.stack(rows) if rows else np.zeros((0, dim), dtype=np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return (out / np.maximum(norms, 1e-12)).astype(np.float32)


def cached_hashed_embeddings(ctx, examples, dim: int = 128):
    """`hashed_embeddings` of the examples' text through the feature store (computed once)."""
    from .features import compute_cached
    from .zipfit import example_text

    return compute_cached(ctx, "hashed", "hashed-ngrams", {"dim": dim}, examples,
                          lambda exs: hashed_embeddings((example_text(e) for e in exs), dim),
                          "embed (hashed n-grams)", batch_size=8192)
