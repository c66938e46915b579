"""Assistant-only masks from token positions, and the train/inference prompt check."""

import pytest

from tunesmith.data.chat import IGNORE, TemplateMismatch, tokenize_conversation
from tunesmith.data.samples import tokenize_examples
from tunesmith.data.example import Example
from tunesmith.errors import DataError

CONV = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hi."},
    {"role": "assistant", "content": "hi"},
    {"role": "user", "content": "Now count to three."},
    {"role": "assistant", "content": "1, 2, 3"},
]


def spans(labels):
    """Maximal runs of trained positions as (start, end)."""
    out, start = [], None
    for i, x in enumerate(labels + [IGNORE]):
        if x != IGNORE and start is None:
            start = i
        if x == IGNORE and start is not None:
            out.append((start, i))
            start = None
    return out


def test_multi_turn_with_system_trains_exactly_the_assistant_turns(smol_tokenizer):
    tok = smol_tokenizer
    ids, labels = tokenize_conversation(tok, CONV)
    assert len(ids) == len(labels)
    got = [tok.decode(ids[a:b]) for a, b in spans(labels)]
    # Both assistant turns (not only the last), each through its end-of-turn token, nothing else.
    assert got == ["hi<|im_end|>", "1, 2, 3<|im_end|>"]
    for i, (t, lab) in enumerate(zip(ids, labels)):
        assert lab in (IGNORE, t)
    untrained = tok.decode([t for t, lab in zip(ids, labels) if lab == IGNORE])
    assert "You are terse." in untrained and "Say hi." in untrained and "Now count to three." in untrained
    assert "<|im_start|>assistant\n" in untrained  # the generation prompt itself is not trained
    # The prompt part of each turn equals the inference rendering token for token.
    first_prompt = tok(tok.apply_chat_template(CONV[:2], tokenize=False, add_generation_prompt=True),
                       add_special_tokens=False)["input_ids"]
    assert spans(labels)[0][0] == len(first_prompt) and ids[:len(first_prompt)] == first_prompt


def test_default_system_prompt_is_not_trained(smol_tokenizer):
    ids, labels = tokenize_conversation(smol_tokenizer, CONV[1:3])
    text = smol_tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert [smol_tokenizer.decode(ids[a:b]) for a, b in spans(labels)] == ["hi<|im_end|>"]


def test_template_mismatch_stops_with_an_explanation(smol_tokenizer):
    import copy

    tok = copy.deepcopy(smol_tokenizer)
    # A template whose training rendering of the assistant header differs from the generation prompt.
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}{% if m['role'] == 'assistant' %} "
                         "(train){% endif %}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(TemplateMismatch, match="not a prefix"):
        tokenize_conversation(tok, CONV[1:3])
    with pytest.raises(DataError, match=r"data\.jsonl:7: chat template check failed"):
        tokenize_examples(tok, [Example(CONV[1:3], "data.jsonl", 7)], 512)


def test_truncation_policies_are_counted(smol_tokenizer):
    long = [{"role": "user", "content": "word " * 60}, {"role": "assistant", "content": "ok"}]
    short = CONV[1:3]
    exs = [Example(long, "f.jsonl", 1), Example(short, "f.jsonl", 2)]
    kept, rejects, stats = tokenize_examples(smol_tokenizer, exs, 40, "truncate")
    # Truncating the long one cuts its only answer away: it is rejected, not trained on silently.
    assert [k.line for k in kept] == [2]
    assert [(r.line, r.reason.split(":")[0]) for r in rejects] == [(1, "no_trainable_tokens")]
    kept, rejects, stats = tokenize_examples(smol_tokenizer, exs, 40, "drop")
    assert stats.dropped_overlong == 1 and [(r.line, r.reason.split(":")[0]) for r in rejects] == [(1, "overlong")]
    with pytest.raises(DataError, match=r"f\.jsonl:1: the row has \d+ tokens, over data\.max_seq_len=40"):
        tokenize_examples(smol_tokenizer, exs, 40, "fail")
    kept, rejects, stats = tokenize_examples(smol_tokenizer, [Example(short, "f", 1)], 512, "truncate")
    assert stats.trainable_tokens == 2 and 0 < stats.to_json()["trainable_share"] < 0.1
