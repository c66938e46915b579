"""Run untrusted Python (model-generated code) in a throwaway, locked-down process.

`run_sandboxed(code)` runs `code` with a fresh `python -I` and reports how it ended. The host must
be unaffected whatever the code does, so the isolation is done by the kernel, not by Python-level
guards (which `ctypes` or a re-import undo). Three modes, strongest first; "auto" probes once per
process and uses the first that works here, and every result lists what it actually got:

* ``namespaces`` (root): new mount, network, pid, ipc, uts and cgroup namespaces. The code's root
  is an empty tmpfs holding read-only, nosuid binds of /usr (+ the Python prefix); the old root is
  detached (pivot_root). Its only writable place is a size-capped tmpfs (/sandbox, also /tmp); the
  network namespace has only a downed loopback; it runs as a dedicated unprivileged uid.
* ``userns`` (no root needed): the same inside an unprivileged user namespace; the code runs as
  that namespace's root with every capability removed (securebits NOROOT, empty bounding set).
* ``rlimits`` (no namespaces): a dedicated uid when we are root, a private work directory and the
  limits below. Host files are protected only by permissions, the disk only by RLIMIT_FSIZE.

Every mode adds resource limits (CPU, address space, processes, file size, open files, no core
dumps), no_new_privs, a seccomp filter on x86_64 (no namespace/mount/ptrace/bpf/module syscalls,
no socket but AF_UNIX) and a wall-clock timeout after which the whole process group is SIGKILLed.
Process tree: host -> bootstrap (jail.py run as a script, root) -> [init, pid 1 of the new pid
namespace, root] -> user code. The init is root, so the code can neither signal it nor move it out
of the process group; when the init exits or is killed, the kernel kills every process the code
started, even ones that left the process group.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

from . import jail

MODES = ("namespaces", "userns", "rlimits")
STATUSES = ("passed", "failed", "timeout", "memory", "error")


@dataclass
class SandboxResult:
    """How one sandboxed run ended. stdout/stderr are decoded and truncated (middle cut out)."""

    status: str  # one of STATUSES; "error" means the sandbox itself failed, not the code
    returncode: int | None  # the code's exit code, -N if killed by signal N; None if it never
    # ran or was killed with its whole namespace (timeout)
    stdout: str
    stderr: str
    wall_s: float
    isolation: list[str] = field(default_factory=list)  # mechanisms in force, e.g. "netns"
    detail: str = ""  # why: sandbox setup error, timeout, CPU limit

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run_sandboxed(code: str, timeout_s: float = 10.0, memory_mb: int = 1024, cpu_s: int | None = None, *,
                  max_procs: int = 16, file_mb: int = 16, work_mb: int = 64, max_output: int = 65536,
                  mode: str = "auto") -> SandboxResult:
    """Run `code` as a Python program in a fresh sandboxed interpreter; never raises for bad code.

    memory_mb caps each process's address space; max_procs caps processes+threads of the code;
    file_mb caps any file it writes (its stdout/stderr too); work_mb caps its writable tmpfs;
    cpu_s defaults to the timeout + 1. The run ends within timeout_s plus cleanup time.
    """
    if mode == "auto":
        mode = detect_mode()
    elif mode not in MODES:
        raise ValueError(f"sandbox mode must be 'auto' or one of {MODES}, got {mode!r}")
    limits = {"cpu": int(cpu_s if cpu_s is not None else int(timeout_s) + 1), "as": memory_mb << 20,
              "nproc": max_procs, "fsize": file_mb << 20, "nofile": 128}
    return _run(code, mode, timeout_s, limits, work_mb, max_output)


_detected: str | None = None
_detect_lock = threading.Lock()


def detect_mode() -> str:
    """The strongest mode that runs a trivial program here (probed once per process, ~0.3 s)."""
    global _detected
    with _detect_lock:
        if _detected is None:
            tried = []
            for mode in (["namespaces"] if os.geteuid() == 0 else []) + ["userns", "rlimits"]:
                limits = {"cpu": 10, "as": 1 << 30, "nproc": 16, "fsize": 1 << 20, "nofile": 128}
                r = _run("print('ok')", mode, 20.0, limits, 16, 4096)
                if r.status == "passed" and r.stdout.strip() == "ok":
                    _detected = mode
                    break
                tried.append(f"{mode}: {r.status} {r.detail or r.stderr[-300:]}".strip())
            else:
                raise RuntimeError("no sandbox mode works on this machine:\n  " + "\n  ".join(tried))
    return _detected


# ---------------------------------------------------------------------------------------- host side

_uid_counter = itertools.count()


def _pick_uid() -> int:
    """A uid no account uses, distinct per concurrent run: RLIMIT_NPROC counts per uid, so a fork
    bomb in one run cannot starve another, and killing "everything of this uid" is safe."""
    if os.geteuid() != 0:
        return os.geteuid()
    return 1_500_000_000 + ((os.getpid() % 4096) << 12) + next(_uid_counter) % 4096


def _world_runnable(path: str) -> bool:
    """Whether a uid that owns nothing here can run `path` (every parent dir o+x, file o+rx)."""
    path = os.path.realpath(path)
    parts = path.split("/")
    dirs_ok = all(os.stat("/".join(parts[:i]) or "/").st_mode & 0o001 for i in range(1, len(parts)))
    return dirs_ok and os.stat(path).st_mode & 0o005 == 0o005


def _drops_uid_early(mode: str) -> bool:
    """Root in these modes switches to the dedicated uid before anything else, so the interpreter
    must be usable by a uid that owns nothing (pyenv under /root is not)."""
    return os.geteuid() == 0 and mode != "namespaces"


def _base_python() -> str:
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _user_python(mode: str) -> str:
    base = _base_python()
    if not _drops_uid_early(mode):
        return base
    for cand in (base, shutil.which("python3") or "", "/usr/bin/python3"):
        if cand and os.path.exists(cand) and _world_runnable(cand):
            return os.path.realpath(cand)
    raise RuntimeError(f"no Python interpreter readable by an unprivileged uid (tried {base})")


def _jail_binds(python: str) -> list[dict]:
    """What the jail's read-only root holds: system dirs (or their symlinks) and the Python prefix."""
    binds, dirs = [], []
    for p in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(p):
            binds.append({"path": p, "link": os.readlink(p)})
        elif os.path.isdir(p):
            binds.append({"path": p, "kind": "dir"})
            dirs.append(p)
    prefixes = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)}
    if python != _base_python():
        prefixes = {os.path.dirname(os.path.dirname(python))}  # .../bin/python3 -> ...
    for p in sorted(prefixes):
        if not any(p == d or p.startswith(d + "/") for d in dirs):
            binds.append({"path": p, "kind": "dir"})
            dirs.append(p)
    if os.path.isfile("/etc/ld.so.cache"):  # lets ctypes/dlopen find system libraries
        binds.append({"path": "/etc/ld.so.cache", "kind": "file"})
    return binds


