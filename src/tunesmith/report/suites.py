"""The order suites are shown in: the summary's, then any other by name."""

from __future__ import annotations

from collections.abc import Iterable

ORDER = ("tasks", "loss", "ifeval", "ifeval_loose", "ifbench", "ifbench_loose", "humaneval", "data", "robustness")


def suite_order(suites: Iterable[str]) -> list[str]:
    return sorted(suites, key=lambda s: (ORDER.index(s) if s in ORDER else len(ORDER), s))
