"""Base vs RAFT-SFT vs DPO on the bundled model: the table of `recipes/instruction-following.yaml`'s run.

    flock -x /tmp/tunesmith-cpu.lock /usr/bin/time -v .venv/bin/tunesmith run recipes/instruction-following.yaml
    .venv/bin/python benchmarks/instruction_following.py [--run runs/instruction-following] [--record]

Reads the finished run directory (nothing is run again): the comparison of base, the SFT model and the
DPO phase on the same items (RUN/summary.json, computed by report.compare from RUN/eval/before,
RUN/eval/after and RUN/phases/dpo/eval/after), the synth reports of both phases (prompts, acceptance,
pairs, speed) and each stage's time, and appends them to BENCHMARKS.md with --record.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from record import append_section


def _synth_line(label: str, report: dict) -> str:
    s, out = report["sampling"], report["outputs"]
    parts = [f"{src}: {v['sampled']} prompts sampled, {v['accepted_samples']}/{v['verified_samples']} samples accepted, "
             f"{v['kept']} kept, {v['pairs']} pairs" for src, v in report["sources"].items()]
    return (f"- {label}: {s['samples']} samples ({s['generated']} generated, {s['reused']} reused) in {s['seconds']:.0f} s "
            f"({s['samples_per_s']} samples/s, {s['tokens_per_s']} tokens/s); {out.get('sft', 0)} SFT rows, "
            f"{out.get('pairs', 0)} pairs; " + "; ".join(parts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/instruction-following")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    from tunesmith.report.compare import comparison_markdown

    run = Path(args.run)
    summary = json.loads((run / "summary.json").read_text())
    lines = [comparison_markdown(summary["comparison"]).rstrip(), ""]
    for label, d in (("synth from the base (SFT rows)", run / "synth"),
                     ("synth from the SFT model (DPO pairs)", run / "phases" / "dpo" / "synth")):
        if (d / "report.json").is_file():
            lines.append(_synth_line(label, json.loads((d / "report.json").read_text())))
    own = json.loads((run / "summary.json").read_text())
    lines.append(f"- SFT: {own['train']['steps']} steps, {own['train']['seconds']:.0f} s; run (synth, base and SFT "
                 f"evaluation, training) {own['wall_seconds']:.0f} s")
    for p in summary.get("phases", []):
        t = p.get("train") or {}
        lines.append(f"- phase {p['name']} ({p['method']}): {t.get('steps')} steps, {t.get('seconds')} s; phase wall "
                     f"{p['wall_seconds']:.0f} s")
    lines.append(f"- total wall time of the recipe's runs: {summary.get('total_wall_seconds')} s")
    text = "\n".join(lines)
    print(text)
    if args.record:
        append_section("Instruction following: base vs RAFT-SFT vs DPO (recipes/instruction-following.yaml)",
                       "`flock -x /tmp/tunesmith-cpu.lock .venv/bin/tunesmith run recipes/instruction-following.yaml`, "
                       f"then `python benchmarks/instruction_following.py --run {args.run} --record`", text)


if __name__ == "__main__":
    main()
