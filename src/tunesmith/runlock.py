"""One writer per output folder: `with run_lock(run_dir):` holds RUN/.lock for the whole run.

The lock is an advisory `flock` on RUN/.lock (released by the kernel when the holder dies, however it
dies), and the file says who holds it: pid, host, start time and command line. A second run on the
folder is refused with that holder in the message. A lock file whose flock is free was left by a run
that is gone (killed, crashed, power cut): it is stale, taken over, and the takeover is logged. On a
filesystem without working flock (some network mounts), a lock file naming a process that is still
alive on this host is respected all the same.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError

LOCK_NAME = ".lock"


class RunDirLocked(UserError):
    """Another live run writes this output folder."""


def _holder_text(info: dict) -> str:
    started = info.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, started {when}"
            + (f" ({info['command']})" if info.get("command") else ""))


def _read(fh) -> dict:
    fh.seek(0)
    try:
        info = json.loads(fh.read() or "{}")
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextmanager
def run_lock(run_dir: str | os.PathLike, log: Callable[[str], None] = print) -> Iterator[Path]:
    """Hold RUN/.lock while the body runs; RunDirLocked when another live run holds it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    host = socket.gethostname()
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        fh = os.fdopen(fd, "r+")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = _read(fh)
            fh.close()
            raise RunDirLocked(f"{run_dir} is being written by another run: {_holder_text(info)}. Wait for it to "
                               f"finish (or stop it), or set --output.dir elsewhere; {path} is its lock") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a lock file that its holder removed while we waited for it
            break
        fh.close()
    try:
        old = _read(fh)
        if old.get("pid") and old.get("pid") != os.getpid():
            if old.get("host") == host and pid_alive(int(old["pid"])) and _same_process(old):
                fh.close()
                raise RunDirLocked(f"{run_dir} is being written by another run: {_holder_text(old)} (its lock file "
                                   f"{path} is not flock-ed: a filesystem without working locks?). Wait for it, "
                                   "or set --output.dir elsewhere")
            if old.get("host") not in (None, host):
                log(f"{path}: taking over a lock left by {_holder_text(old)} (its flock is free: the run ended)")
            else:
                log(f"{path}: taking over a stale lock left by {_holder_text(old)}, which is no longer running")
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": host, "started": time.time(),
                             "proc_start": _proc_start(os.getpid()), "command": " ".join(sys.argv)[:300]}))
        fh.flush()
        yield path
    finally:
        if not fh.closed:
            try:
                path.unlink(missing_ok=True)  # removed while still flock-ed: a waiter sees a new inode, retries
            finally:
                fh.close()


def _proc_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid from the holder."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _same_process(info: dict) -> bool:
    """The pid in the lock file is still the process that wrote it (not a later process given the same pid)."""
    recorded = info.get("proc_start")
    return recorded is None or _proc_start(int(info["pid"])) in (None, recorded)
