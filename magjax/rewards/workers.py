"""A pool of worker processes with a wall-clock limit and a memory cap per call.

``concurrent.futures`` cannot kill one hung worker; this pool can. A call that runs past
its deadline, or whose worker dies (the memory cap makes a runaway allocation fail or
kill it), costs that one call: the worker is killed and replaced, and the caller gets
``WorkerTimeout`` or ``WorkerDied``. Only functions registered in ``TASKS`` can be called,
by name: nothing from the caller is unpickled as code.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import resource
import threading


def _math_equivalent(gold: str, pred: str) -> bool:
    from magjax.rewards.math import equivalent

    return equivalent(gold, pred)


def _sleep(seconds: float) -> float:  # for tests of the pool itself
    import time

    time.sleep(seconds)
    return seconds


def _allocate(mb: int) -> int:  # for tests of the memory cap
    return len(bytearray(mb << 20))


TASKS = {"math.equivalent": _math_equivalent, "test.sleep": _sleep, "test.allocate": _allocate}


class WorkerTimeout(RuntimeError):
    pass


STARTUP_TIMEOUT_S = 120.0  # spawn + imports + warm-up, apart from any check's own deadline


class WorkerDied(RuntimeError):
    pass


def _worker_main(conn, memory_mb: int):
    if memory_mb > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    from magjax.rewards.math import equivalent

    for gold, pred in (("\\frac{1}{2}", "0.5"), ("e^{i\\pi}", "-1"), ("x^2-1", "(x-1)(x+1)")):
        equivalent(gold, pred)  # warm: SymPy's imports and first evaluations take most of a second
    try:
        _serve(conn)
    except (EOFError, ConnectionError):  # the pool closed its end, or its process is gone: nobody to answer
        return


def _serve(conn):
    conn.send(("ready", None))  # a check's deadline starts after this, never during start-up
    while True:
        name, args = conn.recv()
        try:
            conn.send(("ok", TASKS[name](*args)))
        except MemoryError:
            conn.send(("memory", "memory limit"))
            return  # a worker that ran out of memory is not trusted again
        except Exception as err:  # reported to the caller, the worker lives on
            conn.send(("error", f"{type(err).__name__}: {err}"))


class _Worker:
    def __init__(self, ctx, memory_mb: int):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, memory_mb), daemon=True)
        self.process.start()
        child.close()
        self.ready = False  # start-up (spawn, imports, warm-up) done: see WorkerPool.call

    def wait_ready(self, timeout: float) -> bool:
        """Whether the worker finished starting within ``timeout`` seconds. On a loaded
        machine a spawn and SymPy's warm-up take seconds: that time is not the check's."""
        if not self.ready:
            if not self.conn.poll(timeout):
                return False
            status, _ = self.conn.recv()
            self.ready = status == "ready"
        return self.ready

    def kill(self):
        self.process.kill()
        self.process.join(5)
        self.conn.close()


class WorkerPool:
    def __init__(self, size: int = 2, memory_mb: int = 1024):
        self._ctx = mp.get_context("spawn")  # never fork a process that runs JAX threads
        self.memory_mb = memory_mb
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: list[_Worker] = []
        self._lock = threading.Lock()
        self.replaced = 0
        for _ in range(size):
            self._spawn()

    def _spawn(self):
        w = _Worker(self._ctx, self.memory_mb)
        with self._lock:
            self._all.append(w)
        self._idle.put(w)

    def _retire(self, w: _Worker):
        w.kill()
        with self._lock:
            self._all.remove(w)
            self.replaced += 1
        self._spawn()

    def call(self, name: str, *args, timeout: float = 5.0):
        if name not in TASKS:
            raise KeyError(f"unknown worker task {name!r}")
        w = self._idle.get()
        try:
            if not w.wait_ready(STARTUP_TIMEOUT_S):
                self._retire(w)
                raise WorkerDied(f"{name}: a worker did not start within {STARTUP_TIMEOUT_S} s")
            w.conn.send((name, args))
            if not w.conn.poll(timeout):
                self._retire(w)
                raise WorkerTimeout(f"{name} exceeded {timeout} s")
            status, value = w.conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            self._retire(w)
            raise WorkerDied(f"{name}: worker died (memory cap {self.memory_mb} MB or a crash)") from None
        if status == "memory":
            self._retire(w)
            raise WorkerDied(f"{name}: memory cap of {self.memory_mb} MB exceeded")
        self._idle.put(w)
        if status == "error":
            raise RuntimeError(value)
        return value

    def close(self):
        with self._lock:
            workers = list(self._all)
            self._all.clear()
        for w in workers:
            w.kill()
