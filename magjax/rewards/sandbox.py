"""Running untrusted programs: limits, isolation, and nothing left behind.

Each run gets a fresh temporary directory, a scrubbed environment, its own session and
process group, and rlimits (address space, CPU seconds, file size, open files, processes,
no core dumps), set by a tiny launcher (``confine.py``, run by path) that then
``exec``s the program, so no Python code runs between ``fork`` and ``exec`` in the
(threaded) trainer process. Output is read with a byte cap; on timeout the whole process
group is killed.

Isolation tiers, detected once at start-up and reported by ``tier()``:

* ``namespaces``: ``unshare`` gives the run new PID, mount, network (and, when not root,
  user) namespaces: no network, a private /tmp, and every process of the run dies with the
  namespace's init, including ``setsid`` + double-fork escapees;
* ``rlimits``: process group, rlimits and a sweep for processes carrying the run's marker.

Where the cgroup v1 ``pids`` controller is writable (root on most Linux hosts), each run
also gets its own pids cgroup capped at ``Limits.processes``: RLIMIT_NPROC does not bind
root, the cgroup does, so a fork bomb stops at the cap whoever runs it.

In the ``namespaces`` tier the launcher also makes the whole filesystem read-only except
the run's directory (a bind mount in the private mount namespace), so the program cannot
write outside it; the trainer is invisible from the new PID namespace, so it cannot be
signalled, and /proc shows only the run's own processes (no parent environment to read).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

MARKER = "MAGJAX_SANDBOX_RUN"
CONFINE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "confine.py")  # the launcher, run by path


@dataclasses.dataclass(frozen=True)
class Limits:
    seconds: float = 4.0  # wall clock
    memory_mb: int = 300  # address space
    output_bytes: int = 1 << 20  # stdout cap; more is an output-limit verdict
    file_bytes: int = 16 << 20  # largest file the program may write
    processes: int = 64  # RLIMIT_NPROC (per user; enforced for non-root)
    open_files: int = 64


@dataclasses.dataclass
class RunResult:
    returncode: int | None  # None: killed for time
    stdout: bytes
    stderr: bytes
    timed_out: bool
    output_exceeded: bool
    seconds: float
    memory_exceeded: bool = False


PIDS_CGROUP = "/sys/fs/cgroup/pids"


@functools.cache
def pids_cgroup_available() -> bool:
    return os.path.isdir(PIDS_CGROUP) and os.access(PIDS_CGROUP, os.W_OK)


def _make_cgroup(run_id: str, processes: int) -> str | None:
    if not pids_cgroup_available():
        return None
    path = os.path.join(PIDS_CGROUP, f"magjax-{run_id}")
    try:
        os.mkdir(path)
        with open(os.path.join(path, "pids.max"), "w") as f:
            f.write(str(processes))
        return path
    except OSError:
        return None


def _remove_cgroup(path: str | None):
    if path is None:
        return
    for _ in range(50):  # kill whatever is left, then the (now empty) group
        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
                pids = [int(p) for p in f.read().split()]
        except OSError:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.rmdir(path)
            return
        except OSError:
            time.sleep(0.02)


@functools.cache
def tier() -> str:
    """``namespaces`` when unshare works here, else ``rlimits``."""
    if shutil.which("unshare") is None:
        return "rlimits"
    try:
        ok = subprocess.run(_unshare_prefix() + ["true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return "namespaces" if ok else "rlimits"


def _unshare_prefix() -> list[str]:
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    return ["unshare", *user, "--pid", "--fork", "--kill-child", "--mount-proc", "--net", "--mount", "--ipc"]


def _scrubbed_env(workdir: str, run_id: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
            MARKER: run_id}


def run(argv: list[str], *, stdin: bytes = b"", limits: Limits = Limits(), workdir: str | None = None,
        isolate: bool = True) -> RunResult:
    """Runs ``argv`` in ``workdir`` (a fresh temporary directory if None) under ``limits``."""
    own_dir = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="magjax-sandbox-")
    # Unique, and naming the process that started the run: a sweep or an operator can
    # tell whose sandboxed processes are whose when several verifiers share a machine.
    run_id = f"{os.getpid()}-{uuid.uuid4().hex}"
    launcher = [sys.executable, "-I", "-S", CONFINE, str(limits.memory_mb),
                str(int(limits.seconds) + 1), str(limits.file_bytes), str(limits.processes),
                str(limits.open_files), "--", *argv]
    env = _scrubbed_env(workdir, run_id)
    cgroup = _make_cgroup(run_id, limits.processes)
    if cgroup is not None:
        env["MAGJAX_SANDBOX_CGROUP"] = cgroup
    if isolate and tier() == "namespaces":
        launcher = _unshare_prefix() + ["--wd", workdir] + launcher
        env["MAGJAX_SANDBOX_WRITABLE"] = workdir
    start = time.perf_counter()
    proc = subprocess.Popen(launcher, cwd=workdir, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    out, err, timed_out, exceeded = _communicate(proc, stdin, limits)
    seconds = time.perf_counter() - start
    _kill_group(proc.pid)
    if not (isolate and tier() == "namespaces"):  # there, the PID namespace's end killed everything
        _sweep(run_id)
    _remove_cgroup(cgroup)
    if own_dir:
        shutil.rmtree(workdir, ignore_errors=True)
    memory = b"MemoryError" in err or b"std::bad_alloc" in err or b"Cannot allocate memory" in err
    return RunResult(None if timed_out else proc.returncode, out, err, timed_out, exceeded, seconds, memory)


def _communicate(proc, stdin: bytes, limits: Limits):
    """Feeds stdin, reads both pipes with a byte cap, enforces the wall clock."""
    import selectors

    deadline = time.monotonic() + limits.seconds
    out, err = bytearray(), bytearray()
    sel = selectors.DefaultSelector()
    try:
        proc.stdin.write(stdin)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    sel.register(proc.stdout, selectors.EVENT_READ, out)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
    timed_out = exceeded = False
    while sel.get_map():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = True
            break
        for key, _ in sel.select(timeout=min(remaining, 0.1)):
            chunk = os.read(key.fileobj.fileno(), 65536)
            if not chunk:
                sel.unregister(key.fileobj)
                continue
            key.data.extend(chunk)
            if len(out) > limits.output_bytes or len(err) > limits.output_bytes:
                exceeded = True
        if exceeded:
            break
    sel.close()
    if timed_out or exceeded:
        _kill_group(proc.pid)
    try:
        proc.wait(timeout=max(deadline - time.monotonic(), 0) + 1)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        timed_out = True
        proc.wait()
    for stream in (proc.stdout, proc.stderr):
        stream.close()
    return bytes(out[: limits.output_bytes]), bytes(err[: limits.output_bytes]), timed_out, exceeded


def _kill_group(pgid: int):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _sweep(run_id: str):
    """Kills any process still carrying this run's marker (escaped its process group)."""
    needle = f"{MARKER}={run_id}".encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read():
                    os.kill(int(pid), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue
