"""Percentile bootstrap intervals: of a mean over per-item scores, and of a paired difference.

Both resample items with replacement `resamples` times from one seeded `numpy.random.default_rng`
(the same seed gives the same interval) and take the (1 - level) / 2 and (1 + level) / 2
percentiles of the resampled means. The paired interval compares two models scored on the same
items: items are matched by id, each resample draws the same items for both, and the statistic is
the mean of the per-item differences (b - a). Scores are 0/1 verdicts or floats in any range.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import UserError

RESAMPLES = 10_000
LEVEL = 0.95
_CHUNK_CELLS = 4_000_000  # indices drawn at a time (rows x items): memory stays flat for large n


@dataclass(frozen=True)
class Interval:
    """A mean (or mean difference) over n items with its percentile bootstrap interval."""

    mean: float
    low: float
    high: float
    n: int

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_json(self) -> dict[str, float | int]:
        return asdict(self)


def _resampled_means(x: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Means of `resamples` bootstrap resamples of x, drawn in chunks from one generator: the same
    numbers as `x[rng.integers(0, n, (resamples, n))].mean(axis=1)` in one go."""
    rng = np.random.default_rng(seed)
    n = len(x)
    rows = max(1, _CHUNK_CELLS // n)
    out = np.empty(resamples)
    for start in range(0, resamples, rows):
        stop = min(resamples, start + rows)
        out[start:stop] = x[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return out


def _interval(x: np.ndarray, resamples: int, seed: int, level: float) -> Interval:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if len(x) == 0:
        raise UserError("a bootstrap interval needs at least one scored item")
    means = _resampled_means(x, resamples, seed)
    low, high = np.percentile(means, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return Interval(float(x.mean()), float(low), float(high), len(x))


def bootstrap_mean(scores: Sequence[float], resamples: int = RESAMPLES, seed: int = 0,
                   level: float = LEVEL) -> Interval:
    """The mean of per-item scores with its percentile bootstrap interval."""
    return _interval(np.asarray(scores, dtype=np.float64), resamples, seed, level)


def paired_difference(a: Mapping[str, float], b: Mapping[str, float], resamples: int = RESAMPLES, seed: int = 0,
                      level: float = LEVEL, what: str = "the two models") -> Interval:
    """Mean of b[id] - a[id] over the shared items, with its paired percentile bootstrap interval.

    a and b map item id -> score and must hold the same ids (a paired comparison on different items
    means nothing): otherwise a UserError says how many differ and names a few.
    """
    if a.keys() != b.keys():
        only_a, only_b = sorted(a.keys() - b.keys(), key=str), sorted(b.keys() - a.keys(), key=str)
        raise UserError(f"{what} were not scored on the same items ({len(only_a)} only in the first, e.g. "
                        f"{only_a[:3]}; {len(only_b)} only in the second, e.g. {only_b[:3]}): a paired comparison "
                        "needs the same eval items (same suite settings, limit and seeds)")
    ids = sorted(a, key=str)
    diff = np.asarray([b[i] for i in ids], dtype=np.float64) - np.asarray([a[i] for i in ids], dtype=np.float64)
    return _interval(diff, resamples, seed, level)