def _run(code: str, mode: str, timeout_s: float, limits: dict, work_mb: int, max_output: int) -> SandboxResult:
    start = time.monotonic()
    uid = _pick_uid()
    tmp = tempfile.mkdtemp(prefix="tunesmith-sandbox-")
    r_fd, w_fd = os.pipe()
    try:
        os.chmod(tmp, 0o711)  # rlimits mode: the dedicated uid must reach tmp/work, nothing else
        work = os.path.join(tmp, "work")
        os.mkdir(work, 0o700)
        os.mkdir(os.path.join(tmp, "root"))  # mount point of the jail's root (namespace modes)
        program = os.path.join(work, "program.py")
        with open(program, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(code)
        if _drops_uid_early(mode):
            os.chown(work, uid, uid)
            os.chown(program, uid, uid)
        try:
            python = _user_python(mode)
        except RuntimeError as e:
            return SandboxResult("error", None, "", "", time.monotonic() - start, [], str(e))
        cfg = {"mode": mode, "report_fd": w_fd, "program": program, "work": work, "python": python,
               "root": os.path.join(tmp, "root"), "binds": _jail_binds(python) if mode != "rlimits" else [],
               "uid": uid, "root_host": os.geteuid() == 0, "limits": limits, "work_mb": work_mb}
        out_path, err_path = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-I", "-S", os.path.abspath(jail.__file__), json.dumps(cfg)],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=err, pass_fds=(w_fd,),
                                    start_new_session=True, env={"PATH": jail.PATH, "LANG": "C.UTF-8"}, cwd=tmp)
        os.close(w_fd)
        w_fd = -1
        timed_out = not _wait_exit(proc.pid, start + timeout_s - time.monotonic())
        if timed_out:  # the bootstrap SIGKILLs its child (the init takes the whole namespace
            os.kill(proc.pid, signal.SIGTERM)  # with it) and exits once all of it is gone
            _wait_exit(proc.pid, 0.5)
        # The bootstrap is now a zombie at most, so its pid (= process group id) cannot be reused:
        # kill whatever is left in the group (a stuck bootstrap, rlimits-mode children).
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        reports = _read_reports(r_fd)
        stdout, stderr = _read_output(out_path, max_output), _read_output(err_path, max_output)
        wall = time.monotonic() - start
        return _classify(reports, timed_out, limits, stdout, stderr, wall)
    finally:
        os.close(r_fd)
        if w_fd >= 0:
            os.close(w_fd)
        shutil.rmtree(tmp, ignore_errors=True)


