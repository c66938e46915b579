"""The inside of the sandbox: the bootstrap that builds the jail and runs the user's code.

This file is executed as a script (`python -I -S jail.py CONFIG`) by `sandbox.run_sandboxed`, so
it must not import tunesmith or anything outside the standard library (with -S there is no
site-packages). The bootstrap and its forks set up namespaces, the read-only root, limits, the
dedicated uid and the seccomp filter, run the code, and report back through a pipe. See
sandbox.py for the design and the process tree.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import signal
import struct
import sys

PATH = "/usr/local/bin:/usr/bin:/bin"

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
    _check(_libc().prctl(*(ctypes.c_ulong(a) for a in args)), f"prctl({args[0]})")


def _check(ret: int, what: str) -> None:
    if ret != 0:
        import ctypes
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str | None = None) -> None:
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
    env = {"PATH": PATH, "HOME": cwd, "TMPDIR": cwd, "LANG": "C.UTF-8"}
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
