"""Replay by self-distillation: the base model's own answers to general prompts, mixed into training.

A model tuned only on short task answers learns that every answer is short, and forgets how it wrote
letters, stories and lists (the guard measures it). Replay rows hold the base model's own greedy
answers to general requests, so training keeps the base's behaviour wherever the user's data says
nothing: the rows ask nothing new of the model, and only pull it back towards itself.

The prompts are IFEval-style requests (a base request plus one to three format instructions) about
`SYNTH_TOPICS`, a topic list shared with no eval item, drawn from their own random stream
("replay:<seed>"), so no replay prompt is an eval prompt. The answers are generated once by the
generation engine and kept in a content-hashed sample store (synth.store): a rerun with the same base
weights, prompts and settings finds them and generates nothing. An answer the base cut at the token
cap is kept without an end-of-turn label (`truncated`), so replay never teaches stopping where the base
would have gone on. Samples are built from the prompt's inference tokens and the answer's tokens (no
round trip through the chat template, which can re-split an answer's leading whitespace).
"""

from __future__ import annotations

from typing import Any

from ..data.chat import TokenizedExample, answer_sample, turn_end_id
from .generated import SYNTH_TOPICS
from .prompts import SynthPrompt

REPLAY_SOURCE = "replay"


def replay_prompts(n: int, seed: int = 0) -> list[SynthPrompt]:
    """`n` general prompts for replay (see the module docstring); deterministic in (n, seed), prefix-stable."""
    from ..evalsets.ifeval import ifeval_items

    return [SynthPrompt(id=f"replay-{seed}-{i}", source=REPLAY_SOURCE, origin=f"replay:seed={seed}:{i + 1}",
                        messages=[{"role": "user", "content": item["prompt"]}], verifier="none", spec=item,
                        groups=list(item["instruction_id_list"]))
            for i, item in enumerate(ifeval_items(n, seed=f"replay:{seed}", topics=SYNTH_TOPICS))]


def replay_sample(tokenizer, prompt: SynthPrompt, ids: list[int], record: dict[str, Any], line: int,
                  max_len: int) -> TokenizedExample | None:
    """The training sample of one stored answer: the prompt's inference tokens, the answer's tokens and,
    if the answer ended, the end-of-turn token (None for an empty answer)."""
    if not record["text"].strip():
        return None
    cut = record.get("finish_reason") == "length"
    meta = {"origin": prompt.origin, "id": prompt.id, "replay": True, "truncated": cut}
    return answer_sample(ids, tokenizer(record["text"], add_special_tokens=False).input_ids,
                         None if cut else turn_end_id(tokenizer), REPLAY_SOURCE, line, meta, max_len)


def replay_row(prompt: SynthPrompt, sample: TokenizedExample, text: str) -> dict[str, Any]:
    """The row RUN/replay/replay.jsonl lists for a replay sample (messages, where it came from, whether cut)."""
    return {"messages": [*prompt.messages, {"role": "assistant", "content": text}], "id": prompt.id,
            "origin": prompt.origin, "truncated": sample.meta["truncated"] or sample.truncated,
            "tokens": len(sample.input_ids)}
