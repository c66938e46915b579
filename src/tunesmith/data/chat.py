"""Chat rendering with the tokenizer's own template, assistant-only label masks, and the check
that training prompts equal inference prompts token for token.

Masks come from token positions, not text markers: for every trained assistant turn i we render
messages[:i] with `add_generation_prompt=True` (exactly what inference will feed the model) and
require those tokens to be a prefix of the full training rendering. The tokens after that prefix,
up to and including the turn's end-of-turn token, are that turn's trainable labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
    def origin(self) -> str:
        """Where the conversation first came from (file:line; see Example.origin)."""
        return self.meta.get("origin") or f"{self.source}:{self.line}"

    @property
    def n_trainable(self) -> int:
        """Label tokens that some position predicts (labels[0] never is: nothing precedes it)."""
        return sum(1 for x in self.labels[1:] if x != IGNORE)


@dataclass
class TokenizedPair:
    """A preference pair: the chosen and the rejected conversation (the same prompt, two answers),
    tokenized with the same chat template and masks; labels mark the final answer only."""

    chosen: TokenizedExample
    rejected: TokenizedExample

    @property
    def source(self) -> str:
        return self.chosen.source

    @property
    def line(self) -> int:
        return self.chosen.line

    @property
    def meta(self) -> dict[str, Any]:
        return self.chosen.meta

    @property
    def origin(self) -> str:
        return self.chosen.origin

    @property
    def n_tokens(self) -> int:
        """Tokens of both sequences (what one pair costs in a packed row)."""
        return len(self.chosen.input_ids) + len(self.rejected.input_ids)


class TemplateMismatch(Exception):
    """The training rendering of a prompt differs from the inference rendering."""


class ToolsUnsupported(Exception):
    """The chat template drops a conversation's tool calls, tool results or tool definitions."""


TRAIN_ON = ("assistant", "all", "last_assistant")


def render(tokenizer, messages: list[dict[str, Any]], add_generation_prompt: bool,
           tools: list[dict[str, Any]] | None = None) -> list[int]:
    """Token ids of the tokenizer's chat template applied to `messages` (and `tools`, if any).

    Special tokens come from the template text itself, so no extra BOS/EOS is added here.
    """
    return tokenizer(render_text(tokenizer, messages, add_generation_prompt, tools),
                     add_special_tokens=False)["input_ids"]


def render_text(tokenizer, messages: list[dict[str, Any]], add_generation_prompt: bool,
                tools: list[dict[str, Any]] | None = None) -> str:
    """The chat template's text; per-turn `weight` keys are ours, not the template's, and are removed."""
    clean = [{k: v for k, v in m.items() if k != "weight"} for m in messages]
    kwargs = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(clean, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         **kwargs)


