"""What the generation engine is asked and what it answers: the contract between the engine
(generation/engine.py) and everything that generates (eval suites, `generate`, `chat`, the HTTP server).

A request is prompt token ids plus SamplingParams; the engine answers with a stream of Events per
request (one per new token of each of the `n` completions, then one Finish per completion), or,
for batch callers, with one Completion per completion.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SamplingParams:
    """How one request samples. temperature 0 is greedy (top_p, top_k and seed are then unused)."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    seed: int | None = None  # a seeded request samples the same tokens whatever else is in the batch
    stop: list[str] = field(default_factory=list)  # cut the text before the first stop string and end
    n: int = 1  # completions per prompt; they share the prompt's prefill
    logprobs: bool = False
    top_logprobs: int = 0  # alternatives per position (with logprobs)


@dataclass
class TokenLogprob:
    """One generated token's log-probability and, when asked, the most likely alternatives."""

    token_id: int
    text: str
    logprob: float
    top: list[tuple[int, str, float]] = field(default_factory=list)  # (token id, text, logprob)


@dataclass
class Delta:
    """New output of completion `index`: `text` is what became final since the last Delta (text held
    back while it could still be the start of a stop string is sent later, or never)."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class Finish:
    """Completion `index` is done: finish_reason "stop" (end-of-turn token or a stop string),
    "length" (max_tokens), "cancelled" (the caller went away) or "error"."""

    index: int
    finish_reason: str
    completion_tokens: int


@dataclass
class Completion:
    """One whole completion, for batch callers."""

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    logprobs: list[TokenLogprob] = field(default_factory=list)


Event = Delta | Finish
