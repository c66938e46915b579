"""A quality filter by response loss, and the pairing that puts it in front of IFD by default.

`loss` keeps the examples whose response the scoring model finds most predictable given the
prompt (mean loss per response token, from the forward pass RDS+ and IFD share, so it costs
nothing more when either runs). Losses are ranked within each stratum (a task type, a source, any
row field; rows without the field form one stratum), so a task type that is simply harder is not
dropped as a whole: what goes is the tail of each stratum, where answers that do not fit their
prompt (wrong, swapped, off-instruction) gather.

Why IFD needs it: IFD prefers examples whose prompt helps least to predict the response, and a
plausible wrong answer is exactly that. On the 20%-corrupted fault pool, plain IFD's selection was
65% corrupted (BENCHMARKS.md). So a chain step `ifd` runs after `loss:70%` unless the pairing is
turned off (`ifd_filter: none`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from ..errors import UsageError
from .budget import parse_budget

IFD_FILTER_DEFAULT = "loss:70%"
IFD_FILTERS = ("loss",)


def parse_ifd_filter(spec: str | None) -> tuple[str, str] | None:
    """"loss:70%" -> ("loss", "70%"); "none" -> None (ifd ranks the whole input, unfiltered)."""
    text = (spec or "none").strip()
    if text.lower() in ("none", "off", "false", ""):
        return None
    name, _, keep = text.partition(":")
    if name not in IFD_FILTERS or not keep:
        raise UsageError(f"ifd_filter '{spec}' is not understood: write 'loss:70%' (keep that share of rows, "
                         "lowest response loss first) or 'none' to let ifd rank unfiltered rows")
    parse_budget(keep, 100)  # a bad share ends here, with the budget's message
    return name, keep


def within_stratum_rank(values: np.ndarray, strata: Sequence[str]) -> np.ndarray:
    """[n] in (0, 1): each value's rank within its stratum, (rank - 0.5) / stratum size (ascending)."""
    out = np.empty(len(values), dtype=np.float64)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(strata):
        groups[s].append(i)
    for idx in groups.values():
        idx_arr = np.asarray(idx)
        order = idx_arr[np.argsort(values[idx_arr], kind="stable")]
        out[order] = (np.arange(len(order)) + 0.5) / len(order)
    return out


def loss_select(loss: np.ndarray, strata: Sequence[str], budget: int) -> np.ndarray:
    """The `budget` examples lowest in their stratum's loss ranking (so every stratum keeps about
    the same share); ties by lower loss, then lower index. NaN losses (no response tokens) go last."""
    clean = np.where(np.isfinite(loss), loss, np.inf)
    rank = within_stratum_rank(clean, strata)
    rank[~np.isfinite(clean)] = 2.0
    order = np.lexsort((np.arange(len(loss)), clean, rank))
    return order[:budget]
