"""Model-free selection: uniform random and stratified (by task, source or any meta key)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from ..data.example import Example


def random_select(n_pool: int, budget: int, seed: int) -> np.ndarray:
    """`budget` distinct indices drawn uniformly (sorted)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_pool, size=budget, replace=False))


def stratum_of(example: Example, key: str) -> str:
    """The stratum an example belongs to: its source file, or a meta key such as the task (for
    loaded files: any extra field of the row, e.g. a "category" column)."""
    if key == "source":
        return example.source
    if key in example.meta:
        return str(example.meta[key])
    return str(example.meta.get("fields", {}).get(key, "<none>"))  # a field of the input row


def proportional_allocation(sizes: dict[str, int], budget: int) -> dict[str, int]:
    """Split `budget` across strata in proportion to their sizes (largest remainder method,
    never more than a stratum holds)."""
    total = sum(sizes.values())
    if total == 0:
        return {k: 0 for k in sizes}
    quotas = {k: budget * n / total for k, n in sizes.items()}
    alloc = {k: min(sizes[k], int(q)) for k, q in quotas.items()}
    # Hand out what is left by largest remainder, skipping full strata.
    order = sorted(sizes, key=lambda k: (-(quotas[k] - int(quotas[k])), k))
    left = budget - sum(alloc.values())
    while left > 0:
        progressed = False
        for k in order:
            if left and alloc[k] < sizes[k]:
                alloc[k] += 1
                left -= 1
                progressed = True
        if not progressed:
            break
    return alloc


def stratified_select(strata: Sequence[str], budget: int, seed: int) -> np.ndarray:
    """Proportional stratified sampling: each stratum gets its share of the budget, drawn at random."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(strata):
        groups[s].append(i)
    alloc = proportional_allocation({k: len(v) for k, v in groups.items()}, budget)
    rng = np.random.default_rng(seed)
    picked: list[int] = []
    for k in sorted(groups):
        if alloc[k]:
            picked.extend(rng.choice(groups[k], size=alloc[k], replace=False).tolist())
    return np.sort(np.array(picked, dtype=np.int64))
