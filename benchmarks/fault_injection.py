"""Fault injection on a tiny model: SIGKILL at random moments, then --resume; a full disk for real.

Each trial forks a training run (tests/fault_driver.py: a 2-layer random Llama, LoRA with dropout, 12 steps,
a checkpoint every 2 steps, under the run lock) that is killed with SIGKILL at a point drawn at random: inside
a step (after a forward, after the backward, between the optimizer and the scheduler update), while a
metrics line is half written, while a checkpoint is written (half a weights file, before its marker, before
and after its rename), while an old checkpoint is pruned, or from outside at a uniformly random moment of the
training. Then a fresh process resumes (--resume) and finishes (every fifth trial: that resume is killed
too, in its first step, and a second one finishes). A trial passes when the final weights file and
the loss of every step in metrics.jsonl are byte-identical to an uninterrupted run's, no checkpoint that looks
complete is damaged, the dead run's lock is taken over, and no leftover remains.

The full-disk trial trains into a tmpfs (in a private mount namespace) sized for two checkpoints, so the
third does not fit; then the tmpfs is grown and the run resumed.

    flock -x /tmp/tunesmith-cpu.lock .venv/bin/python benchmarks/fault_injection.py [--trials 27] [--record]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import fault_driver as fd  # noqa: E402
from record import append_section  # noqa: E402


def yes(value) -> str:
    return "yes" if value else "**no**"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=27)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-disk", action="store_true", help="skip the tmpfs full-disk trial")
    ap.add_argument("--record", action="store_true", help="append the tables to RELIABILITY.md")
    args = ap.parse_args()
    t0 = time.time()
    fd.preload()
    root = Path(tempfile.mkdtemp(prefix="tunesmith-faults-"))
    ref = fd.reference(root / "reference")
    rows = []
    for i, (fault, delay, then) in enumerate(fd.plan(args.trials, args.seed, ref[2])):
        t = time.time()
        row = fd.trial(root / f"t{i:03d}", fault, ref, delay, then=then)
        row["seconds"] = round(time.time() - t, 2)
        rows.append(row)
        print(f"{i + 1:3d}/{args.trials} {row['fault']:<40} killed {row['killed']} resumed from "
              f"{row['resumed_from']} identical {row.get('weights_identical')}/{row.get('losses_identical')}",
              flush=True)
    ok = [r for r in rows if r["killed"] and r["resume_rc"] == 0 and r["corrupt_visible"] == 0
          and r.get("weights_identical") and r.get("losses_identical") and r["stale_lock_taken_over"]
          and r.get("leftovers_after_resume") == 0]
    lines = ["| # | SIGKILL at (point:occurrence) | killed | complete checkpoints after the kill | damaged among them "
             "| hidden leftovers after the kill | resumed from step | final weights identical | losses identical "
             "| stale lock taken over | leftovers after resume | resume killed too |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        lines.append(f"| {i} | {r['fault']} | {yes(r['killed'])} | {r['checkpoints_after_kill']} | "
                     f"{r['corrupt_visible']} | {r['leftovers']} | {r['resumed_from'] or 'start (none yet)'} | "
                     f"{yes(r.get('weights_identical'))} | {yes(r.get('losses_identical'))} | "
                     f"{yes(r['stale_lock_taken_over'])} | {r.get('leftovers_after_resume')} | "
                     + ("" if r["killed_again"] is None else "yes" if r["killed_again"] else
                        "no (nothing left to run)") + " |")
    corrupt = sum(r["corrupt_visible"] for r in rows)
    summary = (f"**{len(ok)} of {len(rows)} trials passed**: every run killed, resumed, and finished with the final "
               f"weights file and all {len(ref[1])} step losses byte-identical to the uninterrupted run; "
               f"{corrupt} damaged or partial checkpoints ever looked complete (and resume checks every file's "
               "sha256 before loading).")
    body = summary + "\n\n" + "\n".join(lines)
    if not args.no_disk:
        ckpt = root / "reference" / "checkpoints" / f"step-{fd.STEPS:06d}"
        size = int(sum(f.stat().st_size for f in ckpt.iterdir()) * 2.5) + 16384
        d = fd.full_disk(root / "disk", ref, size)
        body += ("\n\nFull disk for real (a tmpfs of "
                 f"{size / 1024:.0f} KB as output.dir, room for two checkpoints): the run stopped with exit "
                 f"{d['first_rc']} and this message:\n\n```\n{d['message']}\n```\n\n"
                 f"Checkpoints left: {', '.join(d['checkpoints_kept'])} ({d['corrupt_kept']} damaged). After the "
                 f"tmpfs was grown, --resume (from step {d.get('resumed_from')}) exited {d['second_rc']}; final "
                 f"weights identical: {yes(d.get('weights_identical'))}, losses identical: "
                 f"{yes(d.get('losses_identical'))}.")
    body += f"\n\nWall time {time.time() - t0:.0f} s (forked trials: the imports are paid once)."
    print(body)
    if args.record:
        append_section("Fault injection: SIGKILL anywhere, then --resume; a full disk",
                       f"`flock -x /tmp/tunesmith-cpu.lock .venv/bin/python benchmarks/fault_injection.py "
                       f"--trials {args.trials} --record`", body, file="RELIABILITY.md")
    if len(ok) != len(rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
