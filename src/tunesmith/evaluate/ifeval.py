"""IFEval scoring: `score_ifeval` applies the reference IFEval rules with the checkers of `if-verifiable`.

The items (IFEval-style prompts generated offline) come from `tunesmith.evalsets.ifeval.ifeval_items`.
Scoring follows the reference (strict and loose, prompt and instruction level; see
`tunesmith.evalsets.ifcheck`). if-verifiable's IFEval checkers match google-research's
`instructions.py` (as vendored by lm-eval) up to formatting.
"""

from __future__ import annotations

from typing import Any

from ..evalsets.ifcheck import ifeval_registry, score_items


def score_ifeval(items: list[dict[str, Any]], responses: list[str]) -> dict[str, Any]:
    """IFEval accuracies (prompt/instruction level, strict/loose) and per-item records; `score` is prompt-level strict."""
    return score_items("ifeval", ifeval_registry(), items, responses)
