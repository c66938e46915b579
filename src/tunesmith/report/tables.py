"""The suites table: one title per suite, one number format, used by every verb that prints scores."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from ..evaluate.harness import LOWER_IS_BETTER

SUITE_TITLES = {"tasks": "tasks exact-match", "loss": "held-out loss", "robustness": "robustness (mean over phrasings)",
                "ifbench": "IFBench prompt-level strict", "ifeval": "IFEval prompt-level strict",
                "ifbench_loose": "IFBench prompt-level loose", "ifeval_loose": "IFEval prompt-level loose",
                "humaneval": "HumanEval pass@1"}
SHORT = {"prompt_level_strict": "prompt strict", "instruction_level_strict": "instr strict",
         "prompt_level_loose": "prompt loose", "instruction_level_loose": "instr loose"}


def title(suite: str) -> str:
    return SUITE_TITLES.get(suite, suite)


def fmt(value: float | None, suite: str) -> str:
    """A score as the tables show it: a percentage, or 4 decimals for lower-is-better suites."""
    if value is None:
        return "-"
    return f"{value:.4f}" if suite in LOWER_IS_BETTER else f"{100 * value:.1f}%"


def change(before: float | None, after: float | None, suite: str) -> str:
    """after - before: percentage points, or 4 decimals for lower-is-better suites."""
    if before is None or after is None:
        return "-"
    return f"{after - before:+.4f}" if suite in LOWER_IS_BETTER else f"{100 * (after - before):+.1f} pp"


def details(result: dict[str, Any]) -> str:
    """The secondary numbers of one suite result (loose/strict levels, pass@k, spread...)."""
    shown = {SHORT.get(k, k): round(v, 4) for k, v in result.items()
             if isinstance(v, float) and k not in ("score", "wall_s")}
    if isinstance(result.get("pass@k"), dict):
        shown.update({f"pass@{k}": round(v, 4) for k, v in result["pass@k"].items()})
    return ", ".join(f"{k}={v}" for k, v in shown.items())


def results_table(results: dict[str, dict[str, Any]], heading: str) -> Table:
    """One row per suite: n, score, details, wall time."""
    table = Table(title=heading)
    for col in ("suite", "n", "score", "details", "wall s"):
        table.add_column(col)
    for name, res in results.items():
        table.add_row(title(name), str(res.get("n", "")), fmt(res["score"], name), details(res),
                      str(res.get("wall_s", "")))
    return table


def comparison_table(evals: dict[str, dict[str, Any]], heading: str) -> Table:
    """Base vs tuned per suite: {suite: {"before", "after", "n"}}."""
    table = Table(title=heading)
    for col in ("suite", "n", "base", "tuned", "change"):
        table.add_column(col, justify="right" if col != "suite" else "left")
    for suite, v in evals.items():
        table.add_row(title(suite), str(v.get("n") or ""), fmt(v["before"], suite), fmt(v["after"], suite),
                      change(v["before"], v["after"], suite))
    return table
