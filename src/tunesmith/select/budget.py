"""Selection budgets: an absolute count ("400") or a share of the pool ("10%")."""

from __future__ import annotations

import math

from ..errors import UsageError


def parse_budget(spec: str | int | float, pool_size: int) -> int:
    """How many examples a budget keeps from a pool of `pool_size` (at most the pool).

    "400" keeps 400; "10%" keeps ceil(10% of the pool); a float in (0, 1) is a share.
    """
    text = str(spec).strip()
    try:
        if text.endswith("%"):
            share = float(text[:-1]) / 100
            if not 0 < share <= 1:
                raise ValueError
            return min(pool_size, math.ceil(share * pool_size - 1e-9))
        value = float(text)
        if 0 < value < 1 and "." in text:
            return min(pool_size, math.ceil(value * pool_size - 1e-9))
        if value != int(value) or value < 1:
            raise ValueError
        return min(pool_size, int(value))
    except ValueError:
        raise UsageError(f"budget '{spec}' is not a count (e.g. 400) or a percentage in (0, 100] "
                         "(e.g. 10%)") from None