def _wait_exit(pid: int, timeout: float) -> bool:
    """Wait until `pid` has exited WITHOUT reaping it; False on timeout."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    if pidfd is not None:
        try:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            return bool(poller.poll(max(0, int(timeout * 1000))))
        finally:
            os.close(pidfd)
    deadline = time.monotonic() + timeout
    while True:  # old kernels: poll without reaping
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def _read_reports(fd: int) -> dict:
    os.set_blocking(fd, False)
    data = b""
    try:
        while chunk := os.read(fd, 65536):
            data += chunk
    except BlockingIOError:
        pass
    merged: dict = {}
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            merged.update(json.loads(line))
        except ValueError:
            continue
    return merged


def _read_output(path: str, limit: int) -> str:
    """The stream's head and tail (tracebacks are at the end) if it is longer than `limit` bytes."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if size <= limit:
            return f.read().decode("utf-8", "replace")
        head = f.read(limit // 4)
        f.seek(size - (limit - limit // 4))
        tail = f.read()
    cut = size - len(head) - len(tail)
    return (head.decode("utf-8", "replace") + f"\n...[{cut} bytes truncated]...\n"
            + tail.decode("utf-8", "replace"))


def _classify(reports: dict, timed_out: bool, limits: dict, stdout: str, stderr: str, wall: float) -> SandboxResult:
    isolation = reports.get("ready")
    rc = reports.get("exit")

    def result(status: str, detail: str = "") -> SandboxResult:
        return SandboxResult(status, rc, stdout, stderr, wall, list(isolation or []), detail)

    if "error" in reports or isolation is None:
        if timed_out:
            return result("timeout", "timed out before the code started")
        return result("error", "sandbox setup failed: " + reports.get("error", "no report from the sandbox"))
    if timed_out:
        return result("timeout", "wall-clock timeout: process group killed")
    if rc == 0:
        return result("passed")
    if rc == -signal.SIGXCPU or reports.get("cpu_s", 0.0) >= limits["cpu"]:
        return result("timeout", f"CPU limit of {limits['cpu']} s reached")
    last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    if last.startswith("MemoryError"):
        return result("memory", f"address-space limit of {limits['as'] >> 20} MiB reached")
    return result("failed")
