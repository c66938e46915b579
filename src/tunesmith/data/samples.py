"""Examples to training samples: the system-prompt policy, tool checks, masks and the overlong policy.

Everything that changes a conversation on its way to the model is a choice the user made and is
counted in TokenizeStats, which the data report shows: which system prompt rows without one get
(and what it costs in tokens), which rows were rejected because the template cannot show their
tool calls, how many turns carry weight 0, and which overlong rows lost earlier turns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import DataError, UsageError
from .chat import (
    TRAIN_ON,
    TemplateMismatch,
    TokenizedExample,
    TokenizedPair,
    ToolsUnsupported,
    check_tools_rendered,
    end_of_turn_ids,
    render,
    render_text,
    tokenize_conversation,
    uses_tools,
)
from .example import Example, Reject

OVERLONG = ("truncate", "drop", "fail")
_MARK = "\u2063tunesmith-user-mark\u2063"
_SYS_MARK = "\u2063tunesmith-system-mark\u2063"


@dataclass
class SystemPolicy:
    """What rows without a system turn get: "model" (whatever the chat template adds by itself),
    "none" (no system text: an empty system turn where the template would add its default), or
    a text of the user's own."""

    choice: str = "model"
    template_default: str | None = None  # the text the template adds when no system turn is given
    token_cost: int = 0  # tokens each such row carries for it, against an empty system turn

    def to_json(self) -> dict[str, Any]:
        return {"choice": self.choice, "template_default": self.template_default, "token_cost": self.token_cost}


def system_policy(tokenizer, choice: str) -> SystemPolicy:
    """Measure the template's default system prompt and what `choice` costs per row."""
    default = template_default_system(tokenizer)
    user = [{"role": "user", "content": "x"}]
    if choice == "model":
        given = user
    else:
        given = [{"role": "system", "content": "" if choice == "none" else choice}] + user
    empty = render(tokenizer, [{"role": "system", "content": ""}] + user, False)
    return SystemPolicy(choice, default, len(render(tokenizer, given, False)) - len(empty))


def template_default_system(tokenizer) -> str | None:
    """The system text a chat template writes when the conversation has none (SmolLM2: "You are a
    helpful AI assistant named SmolLM..."), or None. Found by rendering a user turn alone and with
    a marked system turn, and reading what sits where the marked system text would be."""
    try:
        alone = render_text(tokenizer, [{"role": "user", "content": _MARK}], False)
        with_sys = render_text(tokenizer, [{"role": "system", "content": _SYS_MARK},
                                           {"role": "user", "content": _MARK}], False)
    except Exception:  # a template that refuses system turns has no default to find
        return None
    before, _, after = with_sys.partition(_SYS_MARK)
    after = after[: after.find(_MARK)] if _MARK in after else after
    prefix = alone[: alone.find(_MARK)]
    if prefix.startswith(before) and prefix.endswith(after) and len(prefix) > len(before) + len(after):
        return prefix[len(before): len(prefix) - len(after)]
    return None


def with_system(messages: list[dict[str, Any]], policy: SystemPolicy) -> list[dict[str, Any]]:
    """The conversation with the policy's system turn, when it has none of its own."""
    if messages[0]["role"] == "system" or policy.choice == "model":
        return messages
    if policy.choice == "none":
        if policy.template_default is None:
            return messages
        return [{"role": "system", "content": ""}] + messages
    return [{"role": "system", "content": policy.choice}] + messages


@dataclass
class TokenizeStats:
    """Counts for the data report."""

    total_tokens: int = 0
    trainable_tokens: int = 0
    truncated: int = 0  # rows made to fit (earlier turns dropped and/or the end cut)
    turns_dropped: int = 0  # earlier turns removed from those rows, in all
    cut_end: int = 0  # rows that still had to be cut at max_seq_len (their last answer is partial)
    dropped_overlong: int = 0
    no_trainable: int = 0
    tools_unsupported: int = 0
    tool_rows: int = 0  # rows with tools that the template renders, trained with their calls
    weight0_turns: int = 0
    template_checked: int = 0
    system_given: int = 0  # rows that had no system turn of their own (they get the policy's)
    train_on: str = "assistant"
    system: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        share = self.trainable_tokens / self.total_tokens if self.total_tokens else 0.0
        return {**self.__dict__, "trainable_share": round(share, 4)}


