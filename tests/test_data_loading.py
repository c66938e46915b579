"""Data loading: readers, format detection/validation, and the accounting of every row."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tunesmith.data.example import Reject
from tunesmith.data.formats import RowProblem, detect_format, to_messages
from tunesmith.data.load import LoadResult, load_examples, reason_kind, summarize, write_rejects
from tunesmith.data.readers import iter_records, iter_raw_rows, resolve_paths
from tunesmith.errors import DataError, UsageError, UserError


def msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


GOOD_MESSAGES = {"messages": msgs(("user", "hi"), ("assistant", "hello"))}
GOOD_ALPACA = {"instruction": "Add 2 and 2.", "output": "4"}

# Line-by-line content of a JSONL file with one problem of each kind; None = blank line.
MIXED_LINES = [
    json.dumps(GOOD_MESSAGES),  # 1 good
    json.dumps(GOOD_ALPACA),  # 2 good
    '{"messages": [{"role": "user", "content": "hi"}',  # 3 bad JSON (truncated)
    None,  # 4 blank
    json.dumps({"instruction": "Say hi.", "input": ""}),  # 5 missing output
    json.dumps({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}),  # 6 good
    json.dumps({"messages": msgs(("assistant", "a"), ("user", "q"))}),  # 7 role order
    json.dumps({"id": 8, "messages": msgs(("user", "q"), ("assistant", "a"))}),  # 8 good, extra field
    json.dumps({"messages": msgs(("user", "q"), ("assistant", "   "))}),  # 9 empty assistant
    json.dumps({"conversations": [{"from": "narrator", "value": "x"}, {"from": "gpt", "value": "a"}]}),  # 10
    json.dumps([1, 2]),  # 11 not an object
    json.dumps({"text": "plain"}),  # 12 unknown format
    json.dumps({"messages": msgs(("system", "s"), ("user", "q"))}),  # 13 no assistant
]
EXPECTED_REJECTS = [
    (3, "bad_json"),
    (5, "missing_field"),
    (7, "role_order"),
    (9, "empty_assistant"),
    (10, "unknown_role"),
    (11, "not_object"),
    (12, "unknown_format"),
    (13, "no_assistant"),
]


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join("" if line is None else line for line in MIXED_LINES) + "\n")
    return path


# --- loading and accounting ---------------------------------------------------------------


def test_skip_rejects_each_bad_row_with_its_line_and_kind(mixed: Path, tmp_path: Path):
    rejects_file = tmp_path / "out" / "rejects.jsonl"
    result = load_examples(mixed, on_error="skip", rejects_path=rejects_file)

    assert [(r.line, reason_kind(r.reason)) for r in result.rejects] == EXPECTED_REJECTS
    assert [e.line for e in result.examples] == [1, 2, 6, 8]
    assert result.total == 12  # 13 lines minus the blank one
    assert len(result.examples) + len(result.rejects) == result.total
    assert result.format_counts == {"alpaca": 1, "messages": 2, "sharegpt": 1}
    assert all(r.source == str(mixed) for r in result.rejects)

    reasons = {r.line: r.reason for r in result.rejects}
    assert reasons[3] == "bad_json: Expecting ',' delimiter at column 48"
    assert reasons[5] == "missing_field: alpaca field 'output' is missing"
    assert reasons[7] == "role_order: turn 1 is assistant; the conversation must start with a user turn"
    assert reasons[9] == "empty_assistant: turn 2 (assistant) is empty"
    assert reasons[10].startswith("unknown_role: turn 1 has from 'narrator'; expected one of ")
    assert reasons[12].startswith("unknown_format: row has keys ['text']; expected alpaca")

    assert result.examples[3].meta == {"format": "messages", "id": 8, "fields": {"id": 8}}

    written = [json.loads(line) for line in rejects_file.read_text().splitlines()]
    assert [(w["line"], reason_kind(w["reason"])) for w in written] == EXPECTED_REJECTS
    assert written[0]["raw"] == MIXED_LINES[2]  # unparsable line kept as text
    assert written[1]["raw"] == {"instruction": "Say hi.", "input": ""}
    assert written[1]["source"] == str(mixed)


def test_summarize_counts_kinds_including_later_stage_ones(mixed: Path):
    result = load_examples(mixed, on_error="skip")
    # A later stage (tokenization) moves an example to the rejects with its own kind.
    dropped = result.examples.pop()
    result.rejects.append(Reject(dropped.source, dropped.line, "overlong: 5000 tokens > 4096"))
    result.rejects.append(Reject("x", 1, "free text with no kind"))
    summary = summarize(result)
    assert summary == {
        "total": 12,
        "kept": 3,
        "rejected": 10,
        "by_reason": {
            "bad_json": 1,
            "empty_assistant": 1,
            "missing_field": 1,
            "no_assistant": 1,
            "not_object": 1,
            "other": 1,
            "overlong": 1,
            "role_order": 1,
            "unknown_format": 1,
            "unknown_role": 1,
        },
        "formats": {"alpaca": 1, "messages": 2, "sharegpt": 1},
        "files": [{"path": str(mixed), "kind": "jsonl", "rows": 12, "kept": 4, "rejected": 8,
                   "formats": {"alpaca": 1, "messages": 2, "sharegpt": 1}, "columns": {}}],
        "skipped": [],
    }


def test_fail_raises_with_locations_counts_and_hint(mixed: Path, tmp_path: Path):
    rejects_file = tmp_path / "rejects.jsonl"
    with pytest.raises(DataError) as info:
        load_examples(mixed, rejects_path=rejects_file)
    message = str(info.value)
    assert message.startswith("8 of 12 rows cannot be used:\n")
    assert "bad.jsonl:3: bad_json: " in message
    assert f"{mixed}:9: empty_assistant: turn 2 (assistant) is empty" in message
    assert "4 kept, 8 rejected (" in message
    assert "fix the rows or set data.on_error: skip" in message
    assert str(rejects_file) in message
    assert len(rejects_file.read_text().splitlines()) == 8


def test_fail_message_lists_first_20_then_counts_the_rest(tmp_path: Path):
    path = tmp_path / "many.jsonl"
    path.write_text("not json\n" * 25)
    with pytest.raises(DataError) as info:
        load_examples(path)
    message = str(info.value)
    assert f"{path}:20: bad_json" in message
    assert f"{path}:21:" not in message
    assert "  ... and 5 more" in message
    assert "0 kept, 25 rejected (bad_json: 25)." in message


def test_clean_data_writes_empty_rejects_file(tmp_path: Path):
    path = tmp_path / "good.jsonl"
    path.write_text(json.dumps(GOOD_MESSAGES) + "\n")
    rejects_file = tmp_path / "rejects.jsonl"
    rejects_file.write_text("stale\n")
    result = load_examples(path, rejects_path=rejects_file)
    assert (result.total, len(result.examples), result.rejects) == (1, 1, [])
    assert rejects_file.read_text() == ""


def test_forced_format_and_bad_options(tmp_path: Path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(GOOD_MESSAGES) + "\n" + json.dumps(GOOD_ALPACA) + "\n")
    result = load_examples(path, fmt="alpaca", on_error="skip")
    assert [e.line for e in result.examples] == [2]
    assert result.rejects[0].reason == "missing_field: alpaca field 'instruction' is missing"
    with pytest.raises(UsageError, match="unknown data format 'chatml'"):
        load_examples(path, fmt="chatml")
    with pytest.raises(UsageError, match="unknown on_error 'ignore'"):
        load_examples(path, on_error="ignore")


def test_write_rejects_handles_non_json_values(tmp_path: Path):
    out = write_rejects([Reject("a.parquet", 2, "bad_file: x", {"when": b"\x00"})], tmp_path / "r.jsonl")
    assert json.loads(out.read_text()) == {"source": "a.parquet", "line": 2, "reason": "bad_file: x", "raw": {"when": "b'\\x00'"}}


# --- formats -----------------------------------------------------------------------------


def test_detect_format():
    assert detect_format(GOOD_ALPACA) == "alpaca"
    assert detect_format({"instruction": "x"}) == "alpaca"  # so the missing output is named
    assert detect_format({"conversations": [{"from": "human", "value": "q"}]}) == "sharegpt"
    assert detect_format(GOOD_MESSAGES) == "messages"
    # {role, content} turns under "conversations" are messages, whatever the key says.
    assert detect_format({"conversations": msgs(("user", "q"))}) == "messages"
    assert detect_format({"messages": "oops"}) == "messages"
    assert detect_format({"messages": "", "conversations": None, "instruction": "q", "output": "a"}) == "alpaca"
    assert detect_format({"prompt": "q", "completion": "a"}) == "prompt_completion"
    assert detect_format({"question": "q", "answer": "a"}) is None


def test_alpaca_with_input_and_system():
    row = {"instruction": "Translate.", "input": "bonjour", "output": "hello", "system": "Be terse."}
    assert to_messages(row, "alpaca") == msgs(
        ("system", "Be terse."), ("user", "Translate.\n\nbonjour"), ("assistant", "hello")
    )
    # Empty input and empty system add nothing.
    row = {"instruction": "Hi.", "input": "", "output": "Hello.", "system": ""}
    assert to_messages(row, "alpaca") == msgs(("user", "Hi."), ("assistant", "Hello."))


def test_sharegpt_multi_turn_with_system():
    row = {
        "conversations": [
            {"from": "system", "value": "You are kind."},
            {"from": "human", "value": "q1"},
            {"from": "gpt", "value": "a1"},
            {"from": "Human", "value": "q2"},
            {"from": "chatgpt", "value": "a2"},
        ]
    }
    assert to_messages(row, "sharegpt") == msgs(
        ("system", "You are kind."), ("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2")
    )


@pytest.mark.parametrize(
    ("row", "fmt", "kind", "text"),
    [
        ({"messages": msgs(("user", "q"), ("user", "q"), ("assistant", "a"))}, "messages", "role_order",
         "turns 1 and 2 are both user; user and assistant turns must alternate"),
        ({"messages": msgs(("user", "q"), ("assistant", "a"), ("system", "s"))}, "messages", "role_order",
         "turn 3 is a system turn; only the first turn may be system"),
        ({"messages": msgs(("user", "q"), ("system", "s"), ("assistant", "a"))}, "messages", "role_order",
         "turn 2 is a system turn; only the first turn may be system"),
        ({"messages": msgs(("system", "s"), ("assistant", "a"))}, "messages", "role_order",
         "turn 2 is assistant; the conversation must start with a user turn"),
        ({"messages": msgs(("user", "q"), ("assistant", "a"), ("user", "q2"))}, "messages", "role_order",
         "the last turn (3) is user; the conversation must end with an assistant turn"),
        ({"messages": msgs(("user", "q"))}, "messages", "no_assistant",
         "the conversation has no assistant turn to learn from"),
        ({"messages": []}, "messages", "empty_conversation", "the conversation has no turns"),
        ({"messages": msgs(("user", " "), ("assistant", "a"))}, "messages", "empty_content", "turn 1 (user) is empty"),
        ({"messages": msgs(("narrator", "x"))}, "messages", "unknown_role",
         "turn 1 has role 'narrator'; expected one of assistant, developer, function, system, tool, user"),
        ({"messages": msgs(("user", "q"), ("tool", "x"))}, "messages", "role_order",
         "turn 2 is a tool result, but turn 1 makes no tool call"),
        ({"messages": [{"role": "user"}]}, "messages", "missing_field", "turn 1 has no 'content'"),
        ({"messages": [{"role": "user", "content": [1]}]}, "messages", "wrong_type",
         "turn 1: content part 1 must be an object, got a number"),
        ({"messages": [{"role": "user", "content": 7}]}, "messages", "wrong_type",
         "turn 1: content must be a string or a list of text parts, got a number"),
        ({"messages": "hi"}, "messages", "wrong_type", "field 'messages' must be a list of turns, got a string"),
        ({"conversations": ["hi"]}, "sharegpt", "wrong_type", "turn 1 must be an object, got a string"),
        ({"text": "x"}, "sharegpt", "missing_field", "field 'conversations' is missing"),
        ({"instruction": "x", "output": None}, "alpaca", "missing_field", "alpaca field 'output' is null"),
        ({"instruction": "x", "output": 3}, "alpaca", "wrong_type", "field 'output' must be a string, got a number"),
        ({"instruction": "x", "output": ""}, "alpaca", "empty_assistant", "field 'output' (the assistant turn) is empty"),
    ],
)
def test_row_problems(row, fmt, kind, text):
    with pytest.raises(RowProblem) as info:
        to_messages(row, fmt)
    assert (info.value.kind, info.value.text) == (kind, text)
    assert str(info.value) == f"{kind}: {text}"


# --- readers -----------------------------------------------------------------------------


def test_json_array_and_wrapped_object(tmp_path: Path):
    array = tmp_path / "a.json"
    array.write_text(json.dumps([GOOD_ALPACA, "oops", GOOD_MESSAGES], indent=2))
    rows = list(iter_raw_rows(array))
    # line: the physical line where each element starts; the record number travels separately
    assert [(line, err) for line, _, err in rows] == [
        (2, None),
        (6, "not_object: record 2 is a string, expected an object"),
        (7, None),
    ]
    assert [rec.index for rec in iter_records(array)] == [1, 2, 3]
    wrapped = tmp_path / "w.json"
    wrapped.write_text(json.dumps({"version": 1, "data": [GOOD_ALPACA, GOOD_ALPACA]}))
    assert [(line, row) for line, row, _ in iter_raw_rows(wrapped)] == [(1, GOOD_ALPACA), (1, GOOD_ALPACA)]
    assert [rec.index for rec in iter_records(wrapped)] == [1, 2]


def test_json_whole_file_error_points_at_the_failing_line(tmp_path: Path):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c",,}\n]\n')
    rows = list(iter_raw_rows(path))
    assert len(rows) == 1
    line, row, error = rows[0]
    assert (line, row) == (3, None)
    assert error.startswith("bad_json: Expecting property name enclosed in double quotes at column")
    result = load_examples(path, on_error="skip")
    assert (result.total, len(result.rejects)) == (1, 1)


def test_parquet_rows_are_numbered_across_batches(tmp_path: Path, monkeypatch):
    from tunesmith.data import readers

    monkeypatch.setattr(readers, "PARQUET_BATCH_ROWS", 2)
    path = tmp_path / "d.parquet"
    table = pa.table(
        {
            "messages": [msgs(("user", f"q{i}"), ("assistant", f"a{i}" if i != 4 else "")) for i in range(1, 6)],
            "id": [10, 20, 30, 40, 50],
        }
    )
    pq.write_table(table, path, row_group_size=2)
    rows = list(iter_raw_rows(path))
    assert [line for line, _, _ in rows] == [1, 2, 3, 4, 5]
    assert rows[2][1] == {"messages": msgs(("user", "q3"), ("assistant", "a3")), "id": 30}
    result = load_examples(path, on_error="skip")
    assert [(r.line, reason_kind(r.reason)) for r in result.rejects] == [(4, "empty_assistant")]
    assert [e.meta["fields"]["id"] for e in result.examples] == [10, 20, 30, 50]


def test_unreadable_parquet_is_one_reject(tmp_path: Path):
    path = tmp_path / "junk.parquet"
    path.write_bytes(b"not a parquet file")
    [(line, row, error)] = list(iter_raw_rows(path))
    assert (line, row) == (0, None)
    assert error.startswith("bad_file: cannot read Parquet: ")


def test_csv_lines_count_the_header_and_parse_json_turns(tmp_path: Path):
    path = tmp_path / "d.csv"
    turns = json.dumps(msgs(("user", "q"), ("assistant", "a"))).replace('"', '""')
    path.write_text(
        "instruction,input,output,messages\n"  # line 1: header
        "Add.,2 2,4,\n"  # line 2: alpaca
        f',,,"{turns}"\n'  # line 3: messages as a JSON cell
        '"Multi\nline",,"[1, 2]",\n'  # lines 4-5: one record; "[1, 2]" stays text
        "\n"  # line 6: blank
        ",,,[not json\n"  # line 7: bad JSON cell
        "too,few\n"  # line 8
    )
    rows = list(iter_raw_rows(path))
    assert [(line, err) for line, _, err in rows] == [
        (2, None),
        (3, None),
        (4, None),
        (7, "bad_json: column 'messages': Expecting value at character 2"),
        (8, "bad_csv: row has 2 cells but the header has 4"),
    ]
    assert rows[1][1]["messages"] == msgs(("user", "q"), ("assistant", "a"))
    assert rows[2][1]["output"] == "[1, 2]"
    # Mixed formats in one CSV: detection goes by the filled cells, not by the columns.
    result = load_examples(path, on_error="skip")
    assert [(e.line, e.meta["format"]) for e in result.examples] == [(2, "alpaca"), (3, "messages"), (4, "alpaca")]
    assert result.examples[0].messages == msgs(("user", "Add.\n\n2 2"), ("assistant", "4"))
    assert result.examples[1].messages == msgs(("user", "q"), ("assistant", "a"))
    assert result.examples[2].messages == msgs(("user", "Multi\nline"), ("assistant", "[1, 2]"))


def test_csv_bad_utf8_reports_its_own_line(tmp_path: Path):
    path = tmp_path / "enc.csv"
    path.write_bytes(b"instruction,output\n" + b"a,b\n" * 300 + b"bad \xff,x\n" + b"c,d\n")
    rows = list(iter_raw_rows(path))
    assert len(rows) == 301
    assert rows[-1] == (302, None, "bad_encoding: line 302 is not UTF-8; the rest of the file was not read")


def test_jsonl_bom_and_unicode_line_separators(tmp_path: Path):
    path = tmp_path / "u.jsonl"
    row = {"instruction": "a\u2028b", "output": "c"}
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(row, ensure_ascii=False).encode() + b"\n\n" + b"[]\n")
    assert list(iter_raw_rows(path)) == [(1, row, None), (3, None, "not_object: expected a JSON object, got an array")]


# --- path resolution ---------------------------------------------------------------------


def test_resolve_folder_glob_and_lists(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".cache").mkdir()
    for name in ["b.jsonl", "a.csv", "sub/c.parquet", "sub/d.json", "notes.txt", ".cache/e.jsonl"]:
        (tmp_path / name).write_text("")
    assert resolve_paths(str(tmp_path)) == [tmp_path / n for n in ["a.csv", "b.jsonl", "sub/c.parquet", "sub/d.json"]]
    assert resolve_paths(str(tmp_path / "**" / "*.json*")) == [tmp_path / "b.jsonl", tmp_path / "sub/d.json"]
    assert resolve_paths([tmp_path / "b.jsonl", str(tmp_path / "*.jsonl")]) == [tmp_path / "b.jsonl"]


def test_resolve_errors(tmp_path: Path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(UserError, match=f"data path not found: {missing}"):
        resolve_paths(str(missing))
    with pytest.raises(UserError, match=r"no data files match .*\*\.csv.* \(nothing matched\)"):
        resolve_paths(str(tmp_path / "*.csv"))
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(UsageError, match="unsupported file type '.txt'"):
        resolve_paths(str(tmp_path / "notes.txt"))
    with pytest.raises(UserError, match=r"1 paths matched, none a"):
        resolve_paths(str(tmp_path / "*.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no data files .* in folder"):
        resolve_paths(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="no data path given"):
        resolve_paths([])


def test_load_result_invariant_across_files(tmp_path: Path, mixed: Path):
    (tmp_path / "more.json").write_text(json.dumps([GOOD_ALPACA, {"x": 1}]))
    result = load_examples(str(tmp_path), on_error="skip")
    assert isinstance(result, LoadResult)
    assert result.total == 14
    assert (len(result.examples), len(result.rejects)) == (5, 9)
    assert result.rejects[-1].where() == f"{tmp_path / 'more.json'}:record 2 (line 1)"
