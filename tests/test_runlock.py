"""Two runs never write one output folder at once: RUN/.lock names its holder; a stale lock is taken over."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from tunesmith.cli import main
from tunesmith.runlock import LOCK_NAME, RunDirLocked, run_lock

HOLDER = textwrap.dedent("""
    import sys, time
    from tunesmith.runlock import run_lock
    with run_lock(sys.argv[1], log=lambda m: None):
        print("held", flush=True)
        time.sleep(120)
""")


def _holder(run_dir):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_live_holder_is_named_and_a_killed_one_is_taken_over(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(RunDirLocked) as err:
            with run_lock(tmp_path):
                pass
        msg = str(err.value)
        assert f"pid {proc.pid} on host {socket.gethostname()}" in msg and "--output.dir" in msg
        info = json.loads((tmp_path / LOCK_NAME).read_text())
        assert info["pid"] == proc.pid
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    logged = []
    with run_lock(tmp_path, log=logged.append) as path:  # the holder is gone: its lock is stale
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert len(logged) == 1 and f"stale lock left by pid {proc.pid}" in logged[0]
    assert not (tmp_path / LOCK_NAME).exists()  # released at the end


def test_a_lock_file_naming_a_dead_pid_is_stale(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": 0}))
    logged = []
    with run_lock(tmp_path, log=logged.append):
        with pytest.raises(RunDirLocked, match=f"pid {os.getpid()}"):  # and it is ours now, even in-process
            with run_lock(tmp_path):
                pass
    assert "no longer running" in logged[0]


def test_a_lock_naming_a_live_process_without_flock_is_respected(tmp_path):
    """A filesystem without working flock: the file alone still stops a second run while its holder lives."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": proc.pid, "host": socket.gethostname(),
                                                      "started": 0}))
        with pytest.raises(RunDirLocked, match="without working locks"):
            with run_lock(tmp_path):
                pass
    finally:
        proc.kill()
        proc.wait()


def test_tunesmith_train_on_a_locked_folder_is_one_message(tmp_path, capsys):
    run_dir = tmp_path / "run"
    proc = _holder(run_dir)
    try:
        recipe = tmp_path / "r.yaml"
        recipe.write_text(f"data:\n  tasks: {{n_train: 8}}\noutput:\n  dir: {run_dir}\n")
        assert main(["train", str(recipe)]) == 1
        err = capsys.readouterr().err
        assert f"pid {proc.pid}" in err and "being written by another run" in err
        assert "Traceback" not in err
    finally:
        proc.kill()
        proc.wait()
