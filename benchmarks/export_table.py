"""Accuracy vs size of a run's exports: fp32, int8, int4-RTN, int4-AWQ, GGUF f16 / q8_0 / q4_0.

    .venv/bin/python benchmarks/export_table.py runs/demo --suites tasks,loss,ifeval --record

Runs `tunesmith export RUN --to int8,int4-rtn,int4-awq,gguf-f16,gguf-q8_0,gguf-q4_0 --suites ...`
into RUN/export-bench (every export and the fp32 source scored on the run's held-out items; GGUF
files are read back through transformers' GGUF loader), then prints the table with the deltas to
fp32 and, with --record, appends it to BENCHMARKS.md with the date, machine and command.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from record import append_section

STEPS = "int8,int4-rtn,int4-awq,gguf-f16,gguf-q8_0,gguf-q4_0"


def table(report: dict, suites: list[str]) -> str:
    fp32 = report["steps"][0]["eval"]
    suites = [c for s in suites for c in (s, f"{s}_loose") if c in fp32]  # ifeval: strict and loose
    head = ["export", "size MB"] + [f"{s} (delta)" for s in suites] + ["gen tok/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for step in report["steps"]:
        cells = [step["step"], f"{step['bytes'] / 1e6:.1f}"]
        for s in suites:
            v, ref = step["eval"][s], fp32[s]
            cells.append(f"{v:.4f} ({v - ref:+.4f})" if s == "loss" else f"{100 * v:.1f}% ({100 * (v - ref):+.1f} pp)")
        cells.append(str(step["eval"].get("tokens_per_s", "-")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a run directory (its model/, config.yaml and held-out items)")
    ap.add_argument("--suites", default="tasks,loss,ifeval")
    ap.add_argument("--ifeval-items", type=int, default=100)
    ap.add_argument("--steps", default=STEPS)
    ap.add_argument("--record", action="store_true", help="append the table to BENCHMARKS.md")
    args = ap.parse_args()
    out = Path(args.run) / "export-bench"
    argv = ["export", args.run, "--out", str(out), "--to", args.steps, "--suites", args.suites,
            "--ifeval-items", str(args.ifeval_items)]
    from tunesmith.cli import main as cli

    t0 = time.perf_counter()
    if cli(argv) != 0:
        sys.exit(1)
    report = json.loads((out / "export_report.json").read_text())
    text = table(report, args.suites.split(","))
    print(text)
    if args.record:
        append_section(f"Exports of {args.run}: accuracy vs size",
                       f"`python benchmarks/export_table.py {args.run} --suites {args.suites} --record` "
                       f"(`tunesmith {' '.join(argv)}`, {time.perf_counter() - t0:.0f} s)", text)


if __name__ == "__main__":
    main()
