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
Process tree: host -> bootstrap (this file run as a script, root) -> [init, pid 1 of the new pid
namespace, root] -> user code. The init is root, so the code can neither signal it nor move it out
of the process group; when the init exits or is killed, the kernel kills every process the code
started, even ones that left the process group.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

MODES = ("namespaces", "userns", "rlimits")
STATUSES = ("passed", "failed", "timeout", "memory", "error")
_PATH = "/usr/local/bin:/usr/bin:/bin"


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
            proc = subprocess.Popen([sys.executable, "-I", "-S", os.path.abspath(__file__), json.dumps(cfg)],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=err, pass_fds=(w_fd,),
                                    start_new_session=True, env={"PATH": _PATH, "LANG": "C.UTF-8"}, cwd=tmp)
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


# ------------------------------------------------------------------------ sandbox side (bootstrap)
# Everything below runs in the bootstrap process (`python -I -S sandbox.py CONFIG`) and its forks.

_CLONE = {"mountns": 0x00020000, "cgroupns": 0x02000000, "utsns": 0x04000000, "ipcns": 0x08000000,
          "pidns": 0x20000000, "netns": 0x40000000}
CLONE_NEWUSER = 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = 1024, 2048, 4096, 16384, 1 << 18, 1 << 21
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_SECCOMP, PR_CAPBSET_DROP, PR_SET_SECUREBITS = 1, 4, 22, 24, 28
PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 36, 38
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
_got: list[str] = []  # isolation mechanisms applied so far (copied into each fork)
_report_fd = -1
_child_pid = 0  # the process a SIGTERM from the host makes us kill
_libc_handle = None


def _libc():
    global _libc_handle
    if _libc_handle is None:
        import ctypes
        _libc_handle = ctypes.CDLL(None, use_errno=True)
    return _libc_handle


def _prctl(*args: int) -> None:
    import ctypes
    _check(_libc().prctl(*(ctypes.c_ulong(a) for a in args)), f"prctl({args[0]})")


