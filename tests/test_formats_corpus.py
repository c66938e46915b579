"""The format corpus (tests/data/formats/): one small file per format and variant people have,
each with the rows it keeps, the rows it rejects (line and reason), its detected format and the
token ids of one rendered row; plus tool calls, per-turn weights, system prompts and truncation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.data.chat import IGNORE, tokenize_conversation
from tunesmith.data.load import load_examples
from tunesmith.data.samples import system_policy, template_default_system, tokenize_examples

CORPUS = Path(__file__).parent / "data" / "formats"
TOKENS = CORPUS.parent / "formats_tokens.json"  # token ids of one rendered row per file (SmolLM2's template)
QA_COLUMNS = {"prompt": "question", "response": "answer"}

# file -> (how it is read, kept rows by format, rejects as (line, kind))
CASES = {
    "alpaca.parquet": ("parquet", {"alpaca": 2}, []),
    "alpaca_array.json": ("json array", {"alpaca": 2}, [(13, "missing_field")]),  # record 3 starts on line 13
    "alpaca_history.jsonl": ("jsonl", {"alpaca": 1}, [(2, "wrong_type")]),
    "compressed.jsonl.gz": ("jsonl.gz", {"alpaca": 1, "messages": 1}, [(2, "bad_json")]),
    "dolly.jsonl": ("jsonl", {"dolly": 2}, [(3, "empty_assistant")]),
    "empty.jsonl": ("jsonl", {}, []),
    "openai_parts.jsonl": ("jsonl", {"messages": 1}, [(2, "unsupported_content")]),
    "openai_tools.jsonl": ("jsonl", {"messages": 2}, [(2, "bad_tool_call")]),
    "preference.jsonl": ("jsonl", {"preference": 3}, [(4, "missing_field")]),
    "prompt_completion.jsonl": ("jsonl", {"prompt_completion": 1}, [(2, "empty_assistant")]),
    "prompt_completion_chat.jsonl": ("jsonl", {"prompt_completion": 1}, [(2, "role_order")]),
    "question_answer.csv": ("csv", {"prompt_completion": 2}, [(4, "empty_assistant")]),
    "saved_dataset": ("arrow (datasets save_to_disk)", {"alpaca": 4}, [(4, "empty_assistant")]),
    "sharegpt_system.jsonl": ("jsonl", {"sharegpt": 2}, []),
    "to_json_lines.json": ("jsonl (in a .json file)", {"alpaca": 2}, []),
    "utf16.jsonl": ("jsonl (UTF-16, not readable)", {}, [(1, "bad_encoding")]),
    "weights.jsonl": ("jsonl", {"messages": 1}, [(2, "no_trainable_turn"), (3, "bad_weight")]),
}
# rows the template cannot render faithfully, rejected at tokenization (SmolLM2 has no tool support)
TOKENIZE_REJECTS = {"openai_tools.jsonl": [(1, "tools_unsupported")], "sharegpt_system.jsonl": [(2, "tools_unsupported")]}


def test_corpus_lists_every_file():
    data_files = {p.name for p in CORPUS.iterdir()}
    assert data_files == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_corpus_file(name, smol_tokenizer):
    kind, formats, rejects = CASES[name]
    columns = QA_COLUMNS if name.endswith(".csv") else None
    result = load_examples(CORPUS / name, on_error="skip", columns=columns)
    assert [f["kind"] for f in result.files] == [kind]
    assert result.format_counts == formats
    assert [(r.line, r.reason.split(":")[0]) for r in result.rejects] == rejects
    assert len(result.examples) + len(result.rejects) == result.total == result.files[0]["rows"]

    samples, tok_rejects, _ = tokenize_examples(smol_tokenizer, result.examples, 1024)
    assert [(r.line, r.reason.split(":")[0]) for r in tok_rejects] == TOKENIZE_REJECTS.get(name, [])
    expected = json.loads(TOKENS.read_text()).get(name)
    if expected is None:
        assert samples == []
        return
    last = samples[-1]
    assert last.line == expected["line"]
    assert last.input_ids == expected["input_ids"]
    assert smol_tokenizer.decode([t for t in last.labels if t != IGNORE]) == expected["trained"]


def test_column_mapping_is_required_for_other_names_and_named_in_the_reason():
    result = load_examples(CORPUS / "question_answer.csv", on_error="skip")
    assert result.format_counts == {}
    assert all(r.reason.startswith("unknown_format: row has keys ['question', 'answer', 'source']") and
               "data.columns" in r.reason for r in result.rejects)
    mapped = load_examples(CORPUS / "question_answer.csv", on_error="skip", columns=QA_COLUMNS)
    first = mapped.examples[0]
    assert first.messages == [{"role": "user", "content": "What is 2+3?"}, {"role": "assistant", "content": "5"}]
    assert first.meta["fields"] == {"source": "quiz"}
    bad = load_examples(CORPUS / "question_answer.csv", on_error="skip", columns={"prompt": "q"})
    assert bad.rejects[0].reason.startswith("missing_column: mapped column(s) ['q'] not in the row")


def test_sharegpt_system_and_tool_turns_are_kept():
    result = load_examples(CORPUS / "sharegpt_system.jsonl")
    first, second = result.examples
    assert first.messages[0] == {"role": "system", "content": "Answer in one word."}
    assert [m["role"] for m in second.messages] == ["user", "assistant", "tool", "assistant"]
    assert second.messages[1]["tool_calls"] == [{"type": "function", "function": {"name": "get_weather",
                                                                                     "arguments": {"city": "Oslo"}}}]
    assert second.tools[0]["function"]["name"] == "get_weather"


def test_preference_rows_keep_both_answers():
    result = load_examples(CORPUS / "preference.jsonl", on_error="skip")
    text, chat, implicit = result.examples
    assert text.messages == [{"role": "user", "content": "Is the sky blue?"}, {"role": "assistant", "content": "Yes."}]
    assert text.rejected == [{"role": "user", "content": "Is the sky blue?"}, {"role": "assistant", "content": "No."}]
    assert chat.rejected[-1] == {"role": "assistant", "content": "5"}
    assert implicit.messages[0] == implicit.rejected[0] == {"role": "user", "content": "Hi"}
    assert (implicit.messages[-1]["content"], implicit.rejected[-1]["content"]) == ("Hello!", "Go away.")
    # written back by a tunesmith step, a preference row reads back as the same preference
    again = load_examples_from_rows([implicit.to_row()])
    assert (again.messages, again.rejected, again.origin) == (implicit.messages, implicit.rejected, implicit.where())


def load_examples_from_rows(rows, tmp=Path("/tmp")):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "rows.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return load_examples(path).examples[0]


# ---- per-turn weights and train_on -------------------------------------------------------------

WEIGHTED = [{"role": "user", "content": "Say A"}, {"role": "assistant", "content": "B", "weight": 0},
            {"role": "user", "content": "No, say A"}, {"role": "assistant", "content": "A"}]


def _trained(tok, ids, labels):
    return tok.decode([t for t, lab in zip(ids, labels) if lab != IGNORE])


def test_weight_zero_turn_carries_no_loss(smol_tokenizer):
    ids, labels = tokenize_conversation(smol_tokenizer, WEIGHTED)
    assert _trained(smol_tokenizer, ids, labels) == "A<|im_end|>"
    unweighted = [{k: v for k, v in m.items() if k != "weight"} for m in WEIGHTED]
    ids2, labels2 = tokenize_conversation(smol_tokenizer, unweighted)
    assert ids2 == ids  # the weight key never reaches the template
    assert _trained(smol_tokenizer, ids2, labels2) == "B<|im_end|>A<|im_end|>"


def test_train_on_modes(smol_tokenizer):
    plain = [{k: v for k, v in m.items() if k != "weight"} for m in WEIGHTED]
    ids, last = tokenize_conversation(smol_tokenizer, plain, train_on="last_assistant")
    assert _trained(smol_tokenizer, ids, last) == "A<|im_end|>"
    ids, every = tokenize_conversation(smol_tokenizer, plain, train_on="all")
    assert all(lab != IGNORE for lab in every)  # prompts, headers and answers
    ids, weighted_all = tokenize_conversation(smol_tokenizer, WEIGHTED, train_on="all")
    text = _trained(smol_tokenizer, ids, weighted_all)
    assert "Say A" in text and "No, say A" in text and "\nB<|im_end|>" not in text


# ---- tools: rendered with their calls, or rejected -------------------------------------------

TOOL_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n# Tools\n{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}<|im_end|>\n"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' %}<|im_start|>assistant\n{{ message.content }}"
    "{%- for call in message.tool_calls or [] %}<tool_call>{\"name\": \"{{ call.function.name }}\", \"arguments\": "
    "{{ call.function.arguments | tojson }}}</tool_call>{% endfor %}<|im_end|>\n"
    "{%- elif message.role == 'tool' %}<|im_start|>user\n<tool_response>{{ message.content }}</tool_response><|im_end|>\n"
    "{%- else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture
def tool_tokenizer(smol_tokenizer):
    import copy

    tok = copy.deepcopy(smol_tokenizer)
    tok.chat_template = TOOL_TEMPLATE.replace("\n{%- ", "\n{%- ").replace("<|im_end|>\n{%-", "<|im_end|>\n{%-")
    return tok


def test_tool_call_row_renders_with_its_calls_under_a_tool_template(tool_tokenizer):
    examples = load_examples(CORPUS / "openai_tools.jsonl", on_error="skip").examples
    samples, rejects, stats = tokenize_examples(tool_tokenizer, examples, 1024)
    assert rejects == [] and stats.tool_rows == 1 and stats.tools_unsupported == 0
    text = tool_tokenizer.decode(samples[0].input_ids)
    assert '"name": "multiply"' in text and '{"a": 17, "b": 23}' in text and "<tool_response>391</tool_response>" in text
    trained = _trained(tool_tokenizer, samples[0].input_ids, samples[0].labels)
    # the model learns to make the call and to answer from its result; the result itself is input
    assert trained.startswith('<tool_call>{"name": "multiply"') and trained.endswith("17 * 23 = 391.<|im_end|>")
    assert "391</tool_response>" not in trained


def test_tool_call_row_is_rejected_not_trained_without_calls(smol_tokenizer):
    examples = load_examples(CORPUS / "openai_tools.jsonl", on_error="skip").examples
    samples, rejects, stats = tokenize_examples(smol_tokenizer, examples, 1024)
    assert [r.line for r in rejects] == [1] and stats.tools_unsupported == 1
    assert "does not render the definition of tool 'multiply'" in rejects[0].reason
    assert [s.line for s in samples] == [3]  # only the row without tools is trained


# ---- system prompts ------------------------------------------------------------------------------

def test_default_system_is_found_shown_and_replaceable(smol_tokenizer):
    default = template_default_system(smol_tokenizer)
    assert default == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    model = system_policy(smol_tokenizer, "model")
    assert model.token_cost == len(smol_tokenizer(default)["input_ids"])
    assert system_policy(smol_tokenizer, "none").token_cost == 0
    rows = load_examples(CORPUS / "dolly.jsonl", on_error="skip").examples[:1]
    ids_model = tokenize_examples(smol_tokenizer, rows, 1024)[0][0].input_ids
    none, _, stats = tokenize_examples(smol_tokenizer, rows, 1024, default_system="none")
    assert stats.system_given == 1 and stats.system["template_default"] == default
    assert len(ids_model) - len(none[0].input_ids) == model.token_cost
    assert "SmolLM" not in smol_tokenizer.decode(none[0].input_ids)
    own, _, _ = tokenize_examples(smol_tokenizer, rows, 1024, default_system="Be brief.")
    assert smol_tokenizer.decode(own[0].input_ids).startswith("<|im_start|>system\nBe brief.<|im_end|>")
    # a row's own system prompt always wins
    kept = load_examples(CORPUS / "sharegpt_system.jsonl").examples[:1]
    mine, _, stats = tokenize_examples(smol_tokenizer, kept, 1024, default_system="Be brief.")
    assert "Answer in one word." in smol_tokenizer.decode(mine[0].input_ids) and stats.system_given == 0


# ---- overlong conversations keep their last answer ------------------------------------------------

def test_truncation_drops_earlier_turns_first(smol_tokenizer):
    from tunesmith.data.example import Example

    long_turn = "word " * 120
    messages = [{"role": "user", "content": long_turn}, {"role": "assistant", "content": long_turn},
                {"role": "user", "content": "Now say OK."}, {"role": "assistant", "content": "OK"}]
    samples, rejects, stats = tokenize_examples(smol_tokenizer, [Example(messages, "x", 1)], 100)
    assert rejects == [] and stats.truncated == 1 and stats.turns_dropped == 2 and stats.cut_end == 0
    sample = samples[0]
    assert len(sample.input_ids) <= 100
    assert _trained(smol_tokenizer, sample.input_ids, sample.labels) == "OK<|im_end|>"
    assert sample.meta["truncation"] == {"turns_dropped": 2, "cut_end": False}
    dropped, rejects, stats = tokenize_examples(smol_tokenizer, [Example(messages, "x", 1)], 100, "drop")
    assert dropped == [] and rejects[0].reason.startswith("overlong: ") and stats.dropped_overlong == 1


# ---- the verbs -------------------------------------------------------------------------------

def test_data_check_reports_each_file_its_format_and_counts(tmp_path):
    from tunesmith.cli import main

    full, quick = tmp_path / "full", tmp_path / "quick"
    assert main(["data", "check", str(CORPUS), "--data.on_error", "skip", "--out", str(full)]) == 0
    assert main(["data", "check", str(CORPUS), "--data.on_error", "skip", "--out", str(quick), "--validate_only"]) == 0
    for out in (full, quick):
        report = json.loads((out / "data_report.json").read_text())
        files = {Path(f["path"]).name: f for f in report["files"]}
        assert set(files) == set(CASES)
        for name, (kind, formats, rejects) in CASES.items():
            if name.endswith(".csv"):  # unmapped here: its question/answer columns are unknown
                formats, rejects = {}, [(2, "unknown_format"), (3, "unknown_format"), (4, "unknown_format")]
            f = files[name]
            assert (f["kind"], f["formats"], f["rejected"]) == (kind, formats, len(rejects)), name
            assert f["kept"] == sum(formats.values()) and f["rows"] == f["kept"] + f["rejected"]
        rejected = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
        where = {(Path(r["source"]).name, r["line"], r["reason"].split(":")[0]) for r in rejected}
        expected = {(n, line, kind) for n, (_, _, rej) in CASES.items() for line, kind in rej if n != "question_answer.csv"}
        expected |= {("question_answer.csv", line, "unknown_format") for line in (2, 3, 4)}
        if out is full:
            expected |= {(n, line, kind) for n, rej in TOKENIZE_REJECTS.items() for line, kind in rej}
        assert where == expected
    full_report = json.loads((full / "data_report.json").read_text())
    assert full_report["kept"] == sum(sum(c[1].values()) for c in CASES.values()) - 2 - 2  # tool rows, csv
    assert full_report["tokens"]["system"]["token_cost"] == 16


def test_empty_data_says_so_without_pointing_at_a_rejects_file(capsys):
    from tunesmith.cli import main

    assert main(["data", "check", str(CORPUS / "empty.jsonl")]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "the training data has no rows (read: " in err and "empty.jsonl" in err and "rejects" not in err


def test_provenance_survives_dedup_select_and_training(tmp_path):
    """A row's id and file:line travel through dedup's kept.jsonl, selection's selected.jsonl and
    into the trained-rows report of a training run."""
    from tunesmith.cli import main

    pool = tmp_path / "pool.jsonl"
    rows = [{"id": f"q{i}", "instruction": f"What is {i} plus {i}?", "output": str(2 * i)} for i in range(12)]
    rows.insert(5, dict(rows[3], id="dup"))  # an exact duplicate of q3 on line 6
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["data", "dedup", str(pool), "--out", str(tmp_path / "dedup"), "--near", "false"]) == 0
    kept = [json.loads(x) for x in (tmp_path / "dedup" / "kept.jsonl").read_text().splitlines()]
    assert len(kept) == 12 and (kept[7]["id"], kept[7]["origin"]) == ("q7", f"{pool}:9")
    assert main(["data", "select", str(tmp_path / "dedup" / "kept.jsonl"), "--method", "random", "--budget", "4",
                 "--out", str(tmp_path / "sel")]) == 0
    selected = [json.loads(x) for x in (tmp_path / "sel" / "selected.jsonl").read_text().splitlines()]
    origin_of = {r["id"]: f"{pool}:{i + 1}" for i, r in enumerate(rows)}
    assert len(selected) == 4 and all(r["origin"] == origin_of[r["id"]] for r in selected)
    run = tmp_path / "run"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data: {{train: [{tmp_path / 'sel' / 'selected.jsonl'}]}}\ntrain: {{max_steps: 1, batch_size: 4}}\n"
                      f"output: {{dir: {run}, merge: false}}\n")
    assert main(["train", str(recipe)]) == 0
    trained = [json.loads(x) for x in (run / "trained.jsonl").read_text().splitlines()]
    assert sorted((t["id"], t["origin"]) for t in trained) == sorted((r["id"], r["origin"]) for r in selected)
    assert json.loads((run / "data_report.json").read_text())["trained_file"] == str(run / "trained.jsonl")


def test_recipe_maps_columns_per_source(tmp_path):
    from tunesmith.stages.recipe import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""data:
  train:
    - {{path: {CORPUS / 'question_answer.csv'}, columns: {{prompt: question, response: answer}}}}
    - {CORPUS / 'dolly.jsonl'}
  on_error: skip
""")
    from tunesmith.stages.data import load

    loaded = load(load_recipe(recipe).data, None)
    assert [(Path(f["path"]).name, f["formats"], f["columns"]) for f in loaded.files] == [
        ("question_answer.csv", {"prompt_completion": 2}, {"prompt": "question", "response": "answer"}),
        ("dolly.jsonl", {"dolly": 2}, {})]
    # the same mapping from the command line
    cli = load_recipe(None, {"data.train": [str(CORPUS / "question_answer.csv")],
                             "data.columns": "prompt=question,response=answer", "data.on_error": "skip"})
    assert cli.data.columns == {"prompt": "question", "response": "answer"}
    assert load(cli.data, None).formats == {"prompt_completion": 2}
