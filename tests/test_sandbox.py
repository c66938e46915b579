"""The sandbox's acceptance check: adversarial programs must not touch the host, and must end in time.

Each hostile program runs under the strongest mode this machine offers ("auto"); the weaker
fallback modes are then put through the most dangerous of the same programs. After every run the
host canaries (a file in a test directory and one in $HOME) must be byte-for-byte unchanged, no new
file may have appeared, no sandbox process may be left alive, and the run must have ended within
its timeout + 1 s.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import tempfile
import textwrap
from pathlib import Path

import pytest

from tunesmith.evaluate.sandbox import MODES, detect_mode, run_sandboxed

TIMEOUT = 2.0
SECRET = "tunesmith-canary-secret-7f3a"
PWNED = "tunesmith_pwned"  # every file a hostile program tries to create has this in its name


@pytest.fixture(scope="module")
def host():
    """Host canaries + a listening socket the sandbox must not reach + a signal trap."""
    base = Path(tempfile.mkdtemp(prefix="tunesmith-canaries-"))  # 0700, like most private dirs
    canary = base / "canary.txt"
    canary.write_text(SECRET)
    shared = Path(tempfile.mkdtemp(prefix="tunesmith-shared-"))
    shared.chmod(0o777)  # world-writable, like /tmp: only the namespace modes can protect these
    open_canary = shared / "open.txt"
    open_canary.write_text(SECRET)
    open_canary.chmod(0o666)
    home_canary = Path.home() / ".tunesmith_canary"
    home_canary.write_text(SECRET)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    got_signal = []
    old = signal.signal(signal.SIGUSR1, lambda *a: got_signal.append(1))
    state = {"dir": base, "canary": canary, "home_canary": home_canary, "shared": shared, "open": open_canary,
             "port": listener.getsockname()[1], "listener": listener, "signals": got_signal}
    state["snapshot"] = _snapshot(state)
    yield state
    signal.signal(signal.SIGUSR1, old)
    listener.close()
    home_canary.unlink(missing_ok=True)
    shutil.rmtree(base)
    shutil.rmtree(shared)


def _snapshot(h):
    def stat(p: Path):
        st = p.stat()
        return p.read_bytes(), st.st_mtime_ns, st.st_mode, st.st_uid
    return {"files": sorted(os.listdir(h["dir"])), "shared": sorted(os.listdir(h["shared"])),
            "canary": stat(h["canary"]), "open": stat(h["open"]), "home": stat(h["home_canary"])}


def _sandbox_processes(uid: int) -> list[int]:
    """Host processes (zombies included) running as the run's dedicated uid: none may be left."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            if int(next(l for l in status.splitlines() if l.startswith("Uid:")).split()[1]) == uid:
                pids.append(int(entry))
    return pids


def _assert_host_untouched(h, uid: int | None):
    assert _snapshot(h) == h["snapshot"], "a host canary changed or a file appeared next to it"
    assert not list(Path.home().glob(f"*{PWNED}*")) and not list(Path("/tmp").glob(f"*{PWNED}*"))
    try:
        conn, _ = h["listener"].accept()
        conn.close()
        pytest.fail("the sandbox connected to a socket on the host's loopback")
    except BlockingIOError:
        pass
    assert not h["signals"], "the sandbox signalled the test process"
    if uid is not None and uid != os.getuid():
        assert _sandbox_processes(uid) == [], "sandbox processes outlived their run"


def run(h, code: str, mode: str = "auto", **kw):
    code = textwrap.dedent(code).format(canary=h["canary"], dir=h["dir"], home=h["home_canary"], port=h["port"],
                                        homedir=Path.home(), open=h["open"], shared=h["shared"], pwned=PWNED,
                                        test_pid=os.getpid())
    timeout_s = kw.pop("timeout_s", TIMEOUT)
    r = run_sandboxed(code, timeout_s=timeout_s, mode=mode, **kw)
    assert r.wall_s <= timeout_s + 1.0, f"run took {r.wall_s:.2f} s"
    assert r.status != "error", r.detail + r.stderr
    uids = [int(n) for i in r.isolation for n in re.findall(r"uid:? ?(\d+)", i)]
    _assert_host_untouched(h, uids[0] if uids else None)
    assert SECRET not in r.stdout + r.stderr, "the sandbox read a host file"
    return r


