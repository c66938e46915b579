"""RDS+: select pool examples whose embeddings lie closest to target (query) examples.

Each target set scores every pool example by its maximum cosine similarity to any of the set's
query examples; selection then goes round-robin across the sets, each taking its best example
not yet taken, so one large target set cannot crowd out the others (Ivison et al. 2025).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def max_cosine(pool: np.ndarray, queries: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """pool [n, H] and queries [m, H], both unit-norm -> [n] max cosine to any query."""
    out = np.empty(len(pool), dtype=np.float32)
    for start in range(0, len(pool), chunk):
        out[start:start + chunk] = (pool[start:start + chunk] @ queries.T).max(axis=1)
    return out


def rds_score_matrix(pool: np.ndarray, target_sets: Sequence[np.ndarray]) -> np.ndarray:
    """[K, n]: for each of K target sets, every pool example's max cosine to the set."""
    return np.stack([max_cosine(pool, t) for t in target_sets])


def round_robin_select(scores: np.ndarray, budget: int) -> np.ndarray:
    """scores [K, n] -> `budget` indices: the sets take turns picking their best unpicked example.

    Ties break by lower index (stable sort), so the result is deterministic.
    """
    K, n = scores.shape
    budget = min(budget, n)
    orders = [np.argsort(-scores[k], kind="stable") for k in range(K)]
    cursors = [0] * K
    taken = np.zeros(n, dtype=bool)
    picked: list[int] = []
    while len(picked) < budget:
        for k in range(K):
            if len(picked) == budget:
                break
            order = orders[k]
            while cursors[k] < n and taken[order[cursors[k]]]:
                cursors[k] += 1
            if cursors[k] < n:
                i = int(order[cursors[k]])
                taken[i] = True
                picked.append(i)
    return np.array(picked, dtype=np.int64)
