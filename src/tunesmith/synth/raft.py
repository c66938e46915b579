"""Rejection sampling (RAFT): from a prompt's scored samples, the answer to train on and a preference pair.

Per prompt, in this order:
  unverified     verifier "none": nothing can check free text, so no sample is chosen (all stay in
                 samples.jsonl for a person or a judge); the prompt gives no sft row and no pair
  all_identical  K >= 2 samples with the same text: nothing to choose between (dropped)
  all_failing    no sample passes its verifier (dropped)
otherwise the prompt is kept: its best accepted sample is its sft row, and when some sample fails,
(best accepted, closest failing sample) is its preference pair ("no_failing" counts prompts
without one).

Best accepted: the first accepted sample that ended by itself (not cut at max_tokens), else the first
accepted one. The samples are independent draws, so among equally accepted answers this is an
unbiased pick (no preference for short or long answers, which would shift the tuned model's lengths).
Closest failing: the most IFEval instructions followed (strict, then loose), then one that ended by
itself, then the first; its text always differs from the chosen one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .prompts import SynthPrompt

DROP_REASONS = ("unverified", "all_identical", "all_failing")


@dataclass
class Sample:
    """One scored sample of a prompt."""

    index: int
    text: str
    finish_reason: str
    tokens: int
    verdict: dict[str, Any]

    @property
    def passed(self) -> bool | None:
        return self.verdict.get("passed")


@dataclass
class Decision:
    """What a prompt contributes: `reason` is a DROP_REASONS entry when it is dropped; `chosen` is its
    sft answer; `rejected` the failing side of its pair (None: no pair)."""

    reason: str | None
    chosen: Sample | None = None
    rejected: Sample | None = None


def _followed(s: Sample) -> tuple[int, int]:
    instr = s.verdict.get("instructions") or {}
    return sum(v["strict"] for v in instr.values()), sum(v["loose"] for v in instr.values())


def decide(prompt: SynthPrompt, samples: list[Sample]) -> Decision:
    """The RAFT decision for one prompt (see the module docstring)."""
    if prompt.verifier == "none":
        return Decision("unverified")
    if len(samples) >= 2 and len({s.text for s in samples}) == 1:
        return Decision("all_identical")
    accepted = [s for s in samples if s.passed]
    if not accepted:
        return Decision("all_failing")
    chosen = min(accepted, key=lambda s: (s.finish_reason != "stop", s.index))
    failing = [s for s in samples if not s.passed and s.text != chosen.text]
    rejected = None
    if failing:
        rejected = max(failing, key=lambda s: (*_followed(s), s.finish_reason == "stop", -s.index))
    return Decision(None, chosen, rejected)