# Hostile programs. Each catches its own failures so the run completes and we see what it tried.
FILES = """
import os, shutil, pathlib
def attempt(f, *a):
    try:
        f(*a); print("DID", f.__name__, a)
    except BaseException as e:
        print("refused", f.__name__, type(e).__name__)
attempt(lambda p: print(open(p).read()), "{canary}")
attempt(lambda p: print(open(p).read()), "{home}")
attempt(os.remove, "{canary}")
attempt(os.remove, "{home}")
attempt(lambda p: open(p, "w").write("x"), "{canary}")
attempt(lambda p: open(p, "a").write("x"), "{home}")
attempt(lambda p: open(p, "w").write("x"), "{dir}/{pwned}.txt")
attempt(lambda p: open(p, "w").write("x"), "{homedir}/{pwned}")
attempt(lambda p: open(p, "w").write("x"), "/root/{pwned}")
attempt(os.chmod, "{canary}", 0)
attempt(os.rename, "{canary}", "{dir}/{pwned}")
attempt(shutil.rmtree, "{dir}")
attempt(os.utime, "{canary}", (0, 0))
attempt(os.listdir, "/proc")
attempt(os.listdir, "/work")
"""

# World-writable host places (a 0666 file in a 0777 dir, /tmp): out of reach only with namespaces.
WORLD_WRITABLE = """
import os
for act in (lambda: print(open("{open}").read()), lambda: open("{open}", "a").write("x"),
            lambda: os.remove("{open}"), lambda: open("{shared}/{pwned}", "w").write("x")):
    try:
        act(); print("DID")
    except OSError as e:
        print("refused", type(e).__name__)
open("/tmp/{pwned}", "w").write("x")  # the sandbox's own /tmp: allowed, must not be the host's
print(os.listdir("/tmp"))
"""

CTYPES = """
import ctypes, os
libc = ctypes.CDLL("libc.so.6", use_errno=True)
print("system", libc.system(b"rm -f {canary} {home}; echo x > {dir}/{pwned}; touch /root/{pwned}; cat {home}"))
print("unlink", libc.unlink(b"{canary}"), libc.unlink(b"{home}"))
print("mount", libc.mount(b"none", b"/usr", b"tmpfs", 0, None), ctypes.get_errno())
print("unshare", libc.unshare(0x10000000 | 0x20000), ctypes.get_errno())  # user + mount ns: become root?
print("chroot", libc.chroot(b"/"), "setuid", libc.setuid(0), "ptrace", libc.ptrace(16, 1, 0, 0))
"""

REIMPORT = """
import importlib, sys, builtins
os = importlib.reload(__import__("os"))
sys.modules.pop("os", None)
os2 = importlib.import_module("os")
for m in (os, os2, builtins.__import__("os"), __import__("posix")):
    for f in ("remove", "unlink"):
        try:
            getattr(m, f)("{canary}")
        except OSError as e:
            print("refused", e.errno)
exec("__import__('subprocess').run(['rm', '-rf', '{dir}', '{home}'])")
"""

NETWORK = """
import socket
for addr in (("127.0.0.1", {port}), ("192.0.2.1", 80)):  # 192.0.2.1: TEST-NET-1, documentation only
    try:
        socket.create_connection(addr, timeout=0.5).sendall(b"escaped")
        print("CONNECTED", addr)
    except OSError as e:
        print("refused", addr, type(e).__name__, e.errno)
import urllib.request
try:
    urllib.request.urlopen("http://example.com", timeout=0.5)
    print("CONNECTED http")
except OSError as e:
    print("refused http", type(e).__name__)
"""