def tokenize_examples(tokenizer, examples: list[Example], max_seq_len: int, overlong: str = "truncate",
                      progress=None, train_on: str = "assistant", default_system: str = "model"
                      ) -> tuple[list[TokenizedExample], list[Reject], TokenizeStats]:
    """Tokenize and mask every example under the recipe's policies.

    overlong: "truncate" drops whole earlier exchanges (oldest first) until the conversation fits,
    so the loss keeps the last answer, and cuts the end only when the last exchange alone is too
    long; "drop" rejects the row; "fail" stops. A row left with no trainable token is rejected
    ("no_trainable_tokens"); a row whose tool calls the template cannot show is rejected
    ("tools_unsupported"). A template mismatch stops with an explanation: training on such masks
    would teach the model prompts it never sees at inference.
    """
    if overlong not in OVERLONG:
        raise UsageError(f"data.overlong must be truncate, drop or fail, not '{overlong}'")
    if train_on not in TRAIN_ON:
        raise UsageError(f"data.train_on must be {', '.join(TRAIN_ON)}, not '{train_on}'")
    eot = end_of_turn_ids(tokenizer)
    policy = system_policy(tokenizer, default_system)
    stats = TokenizeStats(train_on=train_on, system=policy.to_json())
    kept: list[TokenizedExample] = []
    rejects: list[Reject] = []
    for ex in examples:
        sample, reject = _one(tokenizer, ex, max_seq_len, overlong, train_on, policy, eot, stats)
        if sample is not None:
            kept.append(sample)
            stats.total_tokens += len(sample.input_ids)
            stats.trainable_tokens += sample.n_trainable
        if reject is not None:
            rejects.append(reject)
        if progress:
            progress()
    return kept, rejects, stats


def require_pairs(examples: list[Example]) -> None:
    """Preference tuning needs a rejected answer on every row: one DataError naming the first row
    without one and how many there are."""
    missing = [ex for ex in examples if ex.rejected is None]
    if missing:
        raise DataError(f"train.objective: dpo trains on preference pairs, but {len(missing)} of {len(examples)} "
                        f"rows have no rejected answer (first: {missing[0].where()}). Give rows with 'chosen' and "
                        "'rejected' (data.format: preference), or set train.objective: sft")


def tokenize_pairs(tokenizer, examples: list[Example], max_seq_len: int, overlong: str = "truncate",
                   progress=None, default_system: str = "model"
                   ) -> tuple[list[TokenizedPair], list[Reject], TokenizeStats]:
    """Tokenize preference rows into pairs with the chat template and masks of SFT.

    Both sides get the same system policy and template check; their labels are the final
    assistant answer only (the answer the preference is about: earlier turns are the shared
    prompt). overlong: "truncate" cuts both sequences at max_seq_len (the prompt is kept whole,
    as TRL's keep_start), "drop" rejects the pair, "fail" stops. A pair whose chosen and rejected
    tokens are the same is rejected ("identical_pair"), as is one left without trained tokens.
    Every row must carry a rejected answer (else one DataError, see `require_pairs`).
    """
    if overlong not in OVERLONG:
        raise UsageError(f"data.overlong must be truncate, drop or fail, not '{overlong}'")
    require_pairs(examples)
    eot = end_of_turn_ids(tokenizer)
    policy = system_policy(tokenizer, default_system)
    stats = TokenizeStats(train_on="last_assistant", system=policy.to_json())
    pairs: list[TokenizedPair] = []
    rejects: list[Reject] = []
    unbounded = 1 << 62  # each side whole first; the pair's own overlong policy comes after
    for ex in examples:
        chosen, reject = _one(tokenizer, ex, unbounded, "truncate", "last_assistant", policy, eot, stats)
        if chosen is not None:
            side = Example(ex.rejected, ex.source, ex.line, ex.meta, ex.tools)
            scratch = TokenizeStats()  # the row is counted once (on its chosen side)
            rejected, reject = _one(tokenizer, side, unbounded, "truncate", "last_assistant", policy, eot, scratch)
            stats.template_checked += scratch.template_checked
            stats.tools_unsupported += scratch.tools_unsupported
            if reject is not None:
                reject = _reject(ex, reject.reason.replace(": ", ": rejected answer: ", 1))
            else:
                pair, reject = _pair(ex, chosen, rejected, max_seq_len, overlong, stats)
                if pair is not None:
                    pairs.append(pair)
                    stats.total_tokens += pair.n_tokens
                    stats.trainable_tokens += pair.chosen.n_trainable + pair.rejected.n_trainable
        if reject is not None:
            rejects.append(reject)
        if progress:
            progress()
    return pairs, rejects, stats


def _refuse_overlong(ex: Example, what: str, length: int, max_seq_len: int, overlong: str,
                     stats: TokenizeStats) -> Reject | None:
    """data.overlong for a row or pair over max_seq_len: fail raises, drop rejects, truncate returns None."""
    if overlong == "fail":
        raise DataError(f"{ex.where()}: {what} {length} tokens, over data.max_seq_len={max_seq_len}; raise it or "
                        "set data.overlong: truncate | drop")
    if overlong == "drop":
        stats.dropped_overlong += 1
        return _reject(ex, f"overlong: {length} tokens > max_seq_len {max_seq_len}")
    return None


