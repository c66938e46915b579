"""Validating a 1 GB JSONL with one 200 MB line and 1,000,000 normal rows, in bounded memory.

Runs, in one invocation and on the same file:
  - `tunesmith data check FILE --validate_only` (read + validate every row, rejects with excerpts),
  - `tunesmith data check FILE` on the first 20,000 rows (the full check: tokenize and verify masks),
  - a baseline: a bare Python loop of `json.loads` over the lines (what any reader must at least do),
each in its own process under /usr/bin/time so peak RSS is the process's own.

    flock -x /tmp/tunesmith-cpu.lock .venv/bin/python benchmarks/big_data_check.py [--record]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import append_section  # noqa: E402

ROWS = 1_000_000
HUGE_BYTES = 200 * 2**20
BIN = Path(sys.executable).parent
BASELINE = """
import json, sys
n = bad = 0
with open(sys.argv[1], "rb") as f:
    for line in f:
        try:
            json.loads(line)
        except ValueError:
            bad += 1
        n += 1
print(n, bad)
"""


def make_file(path: Path, rows: int) -> None:
    """`rows` alpaca/messages rows of mixed length, one 200 MB line in the middle (line rows // 2),
    and a broken row every 1,000 lines."""
    rng = random.Random(0)
    words = "the a model data token train answer question list number sort reverse count word city".split()
    with open(path, "w") as f:
        for i in range(1, rows + 1):
            if i == rows // 2:
                f.write('{"instruction": "' + "x" * HUGE_BYTES + '", "output": "y"}\n')
                continue
            text = " ".join(rng.choice(words) for _ in range(rng.randint(24, 160)))
            if i % 1000 == 0:
                f.write('{"instruction": "broken row"\n')
            elif i % 2:
                f.write(json.dumps({"instruction": f"Q{i}: {text}", "output": text[:200]}) + "\n")
            else:
                f.write(json.dumps({"messages": [{"role": "user", "content": f"Q{i}: {text}"},
                                                 {"role": "assistant", "content": text[:200]}]}) + "\n")


def timed(cmd: list[str]) -> tuple[float, float, str]:
    """(seconds, peak RSS in GiB, output) of a command run under /usr/bin/time -v."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    return seconds, rss_kb / 2**20, proc.stdout + proc.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "tunesmith-bigdata"))
    parser.add_argument("--record", action="store_true", help="append the table to BENCHMARKS.md")
    args = parser.parse_args()
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"big-{args.rows}.jsonl"
    if not data.exists():
        print(f"writing {data} ...", flush=True)
        make_file(data, args.rows)
    size_gb = data.stat().st_size / 2**30
    head = work / "head-20000.jsonl"
    with open(data, "rb") as src, open(head, "wb") as dst:
        for i, line in enumerate(src):
            if i >= 20_000:
                break
            dst.write(line)

    results = []
    out = work / "check-validate"
    s, rss, log = timed([str(BIN / "tunesmith"), "data", "check", str(data), "--validate_only", "--data.on_error",
                         "skip", "--out", str(out), "--overwrite"])
    report = json.loads((out / "data_report.json").read_text())
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    huge = next(r for r in rejects if r["line"] == args.rows // 2)
    assert huge["reason"].startswith("too_large") and len(json.dumps(huge)) < 4000, huge
    results.append(("tunesmith data check --validate_only", report["total"], report["rejected"], s, rss,
                    report["seconds"]))
    print(results[-1], flush=True)

    out_full = work / "check-full"
    s_full, rss_full, _ = timed([str(BIN / "tunesmith"), "data", "check", str(head), "--data.on_error", "skip",
                                 "--out", str(out_full), "--overwrite"])
    full = json.loads((out_full / "data_report.json").read_text())
    results.append(("tunesmith data check (tokenize + masks), first 20,000 rows", full["total"], full["rejected"],
                    s_full, rss_full, None))
    print(results[-1], flush=True)

    script = work / "baseline.py"
    script.write_text(BASELINE)
    try:
        s_base, rss_base, _ = timed([sys.executable, str(script), str(data)])
        results.append(("baseline: bare json.loads loop (no validation)", args.rows, 0, s_base, rss_base, None))
    except SystemExit as exc:
        results.append(("baseline: bare json.loads loop (no validation)", args.rows, 0, float("nan"), float("nan"), None))
        print(exc)
    print(results[-1], flush=True)

    lines = [f"File: {args.rows:,} rows, {size_gb:.2f} GiB, one {HUGE_BYTES // 2**20} MB line at line {args.rows // 2:,} "
             f"and a broken row every 1,000 lines.", "",
             "| what | rows | rejected | process seconds | rows/s (process) | rows/s (reading + validation only) "
             "| peak RSS (GiB) |", "|---|---|---|---|---|---|---|"]
    for name, rows, rejected, secs, peak, inner in results:
        inner_rate = f"{rows / inner:,.0f}" if inner else "-"
        lines.append(f"| {name} | {rows:,} | {rejected:,} | {secs:.1f} | {rows / secs:,.0f} | {inner_rate} | {peak:.2f} |")
    lines.append("")
    lines.append("Process seconds include starting Python and importing tunesmith (torch, transformers: about 11 s "
                 "here); the validation-only rate is the data_report.json's own timing of reading and validating.")
    lines.append("")
    lines.append(f"The 200 MB line is rejected as `{huge['reason'][:90]}...`; its rejects.jsonl entry is "
                 f"{len(json.dumps(huge)):,} bytes (an excerpt and the byte offset {huge.get('offset'):,}).")
    table = "\n".join(lines)
    print(table)
    if args.record:
        append_section("Validating a 1 GB JSONL in bounded memory", "`flock -x /tmp/tunesmith-cpu.lock .venv/bin/python "
                       "benchmarks/big_data_check.py --record`", table)


if __name__ == "__main__":
    main()