KILL = """
import os, signal
for pid, sig in (({test_pid}, signal.SIGUSR1), ({test_pid}, signal.SIGKILL), (os.getppid(), signal.SIGKILL),
                 (1, signal.SIGKILL), (-1, signal.SIGKILL)):
    try:
        os.kill(pid, sig)
        print("sent", pid, sig)
    except OSError as e:
        print("refused", pid, type(e).__name__)
"""

FORK_BOMB = """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
"""

DAEMONS = """
import os, time
for _ in range(5):  # children leave the process group and outlive their parent
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            time.sleep(60)
        os._exit(0)
print("parent done")
"""

HUGE_MEMORY = "x = bytearray(10 * 1024**3)\n"
INFINITE_LOOP = "while True:\n    pass\n"
HUGE_FILE = """
import os
chunk = b"x" * (1 << 20)
try:
    with open("big.bin", "wb") as f:
        for _ in range(10_000):  # 10 GB
            f.write(chunk)
except OSError as e:
    print("file stopped at", os.path.getsize("big.bin") >> 20, "MiB:", type(e).__name__, flush=True)
n = 0
try:
    for i in range(1000):  # many files just under the per-file cap: the work dir must fill up
        with open(f"f{{i}}.bin", "wb") as f:
            for _ in range(15):
                f.write(chunk)
        n += 1
except OSError as e:
    print("dir stopped after", n, "files:", type(e).__name__, flush=True)
print("x" * (64 << 20))  # 64 MB to stdout
"""


def test_files_outside_the_sandbox_are_out_of_reach(host):
    r = run(host, FILES)
    assert r.status == "passed" and "DID" not in r.stdout and r.stdout.count("refused") == 15, r.stdout


def test_world_writable_host_files_are_out_of_reach(host):
    r = run(host, WORLD_WRITABLE)
    assert r.status == "passed" and "DID" not in r.stdout and r.stdout.count("refused") == 4, r.stdout + r.stderr


def test_ctypes_cannot_reach_the_host_or_regain_privileges(host):
    r = run(host, CTYPES)
    assert r.status == "passed", r.stderr
    lines = dict(l.split(" ", 1) for l in r.stdout.splitlines())
    assert lines["unlink"] == "-1 -1"
    assert lines["mount"].startswith("-1") and lines["unshare"].startswith("-1")
    assert lines["chroot"].startswith("-1") and "ptrace -1" in lines["chroot"]


def test_reimporting_os_changes_nothing(host):
    r = run(host, REIMPORT)
    assert r.status == "passed" and r.stdout.count("refused") == 8, r.stdout + r.stderr


def test_no_network(host):
    r = run(host, NETWORK)
    assert r.status == "passed" and "CONNECTED" not in r.stdout and r.stdout.count("refused") == 3, r.stdout


def test_cannot_signal_the_host(host):
    r = run(host, KILL)
    assert r.status == "passed" and "sent" not in r.stdout.replace("sent -1", ""), r.stdout


def test_fork_bomb_is_contained_and_cleaned_up(host):
    r = run(host, FORK_BOMB)
    assert r.status == "timeout"


def test_processes_that_leave_the_group_are_killed(host):
    r = run(host, DAEMONS)
    assert r.status == "passed" and "parent done" in r.stdout


def test_memory_limit(host):
    r = run(host, HUGE_MEMORY)
    assert r.status == "memory" and "MemoryError" in r.stderr


def test_infinite_loop_times_out(host):
    r = run(host, INFINITE_LOOP)
    assert r.status == "timeout" and TIMEOUT <= r.wall_s


def test_cpu_limit_without_wall_timeout(host):
    r = run(host, INFINITE_LOOP, timeout_s=TIMEOUT, cpu_s=1)
    assert r.status == "timeout" and "CPU" in r.detail and r.wall_s < TIMEOUT