def _check(ret: int, what: str) -> None:
    if ret != 0:
        import ctypes
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    import ctypes
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(_libc().mount(enc(src), enc(dst), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {dst}")


def _kept_flags(path: str) -> int:
    """Flags of an existing mount that a remount must repeat (the kernel refuses to clear locked ones)."""
    f = os.statvfs(path).f_flag
    pairs = ((os.ST_NOEXEC, MS_NOEXEC), (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME),
             (os.ST_RELATIME, MS_RELATIME), (os.ST_NODEV, MS_NODEV))
    return MS_NOSUID | sum(ms for st, ms in pairs if f & st)


def _bind(src: str, dst: str, readonly: bool = True) -> None:
    _mount(src, dst, None, MS_BIND)
    _mount(None, dst, None, MS_BIND | MS_REMOUNT | (MS_RDONLY | MS_NODEV if readonly else 0) | _kept_flags(dst))


def _report(**kw) -> None:
    os.write(_report_fd, (json.dumps(kw) + "\n").encode())


def _report_error(e: BaseException) -> None:
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f" (in {tb.tb_frame.f_code.co_name}, line {tb.tb_lineno})" if tb is not None else ""
    _report(error=f"{type(e).__name__}: {e}{where}")


def _child(fn) -> None:
    """Run `fn` in a freshly forked child; it must exec or exit, and reports any failure."""
    try:
        fn()
    except BaseException as e:  # noqa: BLE001 - anything here is a sandbox setup failure
        _report_error(e)
    os._exit(70)


def _on_sigterm(signum, frame) -> None:
    """The host's timeout: kill our child and let the wait loop report and exit as usual."""
    if _child_pid:
        try:
            os.kill(_child_pid, signal.SIGKILL)
        except OSError:
            pass  # already gone: we are sweeping up after it
    else:
        os._exit(70)


def _fork(fn) -> int:
    global _child_pid
    pid = os.fork()
    if pid == 0:
        _child_pid = 0
        _child(fn)
    _child_pid = pid
    return pid


def _supervise(fn, sweep_uid: int | None = None) -> None:
    """Fork the user process, reap every child (as pid 1 or subreaper we inherit orphans), report
    how it ended. With `sweep_uid`, first kill and reap every process left running as that uid."""
    pid = _fork(fn)
    while True:
        got, status, usage = os.wait4(-1, 0)
        if got == pid:
            break
    if sweep_uid is not None:
        if os.fork() == 0:  # kill(-1) as the code's uid reaches exactly the code's processes
            try:
                _set_ids(sweep_uid)
                for _ in range(5000):  # repeat: a fork bomb forks between two passes
                    os.kill(-1, signal.SIGKILL)
            except OSError:  # ESRCH: none left but zombies, which we reap below
                pass
            os._exit(0)
        while True:
            try:
                os.wait4(-1, 0)
            except ChildProcessError:
                break
    _report(exit=os.waitstatus_to_exitcode(status), cpu_s=usage.ru_utime + usage.ru_stime)
    os._exit(0)


def _bootstrap(cfg: dict) -> None:
    global _report_fd
    _report_fd = cfg["report_fd"]
    os.set_inheritable(_report_fd, False)  # closed on the final exec: the code never holds it
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        import errno, resource  # noqa: E401,F401 - now: after a uid switch our stdlib may be unreadable
        _libc()
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")  # under memory pressure the kernel kills sandboxed code first
        with open(cfg["program"], "rb") as f:
            program = f.read()
        if cfg["mode"] == "rlimits":
            # No pid namespace: become the reaper of the code's orphans (the container's init may
            # never reap them), and, given a uid of its own, kill all it left behind.
            _prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
            _supervise(lambda: _exec_user(cfg, cfg["program"], cfg["work"]),
                       cfg["uid"] if os.geteuid() == 0 else None)
        if cfg["mode"] == "userns" and os.geteuid() == 0:
            # Root would map ns-root onto host root, which RLIMIT_NPROC exempts: become the
            # dedicated uid first, exactly like an unprivileged user would run this mode.
            _set_ids(cfg["uid"])
            _prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)  # a uid change hides /proc/self/*_map from us
        flags = sum(_CLONE.values())
        if cfg["mode"] == "userns":
            flags |= CLONE_NEWUSER
        uid, gid = os.geteuid(), os.getegid()  # read before: unmapped ids read as 65534 after
        _check(_libc().unshare(flags), "unshare")
        _got.extend(["userns"] if cfg["mode"] == "userns" else [])
        _got.extend(_CLONE)
        if cfg["mode"] == "userns":  # map only ourselves: ns root == our own uid, no other ids
            for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
        pid = _fork(lambda: _jail_init(cfg, program))  # pid 1 of the new pid namespace
        _, status = os.waitpid(pid, 0)  # returns once the whole namespace is gone
        os._exit(0 if os.waitstatus_to_exitcode(status) == 0 else 70)
    except BaseException as e:  # noqa: BLE001
        _report_error(e)
        os._exit(70)


def _jail_init(cfg: dict, program: bytes) -> None:
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    _build_root(cfg, program)
    _supervise(lambda: _exec_user(cfg, "/sandbox/program.py", "/sandbox"))


def _build_root(cfg: dict, program: bytes) -> None:
    """Empty tmpfs root + read-only binds + /dev basics + writable /sandbox tmpfs, then pivot_root."""
    import ctypes
    os.umask(0o022)
    root = cfg["root"]
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount propagates to the host
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=4096,mode=755")
    for b in cfg["binds"]:
        dst = root + b["path"]
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if "link" in b:
            os.symlink(b["link"], dst)
            continue
        if b["kind"] == "dir":
            os.makedirs(dst, exist_ok=True)
        else:
            open(dst, "w").close()
        _bind(b["path"], dst)
    os.mkdir(root + "/dev")
    for name in ("null", "zero", "random", "urandom"):
        open(f"{root}/dev/{name}", "w").close()
        _bind(f"/dev/{name}", f"{root}/dev/{name}", readonly=False)
    owner = 0 if cfg["mode"] == "userns" else cfg["uid"]
    os.mkdir(root + "/sandbox")
    _mount("tmpfs", root + "/sandbox", "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={cfg['work_mb']}m,nr_inodes=4096,mode=700,uid={owner},gid={owner}")
    with open(root + "/sandbox/program.py", "wb") as f:
        f.write(program)
    os.chown(root + "/sandbox/program.py", owner, owner)
    os.symlink("/sandbox", root + "/tmp")
    _mount(None, root, None, MS_BIND | MS_REMOUNT | MS_RDONLY | _kept_flags(root))
    _got.extend(["ro-root", "tmpfs-workdir"])
    os.chdir(root)
    nr = SYS_PIVOT_ROOT.get(platform.machine())
    if nr is not None and _libc().syscall(ctypes.c_long(nr), b".", b".") == 0:
        _check(_libc().umount2(b".", 2), "umount old root")  # MNT_DETACH: the host tree is gone
        _got.append("pivot_root")
    else:
        os.chroot(".")  # the code has no capabilities and no /proc, so it cannot climb out
        _got.append("chroot")
    os.chdir("/")


def _exec_user(cfg: dict, program: str, cwd: str) -> None:
    import resource
    lim = cfg["limits"]
    for res, value in ((resource.RLIMIT_CPU, (lim["cpu"], lim["cpu"] + 1)), (resource.RLIMIT_AS, lim["as"]),
                       (resource.RLIMIT_NPROC, lim["nproc"]), (resource.RLIMIT_FSIZE, lim["fsize"]),
                       (resource.RLIMIT_NOFILE, lim["nofile"]), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(res, value if isinstance(value, tuple) else (value, value))
    _got.append("rlimits")
    _drop_privileges(cfg)
    _prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    _got.append("no_new_privs")
    if _install_seccomp():
        _got.append("seccomp")
    os.chdir(cwd)
    os.umask(0o077)
    _report(ready=_got)
    env = {"PATH": _PATH, "HOME": cwd, "TMPDIR": cwd, "LANG": "C.UTF-8"}
    os.execve(cfg["python"], [cfg["python"], "-I", "-X", "utf8", program], env)


def _set_ids(uid: int) -> None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)  # also clears every capability


def _drop_privileges(cfg: dict) -> None:
    if cfg["mode"] == "userns":  # we are the namespace's root: keep the uid, lose the powers
        _prctl(PR_SET_SECUREBITS, 0x3, 0, 0, 0)  # NOROOT + NOROOT_LOCKED: exec grants no caps
        _drop_bounding_set()
        _got.append(f"caps-dropped(host uid {cfg['uid'] if cfg['root_host'] else 'of the caller'})")
    elif os.geteuid() == 0:
        _drop_bounding_set()
        _set_ids(cfg["uid"])
        _got.append(f"uid:{cfg['uid']}")
    else:
        _got.append(f"uid:{os.geteuid()}(caller)")  # rlimits mode as an ordinary user


def _drop_bounding_set() -> None:
    for cap in range(64):  # until EINVAL: past the kernel's last capability
        try:
            _prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
        except OSError:
            break


# seccomp: refuse syscalls sandboxed code has no business making (x86_64 numbers).
_DENY = (101, 135, 155, 161, 163, 164, 165, 166, 167, 168, 169, 172, 173, 175, 176, 227, 246, 248, 249,
         250, 272, 298, 303, 304, 305, 308, 310, 311, 313, 320, 321, 323, 425, 426, 427, 428, 429, 430,
         431, 432, 433, 442)
# ptrace personality pivot_root chroot acct settimeofday mount umount2 swapon swapoff reboot iopl ioperm
# init/delete_module clock_settime kexec_load add_key request_key keyctl unshare perf_event_open
# name_to/open_by_handle_at clock_adjtime setns process_vm_readv/writev finit_module kexec_file_load
# bpf userfaultfd io_uring_* open_tree move_mount fsopen fsconfig fsmount fspick mount_setattr


def _install_seccomp() -> bool:
    if platform.machine() != "x86_64":
        return False
    import ctypes
    import errno
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, kill = 0x7FFF0000, 0x80000000
    deny = lambda e: 0x00050000 | e  # noqa: E731 - SECCOMP_RET_ERRNO
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, 0xC000003E), (ret, 0, 0, kill),  # other ABIs (i386): kill
            (ld, 0, 0, 0), (jge, 0, 1, 0x40000000), (ret, 0, 0, deny(errno.EPERM))]  # x32 ABI
    for nr in _DENY:
        prog += [(jeq, 0, 1, nr), (ret, 0, 0, deny(errno.EPERM))]
    prog += [(jeq, 0, 1, 435), (ret, 0, 0, deny(errno.ENOSYS)),  # clone3: libc falls back to clone
             (jeq, 0, 3, 56), (ld, 0, 0, 16), (jset, 0, 1, sum(_CLONE.values()) | CLONE_NEWUSER),
             (ret, 0, 0, deny(errno.EPERM)), (ld, 0, 0, 0),  # clone with namespace flags
             (jeq, 0, 3, 41), (ld, 0, 0, 16), (jeq, 1, 0, 1), (ret, 0, 0, deny(errno.EACCES)),  # socket
             (ret, 0, 0, allow)]  # (socket: only AF_UNIX; the jump over the deny lands here)
    buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *ins) for ins in prog))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(prog), ctypes.addressof(buf))
    _prctl(PR_SET_SECCOMP, 2, ctypes.addressof(fprog), 0, 0)
    return True


if __name__ == "__main__":
    _bootstrap(json.loads(sys.argv[1]))
