"""A 100,000-row data file with 1% of its rows corrupted at random (truncated lines, invalid UTF-8, wrong types,
bit flips): every bad row is reported with its line, and kept + rejected = rows."""

import json
import random

import pytest

from tunesmith.stages.data import DataConfig, validate_data

ROWS, SHARE = 100_000, 0.01


def _corrupt(line: bytes, kind: str, rng: random.Random) -> bytes:
    if kind == "truncated":  # cut anywhere before the closing brace (never to an empty line)
        return line[:rng.randint(1, len(line) - 2)]
    if kind == "utf8":  # a byte that is never valid UTF-8, inside a value
        at = line.index(b'"output": "') + 11
        return line[:at] + bytes([rng.choice([0xff, 0xfe, 0xc0, 0x80])]) + line[at:]
    if kind == "type":
        row = json.loads(line)
        row[rng.choice(["instruction", "output"])] = rng.choice([7, 2.5, None, ["x"], {"a": 1}, True])
        return json.dumps(row).encode()
    # a bit flip in the row's structure: the opening brace or the quote of its first key
    out = bytearray(line)
    at = rng.choice([0, 1])
    out[at] ^= 1 << rng.randrange(8)
    return bytes(out)


@pytest.mark.slow
def test_every_corrupted_row_is_reported_with_its_line(tmp_path):
    rng = random.Random(0)
    lines = [json.dumps({"instruction": f"Write {i} in words, then add {rng.randint(1, 99)}.",
                         "output": f"The answer for row {i} is {rng.random():.6f}."}).encode() for i in range(ROWS)]
    bad = sorted(rng.sample(range(ROWS), int(ROWS * SHARE)))
    kinds = ["truncated", "utf8", "type", "bitflip"]
    for n, i in enumerate(bad):
        lines[i] = _corrupt(lines[i], kinds[n % 4], rng)
    data = tmp_path / "rows.jsonl"
    data.write_bytes(b"\n".join(lines) + b"\n")
    report = validate_data(DataConfig(train=[str(data)], on_error="skip"), tmp_path / "rejects.jsonl")
    rejects = [json.loads(r) for r in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert sorted(r["line"] for r in rejects) == [i + 1 for i in bad]  # 1-based lines, every one, nothing else
    assert report["kept"] + report["rejected"] == report["total"] == ROWS
    assert report["rejected"] == len(bad)
    assert set(report["by_reason"]) <= {"bad_json", "bad_encoding", "wrong_type", "missing_field"}  # null: missing