def test_huge_files_and_output_are_capped(host):
    r = run(host, HUGE_FILE, timeout_s=3.0)
    assert "file stopped at 16 MiB" in r.stdout and "dir stopped after" in r.stdout, r.stdout + r.stderr
    assert len(r.stdout) < 70_000 and "bytes truncated" in r.stdout


@pytest.mark.parametrize("mode", [m for m in MODES if m != "namespaces"])
def test_fallback_modes_hold_too(host, mode):
    """The weaker modes, forced, against the most dangerous programs (skipped where unavailable)."""
    probe = run_sandboxed("print('ok')", timeout_s=10, mode=mode)
    if probe.status != "passed":
        pytest.skip(f"{mode} not available here: {probe.detail}")
    did = [l for l in run(host, FILES, mode=mode).stdout.splitlines() if l.startswith("DID")]
    assert all(l.startswith("DID listdir") for l in did), did  # rlimits mode can list /proc, /work
    if mode == "userns":
        assert "DID" not in run(host, WORLD_WRITABLE, mode=mode).stdout
    assert run(host, CTYPES, mode=mode).status == "passed"
    assert "CONNECTED" not in run(host, NETWORK, mode=mode).stdout
    assert run(host, KILL, mode=mode).status == "passed"
    assert run(host, FORK_BOMB, mode=mode).status == "timeout"
    assert run(host, DAEMONS, mode=mode).status == "passed"
    assert run(host, HUGE_MEMORY, mode=mode).status == "memory"


# Well-behaved programs.

def test_correct_code_passes_and_stdout_is_captured():
    r = run_sandboxed("print('hello')\nimport sys\nprint('warn', file=sys.stderr)", timeout_s=5)
    assert (r.status, r.returncode, r.stdout, r.stderr) == ("passed", 0, "hello\n", "warn\n")
    assert r.wall_s < 5 and r.isolation


def test_failing_assert_and_errors_fail():
    r = run_sandboxed("def f(x):\n    return x + 1\nassert f(1) == 3, 'wrong'\n", timeout_s=5)
    assert r.status == "failed" and r.returncode == 1 and "AssertionError: wrong" in r.stderr
    assert run_sandboxed("def f(:\n", timeout_s=5).status == "failed"
    assert run_sandboxed("import sys; sys.exit(3)", timeout_s=5).returncode == 3


def test_code_may_use_its_own_directory_threads_and_stdlib():
    code = textwrap.dedent("""
        import tempfile, threading, json, pathlib, math, hashlib
        pathlib.Path("a.txt").write_text("local")
        with tempfile.NamedTemporaryFile("w", delete=False) as f:
            f.write("tmp")
        threads = [threading.Thread(target=math.factorial, args=(500,)) for _ in range(4)]
        [t.start() for t in threads]; [t.join() for t in threads]
        print(pathlib.Path("a.txt").read_text(), open(f.name).read(), hashlib.md5(b"x").hexdigest()[:4])
    """)
    r = run_sandboxed(code, timeout_s=5)
    assert r.status == "passed" and r.stdout.split() == ["local", "tmp", "9dd4"], r.stderr


def test_strongest_isolation_is_used_and_recorded():
    strongest = [m for m in MODES if run_sandboxed("pass", timeout_s=10, mode=m).passed][0]
    assert detect_mode() == strongest
    r = run_sandboxed("pass", timeout_s=5)
    if strongest != "rlimits":
        expected = {"netns", "pidns", "mountns", "pivot_root", "ro-root", "tmpfs-workdir", "rlimits", "no_new_privs"}
        assert expected <= set(r.isolation), r.isolation
    if strongest == "namespaces":  # root: this container
        assert any(i.startswith("uid:") for i in r.isolation)
    with pytest.raises(ValueError, match="sandbox mode"):
        run_sandboxed("pass", mode="docker")
