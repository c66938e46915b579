"""Readers: compressed files, JSONL saved as .json, datasets folders, folder scans, hostile rows.

The fixtures under tests/data/readers/ were written by the real `datasets` library (5.2.0):

    rows = [{"instruction": f"Add {i} and {i}.", "output": str(2 * i)} for i in range(1, 6)]
    rows[3]["output"] = ""
    Dataset.from_list(rows).save_to_disk("saved_dataset", num_shards=2)  # rows 1-3, 4-5
    Dataset.from_list(rows).to_json("to_json.json")                       # JSON Lines, .json name
    DatasetDict({"train": <3 rows: messages q1/a1..q3/a3>, "test": <1 row: tq/ta>}).save_to_disk("saved_dict")
"""

from __future__ import annotations

import gzip
import json
import random
import shutil
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tunesmith.data.load import load_examples, reason_kind
from tunesmith.data.readers import RawRow, SourceFile, iter_records, resolve_paths, scan
from tunesmith.errors import UsageError, UserError

FIXTURES = Path(__file__).parent / "data" / "readers"
ALPACA = [{"instruction": f"Add {i} and {i}.", "output": str(2 * i)} for i in range(1, 6)]
ALPACA[3]["output"] = ""


def turns(q: str, a: str) -> dict:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def records(path, **kw) -> list[RawRow]:
    return list(iter_records(path, **kw))


def jsonl_bytes(rows) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


# --- gzip -------------------------------------------------------------------------------------


def test_gzip_variants_read_like_their_plain_forms(tmp_path: Path):
    plain = b'{"instruction": "a", "output": "b"}\n\n{"instruction": "c", "output": "d"}\n'
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(plain))
    (tmp_path / "b.json.gz").write_bytes(gzip.compress(b'[\n  {"x": 1},\n  {"y": 2}\n]\n'))
    (tmp_path / "c.csv.gz").write_bytes(gzip.compress(b"instruction,output\nq1,a1\nq2,a2\n"))
    (tmp_path / "d.txt.gz").write_bytes(gzip.compress(b"notes"))

    sources, skipped = scan(tmp_path)
    assert [(s.path.name, s.kind) for s in sources] == [
        ("a.jsonl.gz", "jsonl.gz"), ("b.json.gz", "json array (gzip)"), ("c.csv.gz", "csv.gz")]
    assert skipped == [(tmp_path / "d.txt.gz", "not a data file (.txt.gz)")]

    rows = records(tmp_path / "a.jsonl.gz")
    assert [(r.line, r.offset, r.row) for r in rows] == [
        (1, 0, {"instruction": "a", "output": "b"}), (3, 37, {"instruction": "c", "output": "d"})]
    rows = records(tmp_path / "b.json.gz")
    assert [(r.line, r.index, r.offset, r.row) for r in rows] == [(2, 1, 4, {"x": 1}), (3, 2, 16, {"y": 2})]
    rows = records(tmp_path / "c.csv.gz")
    assert [(r.line, r.offset, r.row) for r in rows] == [
        (2, 19, {"instruction": "q1", "output": "a1"}), (3, 25, {"instruction": "q2", "output": "a2"})]