def end_of_turn_ids(tokenizer) -> set[int]:
    """Token ids that close an assistant turn (EOS plus the template's end-of-turn marker)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    vocab = tokenizer.get_vocab()
    for tok in _END_OF_TURN_TOKENS:
        if tok in vocab:
            ids.add(vocab[tok])
    return ids


def uses_tools(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> bool:
    """Whether a conversation declares tools, calls one, or holds a tool result."""
    return bool(tools) or any(m.get("tool_calls") or m["role"] == "tool" for m in messages)


def check_tools_rendered(tokenizer, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> None:
    """Raise ToolsUnsupported unless the template's rendering shows every tool definition's name,
    every call's name and arguments, and every tool result: a template that drops them would
    train the model on answers to calls it never sees."""
    try:
        text = render_text(tokenizer, messages, False, tools)
    except Exception as exc:  # templates raise their own errors (e.g. "tool role not supported")
        raise ToolsUnsupported(f"the chat template fails on it ({type(exc).__name__}: {exc})") from None
    missing = []
    for tool in tools or ():
        if tool["function"]["name"] not in text:
            missing.append(f"the definition of tool {tool['function']['name']!r}")
    for i, msg in enumerate(messages, start=1):
        for call in msg.get("tool_calls", ()):
            name, args = call["function"]["name"], call["function"]["arguments"]
            if name not in text:
                missing.append(f"turn {i}'s call to {name!r}")
            for value in (args.values() if isinstance(args, dict) else ()):
                if isinstance(value, (str, int, float)) and not isinstance(value, bool) and str(value) not in text:
                    missing.append(f"turn {i}'s argument {value!r} to {name!r}")
        if msg["role"] == "tool" and msg["content"].strip() and msg["content"] not in text:
            missing.append(f"turn {i}'s tool result")
    if missing:
        shown = "; ".join(missing[:3]) + (f" (and {len(missing) - 3} more)" if len(missing) > 3 else "")
        raise ToolsUnsupported(f"the chat template does not render {shown}")


def turn_end_id(tokenizer) -> int | None:
    """The token the chat template closes an assistant turn with (its end-of-turn marker, else EOS)."""
    vocab = tokenizer.get_vocab()
    return next((vocab[tok] for tok in _END_OF_TURN_TOKENS if tok in vocab), tokenizer.eos_token_id)


def answer_sample(prompt_ids: list[int], answer_ids: list[int], end_id: int | None, source: str = "", line: int = 0,
                  meta: dict[str, Any] | None = None, max_len: int | None = None) -> TokenizedExample:
    """An inference prompt's ids followed by an answer's ids (and `end_id` when the answer ended), labels on
    the answer only: what a model generated after exactly that prompt, without a round trip through text
    and the template. max_len cuts the end (the end label goes with it; `truncated` says so)."""
    tail = [*answer_ids, *([end_id] if end_id is not None else [])]
    ids, labels = [*prompt_ids, *tail], [IGNORE] * len(prompt_ids) + tail
    cut = max_len is not None and len(ids) > max_len
    if cut:
        ids, labels = ids[:max_len], labels[:max_len]
    return TokenizedExample(ids, labels, source, line, dict(meta or {}), truncated=cut)


def tokenize_conversation(tokenizer, messages: list[dict[str, Any]], eot: set[int] | None = None,
                          tools: list[dict[str, Any]] | None = None, train_on: str = "assistant"
                          ) -> tuple[list[int], list[int]]:
    """Render a conversation and label the turns that are trained on.

    Which turns: `train_on` "assistant" (every assistant turn), "last_assistant" (the final one)
    or "all" (every turn whole, prompts and template markup included); a turn's own `weight` (0 or
    1) overrides that.
    Returns (input_ids, labels). Raises TemplateMismatch when an inference prompt is not a
    token-for-token prefix of the training rendering.
    """
    eot = end_of_turn_ids(tokenizer) if eot is None else eot
    full = render(tokenizer, messages, False, tools)
    labels = [IGNORE] * len(full)
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    for i, msg in enumerate(messages):
        default = train_on == "all" or (msg["role"] == "assistant" and (train_on == "assistant" or i == last))
        if not msg.get("weight", default):
            continue
        if msg["role"] == "assistant" and train_on != "all":
            start, end = _assistant_span(tokenizer, messages, i, full, eot, tools)
        else:
            start = len(render(tokenizer, messages[:i], False, tools)) if i else 0
            upto = render(tokenizer, messages[: i + 1], False, tools)
            if full[: len(upto)] != upto:
                raise TemplateMismatch(f"turn {i}: rendering of the conversation up to this turn is not a prefix of "
                                       "the whole conversation's rendering")
            end = len(upto)
        labels[start:end] = full[start:end]
    return full, labels


def _assistant_span(tokenizer, messages: list[dict[str, Any]], i: int, full: list[int], eot: set[int],
                    tools: list[dict[str, Any]] | None) -> tuple[int, int]:
    """Token span of assistant turn i's answer: after the inference prompt, through its end-of-turn."""
    prompt = render(tokenizer, messages[:i], True, tools)
    if full[: len(prompt)] != prompt:
        at = next((k for k, (a, b) in enumerate(zip(full, prompt)) if a != b), min(len(full), len(prompt)))
        raise TemplateMismatch(
            f"assistant turn {i}: the inference prompt ({len(prompt)} tokens) is not a prefix of the "
            f"training rendering; first difference at token {at}: training "
            f"{tokenizer.decode(full[at:at + 8])!r} vs inference {tokenizer.decode(prompt[at:at + 8])!r}")
    upto = render(tokenizer, messages[: i + 1], False, tools)
    if full[: len(upto)] != upto:
        raise TemplateMismatch(f"assistant turn {i}: rendering of the conversation up to this turn "
                               "is not a prefix of the whole conversation's rendering")
    start, end = len(prompt), len(upto)
    # Train through the turn's end-of-turn token (so the model learns to stop), not past it:
    # template whitespace after the marker is the next prompt's business.
    last_eot = max((k for k in range(start, end) if full[k] in eot), default=None)
    if last_eot is not None:
        end = last_eot + 1
    return start, end
