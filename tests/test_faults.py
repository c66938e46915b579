"""Fault injection: SIGKILL at random moments (inside a step, while a metrics line or a checkpoint is written,
while an old one is pruned, or from outside), each followed by --resume; and a full disk for real (a small
tmpfs). The resumed run must end with the same weights and losses, bit for bit, as an uninterrupted one, and
no damaged or partial checkpoint may ever look complete. The trial programs are in fault_driver.py;
benchmarks/fault_injection.py runs more trials and records the table in RELIABILITY.md."""

import os
import shutil
import subprocess

import pytest

import fault_driver as fd


def test_a_metrics_line_cut_short_by_a_kill_is_dropped_on_resume(tmp_path):
    from tunesmith.train.tracking import MetricsLog

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    MetricsLog(path, None, resume_step=2)
    assert path.read_text() == '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n'


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("faults") / "reference"


@pytest.fixture(scope="module")
def reference(reference_dir):
    fd.preload()
    return fd.reference(reference_dir)


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_is_bit_identical(tmp_path, reference):
    n = int(os.environ.get("TUNESMITH_FAULT_TRIALS", "27"))  # every point 2x, 9 kills from outside, 5 twice
    rows = [fd.trial(tmp_path / f"t{i:03d}", fault, reference, delay, then=then)
            for i, (fault, delay, then) in enumerate(fd.plan(n, seed=0, train_seconds=reference[2]))]
    for row in rows:
        assert row["killed"], row
        assert row["resume_rc"] == 0, row
        assert row["corrupt_visible"] == 0, row
        assert row["weights_identical"] and row["losses_identical"], row
        assert row["stale_lock_taken_over"], row
        assert row["leftovers_after_resume"] == 0, row
    if n >= 14:  # every point reached at least once
        assert {r["fault"].split(":")[0] for r in rows} >= set(fd.POINTS)
    assert sum(", its resume at" in r["fault"] for r in rows) == n // 5


@pytest.mark.slow
def test_the_trials_notice_a_resume_that_forgets_the_rng(tmp_path, reference):
    row = fd.trial(tmp_path / "broken", "update:5", reference, resume_args=("--break-rng",))
    assert row["killed"] and row["resume_rc"] == 0
    assert not row["losses_identical"]  # dropout draws differ: the check has teeth


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs unshare -rm and tmpfs mounts (user namespaces)")
def test_a_full_disk_for_real_keeps_the_last_checkpoint_and_resume_works_after_space_is_freed(tmp_path, reference,
                                                                                              reference_dir):
    ckpt = reference_dir / "checkpoints" / f"step-{fd.STEPS:06d}"
    size = sum(f.stat().st_size for f in ckpt.iterdir())
    row = fd.full_disk(tmp_path, reference, int(size * 2.5) + 16384)  # two checkpoints fit, a third does not
    assert row["first_rc"] == 1, row
    msg = row["message"]
    assert msg.startswith("error: no space left") and "needs about" in msg and "are free" in msg, msg
    assert "is intact" in msg and "--resume" in msg and "Traceback" not in msg, msg
    assert row["checkpoints_kept"] and row["corrupt_kept"] == 0, row
    assert row["checkpoints_kept"][-1] in msg
    assert row["second_rc"] == 0 and row["weights_identical"] and row["losses_identical"], row