def test_cut_gzip_ends_with_one_reject_counting_the_rows_before(tmp_path: Path):
    rng = random.Random(0)  # incompressible text, so half the file holds about half the rows
    rows = [{"instruction": "%032x" % rng.getrandbits(128), "output": "ok"} for _ in range(2000)]
    packed = gzip.compress(jsonl_bytes(rows))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(packed[: len(packed) // 2])

    got = records(path)
    good, last = got[:-1], got[-1]
    assert 500 < len(good) < 1500
    assert [r.row for r in good] == rows[: len(good)]
    assert [r.line for r in good] == list(range(1, len(good) + 1))
    assert last.line == len(good) + 1 and last.row is None
    assert last.error == (
        "bad_gzip: cut.jsonl.gz is corrupt or cut short (Compressed file ended before the end-of-stream "
        f"marker was reached); {len(good):,} rows were read before it and the rest of the file was not read")


def test_file_that_is_not_gzip_is_one_reject(tmp_path: Path):
    path = tmp_path / "fake.json.gz"
    path.write_bytes(b'[{"a": 1}]')
    [rec] = records(path)
    assert (rec.line, rec.row) == (1, None)
    assert rec.error.startswith("bad_gzip: fake.json.gz is corrupt or cut short (Not a gzipped file")
    assert rec.error.endswith("; 0 rows were read before it and the rest of the file was not read")


# --- JSON Lines in a .json file, JSON documents -----------------------------------------------


def test_datasets_to_json_output_is_read_as_jsonl():
    path = FIXTURES / "to_json.json"
    [source], _ = scan(path)
    assert source.kind == "jsonl (in a .json file)"
    rows = records(path)
    assert [(r.line, r.offset, r.index) for r in rows] == [(1, 0, None), (2, 44, None), (3, 88, None),
                                                            (4, 132, None), (5, 175, None)]
    assert [r.row for r in rows] == ALPACA


def test_jsonl_in_json_with_a_broken_first_line_keeps_the_rest(tmp_path: Path):
    path = tmp_path / "d.json"
    path.write_text('{"instruction": "a",, "output": "b"}\n{"instruction": "c", "output": "d"}\n\n[1]\n')
    rows = records(path)
    assert [(r.line, r.error) for r in rows] == [
        (1, "bad_json: Expecting property name enclosed in double quotes at column 21"),
        (2, None),
        (4, "not_object: expected a JSON object, got an array"),
    ]
    assert rows[0].text == '{"instruction": "a",, "output": "b"}'


@pytest.mark.parametrize(("text", "shape"), [
    ('{"instruction": "a", "output": "b"}\n', "json object"),
    ('{\n  "data": [\n    {"instruction": "a", "output": "b"}\n  ]\n}\n', "json object"),
    ('{"data": [\n  {"instruction": "a", "output": "b"},\n  {"x": 1}\n]}\n', "json object"),
    ('  [{"a": 1}]', "json array"),
    ("", "json (empty file)"),
])
def test_json_shapes_are_told_apart(tmp_path: Path, text: str, shape: str):
    path = tmp_path / "d.json"
    path.write_text(text)
    assert scan(path)[0][0].kind == shape.replace("(empty file)", "empty")


def test_json_array_records_carry_their_start_line_index_and_offset(tmp_path: Path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([ALPACA[0], "oops", {"é": "ü"}, ALPACA[1]], indent=2, ensure_ascii=False))
    rows = records(path)
    assert [(r.line, r.index, r.offset) for r in rows] == [(2, 1, 4), (6, 2, 66), (7, 3, 76), (10, 4, 100)]
    assert rows[1].error == "not_object: record 2 is a string, expected an object"
    assert [r.row for r in rows if r.row] == [ALPACA[0], {"é": "ü"}, ALPACA[1]]
    data = path.read_bytes()
    assert data[76:].startswith('{\n    "é"'.encode())
    assert data[100:].startswith(b'{\n    "instruction": "Add 2 and 2."')

    wrapped = tmp_path / "w.json"
    wrapped.write_text('\ufeff{"version": 1,\n "data": [\n  {"a": 1},\n\n  {"b": 2}]}')
    rows = records(wrapped)
    assert [(r.line, r.index, r.offset, r.row) for r in rows] == [(3, 1, 31, {"a": 1}), (5, 2, 44, {"b": 2})]
    assert wrapped.read_bytes()[31:39] + wrapped.read_bytes()[44:52] == b'{"a": 1}{"b": 2}'


def test_broken_json_document_is_one_reject_at_its_line(tmp_path: Path):
    path = tmp_path / "b.json"
    path.write_text('[\n  {"a": 1},\n  {"a": 2}\n]\n{"extra": 1}\n')
    [rec] = records(path)
    assert (rec.line, rec.offset) == (5, 27)
    assert rec.error == ("bad_json: Extra data at column 1 (the whole file is unreadable; "
                         "the file holds more than one JSON value)")


# --- datasets save_to_disk --------------------------------------------------------------------


def test_save_to_disk_dataset_rows_are_numbered_across_its_arrow_files():
    folder = FIXTURES / "saved_dataset"
    [source], skipped = scan(folder)
    assert source == SourceFile(folder, "arrow (datasets save_to_disk)",
                                (folder / "data-00000-of-00002.arrow", folder / "data-00001-of-00002.arrow"))
    assert skipped == []
    rows = records(folder)
    assert [(r.line, r.row, r.error, r.offset) for r in rows] == [(i, row, None, None) for i, row in enumerate(ALPACA, 1)]
    # Through the loader: the empty answer in row 4 (the second file's first row) is found there.
    result = load_examples(folder, on_error="skip")
    assert [(r.source, r.line, reason_kind(r.reason)) for r in result.rejects] == [(str(folder), 4, "empty_assistant")]
    assert len(result.examples) == 4


def held_out(folder: Path, split: str) -> str:
    return f"split {split!r} of a DatasetDict (only 'train' is read; name {folder / split} to read it)"


def no_train(folder: Path, split: str) -> str:
    return f"split {split!r} of a DatasetDict with no 'train' split (nothing is read; name {folder / split} to read this split)"


def test_dataset_dict_reads_only_its_train_split_and_lists_the_others():
    folder = FIXTURES / "saved_dict"
    sources, skipped = scan(folder)
    assert [(s.path, s.kind, s.parts) for s in sources] == [
        (folder / "train", "arrow (datasets save_to_disk, split train)", (folder / "train/data-00000-of-00001.arrow",)),
    ]
    # The test split would leak eval data into training: it is skipped, saying how to read it.
    assert skipped == [(folder / "test", held_out(folder, "test"))]
    assert resolve_paths(folder) == [folder / "train"]
    # Named as a whole, a DatasetDict reads its train split only.
    assert [(r.line, r.row) for r in records(folder)] == [(i, turns(f"q{i}", f"a{i}")) for i in (1, 2, 3)]
    # Through the loader: 3 examples, the test split in the skipped list.
    result = load_examples(folder, on_error="fail")
    assert (len(result.examples), result.total, len(result.rejects)) == (3, 3, 0)
    assert result.skipped == [{"path": str(folder / "test"), "reason": held_out(folder, "test")}]


def test_a_split_folder_named_by_its_path_is_read():
    folder = FIXTURES / "saved_dict"
    [source], skipped = scan(folder / "test")
    assert (source.path, source.kind, skipped) == (folder / "test", "arrow (datasets save_to_disk, split test)", [])
    assert [(r.line, r.row) for r in records(folder / "test")] == [(1, turns("tq", "ta"))]
    assert scan(folder / "train")[0][0].kind == "arrow (datasets save_to_disk, split train)"
    # Both named: both read, in the order given.
    assert resolve_paths([folder / "test", folder]) == [folder / "test", folder / "train"]


def test_dataset_dict_in_a_folder_or_a_glob_reads_train_only(tmp_path: Path):
    shutil.copytree(FIXTURES / "saved_dict", tmp_path / "dd")
    (tmp_path / "a.jsonl").write_text("{}\n")
    dd = tmp_path / "dd"
    sources, skipped = scan(tmp_path)
    assert [s.path for s in sources] == [tmp_path / "a.jsonl", dd / "train"]
    assert skipped == [(dd / "test", held_out(dd, "test"))]
    # A glob matching the split folders is not a name for them: the same rule holds.
    for pattern in (dd / "*", tmp_path / "**", tmp_path / "d*"):
        sources, skipped = scan(str(pattern))
        assert [s.path for s in sources if s.path.name != "a.jsonl"] == [dd / "train"], pattern
        assert [(p, why) for p, why in skipped if p.name == "test"] == [(dd / "test", held_out(dd, "test"))], pattern
    with pytest.raises(UserError, match="no data files match") as info:
        scan(str(dd / "te*"))  # only a split's own path reads it
    assert held_out(dd, "test") in str(info.value)


def test_dataset_dict_without_a_train_split_reads_nothing_and_says_to_name_one(tmp_path: Path):
    dd = tmp_path / "data" / "dd"
    shutil.copytree(FIXTURES / "saved_dict", dd)
    (dd / "train").rename(dd / "validation")
    (dd / "dataset_dict.json").write_text(json.dumps({"splits": ["validation", "test"]}))
    (tmp_path / "data" / "a.jsonl").write_text("{}\n")

    sources, skipped = scan(tmp_path / "data")
    assert [s.path for s in sources] == [tmp_path / "data" / "a.jsonl"]
    assert skipped == [(dd / "validation", no_train(dd, "validation")), (dd / "test", no_train(dd, "test"))]
    with pytest.raises(UserError, match="no 'train' split; name a split folder to read it") as info:
        scan(dd)
    assert no_train(dd, "validation") in str(info.value) and no_train(dd, "test") in str(info.value)
    with pytest.raises(UserError, match="no data files match"):
        scan(str(dd / "*"))
    with pytest.raises(UsageError, match=f"DatasetDict with no 'train' split .*e.g. {dd / 'validation'}"):
        records(dd)
    # Naming a split reads it.
    assert [r.row for r in records(dd / "test")] == [turns("tq", "ta")]
    assert [s.path for s in scan(dd / "validation")[0]] == [dd / "validation"]


def test_broken_datasets_folder_is_one_reject(tmp_path: Path):
    folder = tmp_path / "ds"
    shutil.copytree(FIXTURES / "saved_dataset", folder)
    (folder / "data-00001-of-00002.arrow").write_bytes(b"garbage")
    rows = records(folder)
    assert [r.line for r in rows] == [1, 2, 3, 4]
    assert rows[-1].error.startswith(f"bad_file: cannot read Arrow stream {folder / 'data-00001-of-00002.arrow'}: ")
    (folder / "data-00001-of-00002.arrow").unlink()
    assert records(folder)[-1].error == "bad_file: data-00001-of-00002.arrow, listed in state.json, is missing"


# --- folder scans -----------------------------------------------------------------------------


def test_folder_scan_lists_what_it_skipped_and_why(tmp_path: Path):
    shutil.copytree(FIXTURES / "saved_dataset", tmp_path / "hub")
    (tmp_path / "hub" / "README.md").write_text("card")
    (tmp_path / "hub" / "cache-1234.arrow").write_bytes(b"")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.jsonl").write_text("{}\n")
    (tmp_path / "sub").mkdir()
    for name, text in [("a.jsonl", "{}\n"), ("README.md", "#"), (".hidden.jsonl", "{}\n"), ("loose.arrow", ""),
                       ("sub/b.json", "[]"), ("sub/notes.txt", ""), ("sub/Makefile", "")]:
        (tmp_path / name).write_text(text)

    sources, skipped = scan(tmp_path)
    assert [(s.path.relative_to(tmp_path).as_posix(), s.kind) for s in sources] == [
        ("a.jsonl", "jsonl"), ("hub", "arrow (datasets save_to_disk)"), ("sub/b.json", "json array")]
    assert [(p.relative_to(tmp_path).as_posix(), why) for p, why in skipped] == [
        (".git", "hidden folder, not scanned"),
        (".hidden.jsonl", "hidden file"),
        ("README.md", "not a data file (.md)"),
        ("hub/README.md", "not a data file (.md)"),
        ("hub/cache-1234.arrow", "not listed in state.json's _data_files"),
        ("loose.arrow", "an .arrow file outside a datasets save_to_disk folder (no state.json beside it)"),
        ("sub/Makefile", "not a data file (no extension)"),
        ("sub/notes.txt", "not a data file (.txt)"),
    ]
    assert resolve_paths(tmp_path) == [s.path for s in sources]


def test_glob_over_a_datasets_folder_skips_its_inner_files(tmp_path: Path):
    shutil.copytree(FIXTURES / "saved_dataset", tmp_path / "hub")
    (tmp_path / "a.json").write_text("[]")
    sources, skipped = scan(str(tmp_path / "*.json"))
    assert [s.path for s in sources] == [tmp_path / "a.json"]
    sources, skipped = scan(str(tmp_path / "**" / "*.json"))
    assert [s.path for s in sources] == [tmp_path / "a.json"]
    reason = f"part of the datasets save_to_disk folder {tmp_path / 'hub'}; name the folder to read it"
    assert skipped == [(tmp_path / "hub" / "dataset_info.json", reason), (tmp_path / "hub" / "state.json", reason)]
    # A glob that names the folder reads it whole.
    assert [s.path for s in scan(str(tmp_path / "h*"))[0]] == [tmp_path / "hub"]
    with pytest.raises(UsageError, match=f"one file of a datasets save_to_disk folder; name the folder {tmp_path / 'hub'}"):
        scan(tmp_path / "hub" / "data-00000-of-00002.arrow")


# --- bounded cost on hostile rows ---------------------------------------------------------------


def test_huge_jsonl_line_is_rejected_unparsed_in_bounded_memory(tmp_path: Path):
    size = 5 * 2**20
    head, tail = '{"instruction": "', '", "output": "y"}'
    first = '{"instruction": "a", "output": "b"}'
    path = tmp_path / "big.jsonl"
    with open(path, "w") as f:
        f.write(first + "\n" + head + "x" * (size - len(head) - len(tail)) + tail + "\n\n")
        f.write('{"instruction": "c", "output": "d"}\n')

    tracemalloc.start()
    try:
        rows = records(path, max_row_bytes=2**20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4.5e6  # under the 5 MiB line: it was never held whole (nor decoded, nor parsed)
    assert [(r.line, r.offset, r.row) for r in rows] == [
        (1, 0, {"instruction": "a", "output": "b"}), (2, 36, None), (4, 36 + size + 2, {"instruction": "c", "output": "d"})]
    bad = rows[1]
    assert bad.error == ("too_large: line is 5,242,880 bytes, over data.max_row_bytes=1,048,576; "
                         "raise the limit or remove the row")
    assert bad.text == head + "x" * (1000 - len(head)) + "…[truncated, 5242880 bytes]"
    # No limit: the same line is read.
    assert [r.error for r in records(path, max_row_bytes=0)] == [None, None, None]


def test_line_just_over_the_limit_and_exactly_at_it(tmp_path: Path):
    row = '{"instruction": "abc", "output": "d"}'  # 37 bytes
    path = tmp_path / "d.jsonl"
    path.write_text(row + "\r\n" + row + "\n")
    assert [r.error for r in records(path, max_row_bytes=37)] == [None, None]
    rows = records(path, max_row_bytes=36)
    assert [(r.line, r.offset, r.error) for r in rows] == [
        (1, 0, "too_large: line is 37 bytes, over data.max_row_bytes=36; raise the limit or remove the row"),
        (2, 39, "too_large: line is 37 bytes, over data.max_row_bytes=36; raise the limit or remove the row"),
    ]
    assert rows[0].text == row + "…[truncated, 37 bytes]"
    with pytest.raises(UsageError, match="max_row_bytes must be 0"):
        records(path, max_row_bytes=-1)


def test_large_rows_in_table_and_array_formats_are_rejected_after_reading(tmp_path: Path):
    rows = records(FIXTURES / "saved_dataset", max_row_bytes=13)  # "Add 5 and 5." + "10" = 14 bytes
    assert [(r.line, r.error) for r in rows if r.error] == [
        (5, "too_large: row is 14 bytes, over data.max_row_bytes=13; raise the limit or remove the row")]
    assert rows[4].text == '{"instruction": "Add 5 and 5.", "output": "10"}…[truncated, 14 bytes]'

    big = "é" * 3000  # 6,000 bytes
    pq.write_table(pa.table({"instruction": ["a", big], "output": ["b", "c"]}), tmp_path / "d.parquet")
    rows = records(tmp_path / "d.parquet", max_row_bytes=5000)
    assert [(r.line, r.error is None) for r in rows] == [(1, True), (2, False)]
    assert rows[1].error.startswith("too_large: row is 6,001 bytes, over data.max_row_bytes=5,000;")
    assert len(rows[1].text) < 1100 and rows[1].text.endswith("…[truncated, 6001 bytes]")

    (tmp_path / "d.csv").write_text(f"instruction,output\na,b\n\"{big}\",c\n")
    rows = records(tmp_path / "d.csv", max_row_bytes=5000)
    assert [(r.line, r.offset, r.error) for r in rows][1] == (
        3, 23, "too_large: row is 6,001 bytes, over data.max_row_bytes=5,000; raise the limit or remove the row")

    (tmp_path / "d.json").write_text(json.dumps([{"a": 1}, {"instruction": big}], ensure_ascii=False))
    rows = records(tmp_path / "d.json", max_row_bytes=5000)
    assert [(r.line, r.index, r.offset, r.error) for r in rows][1] == (
        1, 2, 11, "too_large: record 2 is 6,019 bytes, over data.max_row_bytes=5,000; raise the limit or remove the row")
    assert rows[1].text == ('{"instruction": "' + big)[:1000] + "…[truncated, 6019 bytes]"


def test_unparsable_long_line_keeps_a_bounded_excerpt(tmp_path: Path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"instruction": "' + "z" * 5000 + "\n")
    [rec] = records(path)
    assert rec.error == "bad_json: Unterminated string starting at column 17"
    assert rec.text == ('{"instruction": "' + "z" * 5000)[:1000] + "…[truncated, 5017 bytes]"


# --- encodings and empty files ------------------------------------------------------------------


@pytest.mark.parametrize(("name", "encoding", "said", "iconv"), [
    ("d.jsonl", "utf-16", "UTF-16 (byte-order mark)", "iconv -f UTF-16 -t UTF-8 d.jsonl > d.utf8.jsonl"),
    ("d.json", "utf-16", "UTF-16 (byte-order mark)", "iconv -f UTF-16 -t UTF-8 d.json > d.utf8.json"),
    ("d.csv", "utf-32", "UTF-32 (byte-order mark)", "iconv -f UTF-32 -t UTF-8 d.csv > d.utf8.csv"),
    ("d.jsonl", "utf-16-le", "UTF-16LE (no byte-order mark; judged by its zero bytes)",
     "iconv -f UTF-16LE -t UTF-8 d.jsonl > d.utf8.jsonl"),
    ("d.jsonl.gz", "utf-16", "UTF-16 (byte-order mark)", "gunzip -c d.jsonl.gz | iconv -f UTF-16 -t UTF-8 > d.utf8.jsonl"),
])
def test_utf16_and_utf32_files_are_one_clear_reject(tmp_path: Path, name, encoding, said, iconv):
    text = "instruction,output\na,b\n" if name.endswith(".csv") else '{"instruction": "a", "output": "b"}\n' * 3
    data = text.encode(encoding)
    (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    assert records(tmp_path / name) == [
        RawRow(1, None, f"bad_encoding: file is {said}; save it as UTF-8, e.g. {iconv}", None, 0)]


def test_utf8_bom_is_accepted_and_empty_files_have_no_rows(tmp_path: Path):
    (tmp_path / "b.json").write_bytes(b"\xef\xbb\xbf[\n" + json.dumps(ALPACA[0]).encode() + b"]")
    assert [(r.line, r.offset, r.row) for r in records(tmp_path / "b.json")] == [(2, 5, ALPACA[0])]
    (tmp_path / "b.csv").write_bytes(b"\xef\xbb\xbfinstruction,output\nq,a\n")
    assert [(r.line, r.row) for r in records(tmp_path / "b.csv")] == [(2, {"instruction": "q", "output": "a"})]
    for name, data in [("e.jsonl", b""), ("e.json", b" \n"), ("e.csv", b""), ("e.jsonl.gz", gzip.compress(b"")),
                       ("a.json", b"[ ]"), ("w.json", b'{"data": []}'), ("h.csv", b"instruction,output\n")]:
        (tmp_path / name).write_bytes(data)
        assert records(tmp_path / name) == []


def test_unreadable_dataset_dict_is_one_reject_and_a_plain_folder_is_refused(tmp_path: Path):
    folder = tmp_path / "dd"
    shutil.copytree(FIXTURES / "saved_dict", folder)
    (folder / "dataset_dict.json").write_text("{oops")
    [source], _ = scan(folder)
    assert source.kind == "arrow (datasets save_to_disk DatasetDict, unreadable dataset_dict.json)"
    assert records(folder) == [RawRow(0, None, f"bad_file: {folder / 'dataset_dict.json'} names no split folder "
                                               "with data (it needs a 'splits' list)")]
    with pytest.raises(UsageError, match="is a folder but not a datasets save_to_disk folder"):
        records(tmp_path)
