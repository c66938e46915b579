"""Chat rendering with the tokenizer's own template, assistant-only label masks, and the check
that training prompts equal inference prompts token for token.

Masks come from token positions, not text markers: for every assistant turn i we render
messages[:i] with `add_generation_prompt=True` (exactly what inference will feed the model) and
require those tokens to be a prefix of the full training rendering. The tokens after that prefix,
up to and including the turn's end-of-turn token, are that turn's trainable labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import DataError, UsageError
from .example import Example, Reject

IGNORE = -100
# End-of-turn markers used by common chat templates; the first one a vocabulary has is used.
_END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "</s>")


@dataclass
class TokenizedExample:
    """A conversation as token ids with aligned labels (label = token id where trained, else -100)."""

    input_ids: list[int]
    labels: list[int]
    source: str = ""
    line: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    truncated: bool = False

    @property
    def n_trainable(self) -> int:
        """Label tokens that some position predicts (labels[0] never is: nothing precedes it)."""
        return sum(1 for x in self.labels[1:] if x != IGNORE)


class TemplateMismatch(Exception):
    """The training rendering of a prompt differs from the inference rendering."""


def render(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    """Token ids of the tokenizer's chat template applied to `messages`.

    Special tokens come from the template text itself, so no extra BOS/EOS is added here.
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def end_of_turn_ids(tokenizer) -> set[int]:
    """Token ids that close an assistant turn (EOS plus the template's end-of-turn marker)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    vocab = tokenizer.get_vocab()
    for tok in _END_OF_TURN_TOKENS:
        if tok in vocab:
            ids.add(vocab[tok])
    return ids


def tokenize_conversation(tokenizer, messages: list[dict[str, str]], eot: set[int] | None = None
                          ) -> tuple[list[int], list[int]]:
    """Render a conversation and label every assistant turn (all turns, not only the last).

    Returns (input_ids, labels). Raises TemplateMismatch when an inference prompt is not a
    token-for-token prefix of the training rendering.
    """
    eot = end_of_turn_ids(tokenizer) if eot is None else eot
    full = render(tokenizer, messages, add_generation_prompt=False)
    labels = [IGNORE] * len(full)
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:i], add_generation_prompt=True)
        if full[: len(prompt)] != prompt:
            at = next((k for k, (a, b) in enumerate(zip(full, prompt)) if a != b), min(len(full), len(prompt)))
            raise TemplateMismatch(
                f"assistant turn {i}: the inference prompt ({len(prompt)} tokens) is not a prefix of the "
                f"training rendering; first difference at token {at}: training "
                f"{tokenizer.decode(full[at:at + 8])!r} vs inference {tokenizer.decode(prompt[at:at + 8])!r}")
        upto = render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if full[: len(upto)] != upto:
            raise TemplateMismatch(f"assistant turn {i}: rendering of the conversation up to this turn "
                                   "is not a prefix of the whole conversation's rendering")
        start, end = len(prompt), len(upto)
        # Train through the turn's end-of-turn token (so the model learns to stop), not past it:
        # template whitespace after the marker is the next prompt's business.
        last_eot = max((k for k in range(start, end) if full[k] in eot), default=None)
        if last_eot is not None:
            end = last_eot + 1
        labels[start:end] = full[start:end]
    return full, labels


@dataclass
class TokenizeStats:
    """Counts for the data report."""

    total_tokens: int = 0
    trainable_tokens: int = 0
    truncated: int = 0
    dropped_overlong: int = 0
    no_trainable: int = 0
    template_checked: int = 0

    def to_json(self) -> dict[str, Any]:
        share = self.trainable_tokens / self.total_tokens if self.total_tokens else 0.0
        return {**self.__dict__, "trainable_share": round(share, 4)}


def tokenize_examples(tokenizer, examples: list[Example], max_seq_len: int, overlong: str = "truncate",
                      progress=None) -> tuple[list[TokenizedExample], list[Reject], TokenizeStats]:
    """Tokenize and mask every example, applying the overlong policy.

    overlong: "truncate" keeps the first max_seq_len tokens, "drop" rejects the sample,
    "fail" stops. A sample left with no trainable token is rejected ("no_trainable_tokens").
    A template mismatch stops with an explanation: training on such masks would teach the model
    prompts it never sees at inference.
    """
    if overlong not in ("truncate", "drop", "fail"):
        raise UsageError(f"data.overlong must be truncate, drop or fail, not '{overlong}'")
    eot = end_of_turn_ids(tokenizer)
    kept: list[TokenizedExample] = []
    rejects: list[Reject] = []
    stats = TokenizeStats()
    for ex in examples:
        try:
            ids, labels = tokenize_conversation(tokenizer, ex.messages, eot)
        except TemplateMismatch as exc:
            raise DataError(f"{ex.source}:{ex.line}: chat template check failed: {exc}. The template renders "
                            "prompts differently for training and inference; fix the template or the data") from None
        stats.template_checked += 1
        truncated = False
        if len(ids) > max_seq_len:
            if overlong == "fail":
                raise DataError(f"{ex.source}:{ex.line}: {len(ids)} tokens is over data.max_seq_len="
                                f"{max_seq_len}; raise it or set data.overlong: truncate | drop")
            if overlong == "drop":
                stats.dropped_overlong += 1
                rejects.append(Reject(ex.source, ex.line, f"overlong: {len(ids)} tokens > max_seq_len {max_seq_len}",
                                      ex.to_json()))
                if progress:
                    progress()
                continue
            ids, labels, truncated = ids[:max_seq_len], labels[:max_seq_len], True
        tex = TokenizedExample(ids, labels, ex.source, ex.line, ex.meta, truncated)
        if tex.n_trainable == 0:
            stats.no_trainable += 1
            rejects.append(Reject(ex.source, ex.line, "no_trainable_tokens: no assistant token left"
                                  + (f" after truncation to {max_seq_len}" if truncated else ""), ex.to_json()))
        else:
            stats.truncated += truncated
            stats.total_tokens += len(ids)
            stats.trainable_tokens += tex.n_trainable
            kept.append(tex)
        if progress:
            progress()
    return kept, rejects, stats
