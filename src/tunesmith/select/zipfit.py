"""ZIP-FIT: rank pool examples by how well they compress together with target examples.

Alignment(x, y) = 1 - NCD(x, y), with the normalised compression distance
NCD(x, y) = (C(y + x) - min(C(x), C(y))) / max(C(x), C(y)) under gzip's DEFLATE (zlib).
An example's score for a target set is its mean alignment over the set's examples; with several
target sets, selection goes round-robin across them as in RDS+ (one set per task, say, so no
task whose examples happen to compress well takes the whole budget). No model is needed.

Speed: each target's compressor state is built once; scoring x copies that state and feeds
only x, so the cost per pair is proportional to len(x), not len(x) + len(y). Batches are
spread over worker processes.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from ..data.example import Example
from .features import ScoringContext, compute_cached

LEVEL = 9


def example_text(example: Example) -> str:
    """What ZIP-FIT compresses: the conversation's contents, one turn per line."""
    return "\n".join(m["content"] for m in example.messages)


class _Targets:
    """Compressor states primed with each target text, and each target's compressed size."""

    def __init__(self, targets: Sequence[bytes]):
        self.states = []
        self.sizes = []
        for y in targets:
            co = zlib.compressobj(LEVEL)
            head = co.compress(y)
            self.states.append((co, len(head)))
            self.sizes.append(len(zlib.compress(y, LEVEL)))

    def alignment(self, x: bytes) -> list[float]:
        """1 - NCD(x, y) for every target y."""
        cx = len(zlib.compress(x, LEVEL))
        out = []
        for (co, head), cy in zip(self.states, self.sizes):
            c = co.copy()
            cxy = head + len(c.compress(x)) + len(c.flush())
            out.append(1.0 - (cxy - min(cx, cy)) / max(cx, cy))
        return out


_WORKER_TARGETS: _Targets | None = None


def _init_worker(targets: list[bytes]) -> None:
    global _WORKER_TARGETS
    _WORKER_TARGETS = _Targets(targets)


def _score_chunk(texts: list[bytes]) -> list[list[float]]:
    assert _WORKER_TARGETS is not None
    return [_WORKER_TARGETS.alignment(t) for t in texts]


def zipfit_alignments(ctx: ScoringContext, examples: Sequence[Example], targets: Sequence[Example],
                      workers: int = 1, batch_size: int = 4096) -> np.ndarray:
    """Alignment [n, m] of every example to every target (higher = closer), cached per target list."""
    target_bytes = [example_text(t).encode("utf-8") for t in targets]
    target_id = hashlib.sha256(b"\0".join(target_bytes)).hexdigest()[:16]
    local = _Targets(target_bytes) if workers <= 1 else None
    pool = ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(target_bytes,)) if workers > 1 else None

    def batch(exs: list[Example]) -> np.ndarray:
        texts = [example_text(e).encode("utf-8") for e in exs]
        if pool is None:
            scores = [local.alignment(t) for t in texts]
        else:
            parts = [texts[i::workers] for i in range(workers)]
            results = list(pool.map(_score_chunk, parts))
            scores = [None] * len(texts)
            for w, res in enumerate(results):
                scores[w::workers] = res
        return np.asarray(scores, dtype=np.float32)

    try:
        out = compute_cached(ctx, "zipfit", "zipfit", {"targets": target_id, "level": LEVEL}, examples, batch,
                             "score (ZIP-FIT)", batch_size=batch_size)
    finally:
        if pool is not None:
            pool.shutdown()
    return out