def _pair(ex: Example, chosen: TokenizedExample, rejected: TokenizedExample, max_seq_len: int, overlong: str,
          stats: TokenizeStats) -> tuple[TokenizedPair | None, Reject | None]:
    """The pair under the overlong policy, or why it cannot teach a preference."""
    longest = max(len(chosen.input_ids), len(rejected.input_ids))
    cut = ""
    if longest > max_seq_len:
        refused = _refuse_overlong(ex, "the pair has", longest, max_seq_len, overlong, stats)
        if refused is not None:
            return None, refused
        meta = {**ex.meta, "truncation": {"turns_dropped": 0, "cut_end": True}}
        chosen, rejected = (TokenizedExample(s.input_ids[:max_seq_len], s.labels[:max_seq_len], s.source, s.line,
                                             meta, truncated=True) for s in (chosen, rejected))
        stats.truncated += 1
        stats.cut_end += 1
        cut = f" after truncation to {max_seq_len}"
    if chosen.input_ids == rejected.input_ids:
        return None, _reject(ex, f"identical_pair: the chosen and the rejected answer are the same{cut} "
                                 f"({len(chosen.input_ids)} tokens); a pair teaches a preference only if they differ")
    if not chosen.n_trainable or not rejected.n_trainable:
        stats.no_trainable += 1
        return None, _reject(ex, f"no_trainable_tokens: no trained token left{cut}")
    return TokenizedPair(chosen, rejected), None


def _one(tokenizer, ex: Example, max_seq_len: int, overlong: str, train_on: str, policy: SystemPolicy,
         eot: set[int], stats: TokenizeStats) -> tuple[TokenizedExample | None, Reject | None]:
    messages = with_system(ex.messages, policy)
    stats.system_given += ex.messages[0]["role"] != "system"
    if uses_tools(messages, ex.tools):
        try:
            check_tools_rendered(tokenizer, messages, ex.tools)
        except ToolsUnsupported as exc:
            stats.tools_unsupported += 1
            return None, _reject(ex, f"tools_unsupported: {exc}; this row is not trained without its calls: use a "
                                     "model whose chat template supports tools, or remove the tool turns")
        stats.tool_rows += 1
    stats.weight0_turns += sum(1 for m in messages if m.get("weight") == 0)
    ids, labels = _tokenize(tokenizer, ex, messages, eot, train_on)
    stats.template_checked += 1
    meta = ex.meta
    if len(ids) > max_seq_len:
        refused = _refuse_overlong(ex, "the row has", len(ids), max_seq_len, overlong, stats)
        if refused is not None:
            return None, refused
        ids, labels, dropped, cut = _fit(tokenizer, ex, messages, max_seq_len, eot, train_on)
        stats.truncated += 1
        stats.turns_dropped += dropped
        stats.cut_end += cut
        meta = {**ex.meta, "truncation": {"turns_dropped": dropped, "cut_end": cut}}
    sample = TokenizedExample(ids, labels, ex.source, ex.line, meta, truncated=meta is not ex.meta)
    if sample.n_trainable == 0:
        stats.no_trainable += 1
        after = f" after truncation to {max_seq_len}" if sample.truncated else ""
        return None, _reject(ex, f"no_trainable_tokens: no trained token left{after}")
    return sample, None


def _tokenize(tokenizer, ex: Example, messages, eot, train_on) -> tuple[list[int], list[int]]:
    try:
        return tokenize_conversation(tokenizer, messages, eot, ex.tools, train_on)
    except TemplateMismatch as exc:
        raise DataError(f"{ex.where()}: chat template check failed: {exc}. The template renders prompts "
                        "differently for training and inference; fix the template or the data") from None


def _fit(tokenizer, ex: Example, messages: list[dict[str, Any]], max_seq_len: int, eot, train_on: str
         ) -> tuple[list[int], list[int], int, bool]:
    """Drop whole earlier exchanges (oldest first) until the conversation fits; cut the end only
    if its last exchange alone is too long. Returns (ids, labels, turns dropped, end cut)."""
    head = messages[:1] if messages[0]["role"] == "system" else []
    body = messages[len(head):]
    starts = [k for k, m in enumerate(body) if m["role"] == "user"]
    ids = labels = None
    dropped = 0
    for start in starts[1:]:
        candidate = head + body[start:]
        if not any(m["role"] == "assistant" and m.get("weight", 1) for m in candidate):
            break
        ids, labels = _tokenize(tokenizer, ex, candidate, eot, train_on)
        dropped = start
        if len(ids) <= max_seq_len:
            return ids, labels, dropped, False
    if ids is None:
        ids, labels = _tokenize(tokenizer, ex, messages, eot, train_on)
    return ids[:max_seq_len], labels[:max_seq_len], dropped, True


def _reject(ex: Example, reason: str) -> Reject:
    return Reject(ex.source, ex.line, reason, ex.to_json(), index=ex.meta.get("index"))
