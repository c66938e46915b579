"""A small training run that kills itself (SIGKILL) at a chosen point, for the fault-injection suite.

    python tests/fault_driver.py RUN_DIR [--resume] [--fault POINT:N]

Trains a tiny random Llama (LoRA with dropout, so the RNG states matter) for STEPS steps with a checkpoint
every SAVE_EVERY steps under the run lock, then writes RUN_DIR/final.safetensors (the trained weights) and
prints one JSON line (resumed_from, the lock's log). --fault POINT:N sends SIGKILL to itself the N-th time
the program reaches POINT:

  forward        a forward pass of the loss has run (inside a step, before its backward)
  backward       the step's backward is done (before the gradient norm and the update)
  update         the optimizer has updated the weights, the scheduler not yet
  metrics        half of a metrics.jsonl line is written
  ckpt_weights   half of a checkpoint's weights.safetensors is written
  ckpt_state     a checkpoint's state.pt is written, its marker not yet
  ckpt_rename    a checkpoint is complete in its hidden folder, not yet renamed into place
  ckpt_renamed   a checkpoint was renamed into place (before the older ones are pruned)
  ckpt_prune     an old checkpoint is half deleted

The suite (tests/test_faults.py) also kills the process from outside at a random moment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

STEPS, SAVE_EVERY, N_SAMPLES = 12, 2, 48
POINTS = ("forward", "backward", "update", "metrics", "ckpt_weights", "ckpt_state", "ckpt_rename", "ckpt_renamed",
          "ckpt_prune")
# How often each point is reached in a full run (a fault's N is drawn below this).
REACHED = {"forward": STEPS * 2, "backward": STEPS, "update": STEPS, "metrics": STEPS,
           "ckpt_weights": STEPS // SAVE_EVERY, "ckpt_state": STEPS // SAVE_EVERY,
           "ckpt_rename": STEPS // SAVE_EVERY, "ckpt_renamed": STEPS // SAVE_EVERY,
           "ckpt_prune": STEPS // SAVE_EVERY - 2}


def config():
    from tunesmith.train.config import TrainConfig

    return TrainConfig(method="lora", lora={"r": 4, "dropout": 0.1}, batch_size=4, micro_batch_size=2,
                       max_steps=STEPS, lr=1e-2, warmup_steps=2, save_every=SAVE_EVERY, keep_checkpoints=2,
                       threads=1)


def arm(point: str, nth: int) -> None:
    """Patch the program so that it kills itself the nth time it reaches `point`."""
    import shutil

    import torch

    from tunesmith import io
    from tunesmith.train import checkpoint, loop, loss, tracking

    hits = [0]

    def reached() -> bool:
        hits[0] += 1
        return hits[0] == nth

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def after(owner, name, when=lambda *a, **k: True, before=None):
        real = getattr(owner, name)

        def wrapped(*args, **kwargs):
            if before is not None and when(*args, **kwargs) and reached():
                before(*args, **kwargs)
                die()
            out = real(*args, **kwargs)
            if before is None and when(*args, **kwargs) and reached():
                die()
            return out
        setattr(owner, name, wrapped)

    if point == "forward":
        after(loss.PackedLoss, "forward")
    elif point == "backward":
        after(loop.Trainer, "_grad_norm", before=lambda *a: None)
    elif point == "update":
        real_build = loop.build_scheduler

        def build(*args, **kwargs):
            sched = real_build(*args, **kwargs)  # its constructor's own step() is not counted
            after(type(sched), "step", before=lambda *a: None)
            return sched
        loop.build_scheduler = build
    elif point == "metrics":
        def half_line(self, record):
            with open(self.path, "a") as f:
                line = json.dumps(record) + "\n"
                f.write(line[:len(line) // 2])
        after(tracking.MetricsLog, "write", before=half_line)
    elif point == "ckpt_weights":
        real_save = checkpoint.save_file

        def half_file(tensors, path):
            real_save(tensors, path)
            size = os.path.getsize(path)
            os.truncate(path, size // 2)
        after(checkpoint, "save_file", before=half_file)
    elif point == "ckpt_state":
        after(torch, "save", when=lambda obj, f, *a, **k: str(getattr(f, "name", f)).endswith("state.pt"))
    elif point in ("ckpt_rename", "ckpt_renamed"):
        is_ckpt = lambda src, dst: Path(src).name.startswith(".step-") and ".tmp" in Path(src).name  # noqa: E731
        after(io.os, "replace", when=is_ckpt, before=(lambda *a: None) if point == "ckpt_rename" else None)
    elif point == "ckpt_prune":
        def half_delete(path, *args, **kwargs):
            files = sorted(Path(path).iterdir())
            for f in files[: len(files) // 2]:
                f.unlink()
        after(shutil, "rmtree", when=lambda path, *a, **k: ".del" in Path(path).name, before=half_delete)
    else:
        raise SystemExit(f"unknown fault point {point}: one of {', '.join(POINTS)}")


def main(argv: list[str]) -> None:
    """Exit 1 with one `error:` line on a UserError (a full disk, a refused lock), as the CLI does."""
    from tunesmith.errors import UserError

    try:
        run(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def run(argv: list[str]) -> None:
    run_dir, resume = Path(argv[0]), "--resume" in argv
    if "--fault" in argv:
        point, nth = argv[argv.index("--fault") + 1].split(":")
        arm(point, int(nth))
    if "--break-rng" in argv:  # a resume that forgets the RNG states: the suite must notice
        from tunesmith.train import loop

        loop.set_rng_state = lambda state: None
    import torch
    from safetensors.torch import save_file

    from conftest import random_samples, tiny_llama
    from tunesmith.io import atomic_dir
    from tunesmith.runlock import run_lock
    from tunesmith.train.loop import train
    from tunesmith.train.setup import prepare_model, trainable_state

    from tunesmith.train.checkpoint import complete_checkpoints

    cfg = config()
    logged: list[str] = []
    with run_lock(run_dir, log=logged.append):
        base = tiny_llama(0)
        # A resumed process starts from other LoRA weights (restore must overwrite them all); with nothing to
        # resume from it starts as a new run does.
        torch.manual_seed(1 if resume and complete_checkpoints(run_dir / "checkpoints") else 0)
        model = prepare_model(base, cfg)
        samples = random_samples(N_SAMPLES, seed=11)
        print(json.dumps({"event": "training"}), flush=True)
        result = train(model, samples, cfg, run_dir, resume=resume)
        with atomic_dir(run_dir / "final") as tmp:
            save_file({k: v.detach().contiguous() for k, v in trainable_state(model).items()},
                      str(tmp / "weights.safetensors"))
    print(json.dumps({"resumed_from": result.resumed_from, "lock_log": logged, "train_seconds": result.seconds}),
          flush=True)


# --- the trials (used by tests/test_faults.py and benchmarks/fault_injection.py) ---------------------------

def preload() -> None:
    """Import what a run needs, without running any torch op, so forked children start at once (and safely)."""
    import peft  # noqa: F401
    import transformers  # noqa: F401
    from transformers import LlamaForCausalLM  # noqa: F401

    import tunesmith.train.loop  # noqa: F401
    import tunesmith.runlock  # noqa: F401
    import conftest  # noqa: F401


class Child:
    """A forked run of `main(args)`: its JSON lines come back through a pipe; kill() sends SIGKILL."""

    def __init__(self, run_dir: Path, *args: str):
        read, write = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child
            os.close(read)
            code = 0
            try:
                sys.stdout = os.fdopen(write, "w", buffering=1)
                os.environ["OMP_NUM_THREADS"] = "1"
                main([str(run_dir), *args])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # noqa: BLE001 - reported to the parent, then a non-zero exit
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                os._exit(code)
        os.close(write)
        self.out = os.fdopen(read)

    def readline(self) -> dict:
        line = self.out.readline()
        return json.loads(line) if line.startswith("{") else {}

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)

    def finish(self) -> tuple[int, dict, str]:
        """(return code as subprocess gives it: -9 when killed by SIGKILL, last JSON line, '')."""
        lines = [json.loads(ln) for ln in self.out.read().splitlines() if ln.startswith("{")]
        self.out.close()
        _, status = os.waitpid(self.pid, 0)
        rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        return rc, (lines[-1] if lines else {}), ""


def _child(run_dir: Path, *args: str) -> Child:
    return Child(run_dir, *args)


def _finish(proc: Child) -> tuple[int, dict, str]:
    return proc.finish()


def _file_sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def outcome(run_dir: Path) -> tuple[str, list]:
    """(sha256 of the final weights file: equal files, equal weights bit for bit; the loss of every step in
    metrics.jsonl). No torch op runs in the parent, so forking stays safe."""
    losses = [json.loads(ln)["loss"] for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return _file_sha(run_dir / "final" / "weights.safetensors"), losses


def reference(run_dir: Path) -> tuple[str, list, float]:
    """An uninterrupted run: (final weights' sha256, losses, seconds of training)."""
    rc, info, err = _finish(_child(run_dir))
    if rc != 0:
        raise RuntimeError(f"the reference run failed (exit {rc})")
    weights, losses = outcome(run_dir)
    return weights, losses, info["train_seconds"]


def checkpoints_on_disk(run_dir: Path) -> tuple[int, int, int]:
    """(checkpoints that look complete, of them the ones whose files do not match their marker, hidden leftovers)."""
    from tunesmith.train.checkpoint import CheckpointError, complete_checkpoints, verify_checkpoint

    root = run_dir / "checkpoints"
    found = complete_checkpoints(root)
    bad = 0
    for c in found:
        try:
            verify_checkpoint(c)
        except CheckpointError:
            bad += 1
    leftovers = len(list(root.glob(".step-*"))) if root.is_dir() else 0
    return len(found), bad, leftovers


def trial(run_dir: Path, fault: str, ref: tuple[str, list, float], delay: float | None = None,
          resume_args: tuple[str, ...] = (), then: str | None = None) -> dict:
    """One SIGKILL (at `fault` = POINT:N, or from outside after `delay` seconds of training), then --resume;
    with `then` (POINT:N), that first resume is killed too and a second one finishes.

    Returns the row of the results table."""
    import time

    if fault == "external":
        proc = _child(run_dir)
        assert proc.readline().get("event") == "training"
        time.sleep(delay)
        proc.kill()
    else:
        proc = _child(run_dir, "--fault", fault)
    rc, _, err = _finish(proc)
    visible, corrupt, leftovers = checkpoints_on_disk(run_dir)
    label = fault if fault != "external" else f"external after {delay:.2f}s"
    killed_again = None
    lock_log: list[str] = []
    if then is not None:  # the resume is killed as well (when it has a step left to run)
        rc_then, info_then, _ = _finish(_child(run_dir, "--resume", "--fault", then))
        # a resume with nothing left to run finishes: the stale lock was taken over here, not by the next one
        lock_log += info_then.get("lock_log", [])
        killed_again = rc_then == -signal.SIGKILL
        _, corrupt_then, _ = checkpoints_on_disk(run_dir)
        corrupt += corrupt_then
        label += f", its resume at {then}"
    rc2, info, err2 = _finish(_child(run_dir, "--resume", *resume_args))
    lock_log += info.get("lock_log", [])
    row = {"fault": label, "killed": rc == -signal.SIGKILL, "killed_again": killed_again,
           "checkpoints_after_kill": visible, "corrupt_visible": corrupt, "leftovers": leftovers,
           "resume_rc": rc2, "resumed_from": info.get("resumed_from"),
           "stale_lock_taken_over": any("stale lock" in m for m in lock_log),
           "error": "" if rc2 == 0 else f"resume exit {rc2}"}
    if rc2 == 0:
        weights, losses = outcome(run_dir)
        row["weights_identical"] = weights == ref[0]
        row["losses_identical"] = losses == ref[1]
        row["leftovers_after_resume"] = checkpoints_on_disk(run_dir)[2]
    return row


def plan(n_trials: int, seed: int, train_seconds: float) -> list[tuple[str, float | None, str | None]]:
    """(fault, delay, then) for n_trials: every point at a random occurrence, round-robin; a third of the
    trials killed from outside at a uniformly random moment of the training; every fifth trial's resume is
    killed again in its first step (at a point drawn at random)."""
    import random

    rng = random.Random(seed)
    out = []
    for i in range(n_trials):
        then = None
        if i % 5 == 4:  # a point every resumed run with a step left reaches
            then = f"{rng.choice(['forward', 'backward', 'update', 'metrics'])}:1"
        if i % 3 == 2:  # well inside the training (a kill after the run's end would be no trial)
            out.append(("external", rng.uniform(0.02, 0.7) * train_seconds, then))
        else:
            point = POINTS[(i - i // 3) % len(POINTS)]
            out.append((f"{point}:{rng.randint(1, REACHED[point])}", None, then))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])


# --- a full disk for real: a small tmpfs as the run directory (in a private mount namespace) ---------------

FULL_DISK_SCRIPT = r"""
set -u
mount -t tmpfs -o size={size} tmpfs {run}
{python} {driver} {run} > {out}/first.out 2> {out}/first.err
echo $? > {out}/first.rc
mkdir -p {out}/after_full && cp -r {run}/checkpoints {out}/after_full/ 2>/dev/null
mount -o remount,size=64m {run}
{python} {driver} {run} --resume > {out}/second.out 2> {out}/second.err
echo $? > {out}/second.rc
cp {run}/metrics.jsonl {out}/ && mkdir -p {out}/final && cp {run}/final/weights.safetensors {out}/final/
"""


def _error_text(stderr: str) -> str:
    """The `error: ...` message (its lines to the end) out of a child's stderr; '' when there is none."""
    at = stderr.find("error: ")
    return stderr[at:].strip() if at >= 0 else ""


def full_disk(root: Path, ref: tuple[str, list, float], size_bytes: int) -> dict:
    """Train into a tmpfs of `size_bytes` until the disk is full, then grow it and --resume."""
    run, out = root / "tmpfs-run", root / "tmpfs-out"
    run.mkdir(parents=True)
    out.mkdir(parents=True)
    script = FULL_DISK_SCRIPT.format(size=size_bytes, run=run, out=out, python=sys.executable, driver=__file__)
    subprocess.run(["unshare", "-rm", "sh", "-c", script], check=True, timeout=600,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    first_rc, second_rc = int((out / "first.rc").read_text()), int((out / "second.rc").read_text())
    from tunesmith.train.checkpoint import complete_checkpoints

    kept = complete_checkpoints(out / "after_full" / "checkpoints")
    _, corrupt, _ = checkpoints_on_disk(out / "after_full")
    row = {"size": size_bytes, "first_rc": first_rc, "message": _error_text((out / "first.err").read_text()),
           "checkpoints_kept": [c.name for c in kept], "corrupt_kept": corrupt, "second_rc": second_rc}
    if second_rc == 0:
        weights, losses = outcome(out)
        row["weights_identical"], row["losses_identical"] = weights == ref[0], losses == ref[1]
        row["resumed_from"] = json.loads((out / "second.out").read_text().splitlines()[-1])["resumed_from"]
    return row
