"""The VerifierPool: scores completions concurrently, never stalling or crashing the run.

Threads take completions from a bounded queue and grade them (reward.score). Cheap checks
(format, length, language) run in the thread; math equivalence runs in worker processes
with a wall-clock limit and a memory cap; code runs in the sandbox. A check that times out
scores 0 with reason "timeout", one that exhausts memory "memory", and an unexpected error
costs that item only ("verifier error"), counted in ``stats``.

Nothing it holds grows with the run: latencies are a sliding window of the latest
``LATENCY_WINDOW`` items (the percentiles describe the pool as it is now), and the table of
items waiting or being graded is bounded by ``max_pending``. What is still waiting when the
pool closes is cancelled and returned by ``close`` (its length histogram), so the run's
books account for it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import threading
import time
from collections.abc import Callable

import numpy as np

from magjax.rewards import code as code_lib, reward as reward_lib
from magjax.rewards.workers import WorkerDied, WorkerPool, WorkerTimeout
from magjax.types import Completion, Problem, ScoredCompletion

LATENCY_WINDOW = 4096  # latest items the latency percentiles are taken over


@dataclasses.dataclass(frozen=True)
class PoolConfig:
    threads: int = 2  # concurrent items (code runs spend their time waiting on subprocesses)
    math_workers: int = 1  # SymPy worker processes
    math_timeout_s: float = 5.0  # per math check
    math_memory_mb: int = 1024  # per math worker
    max_pending: int = 1024  # submissions beyond this block the submitter (back-pressure)
    item_deadline_s: float = 60.0  # a whole item (all its checks and tests) never takes longer


class VerifierPool:
    def __init__(self, reward_config: reward_lib.RewardConfig = reward_lib.RewardConfig(),
                 config: PoolConfig = PoolConfig(), on_scored: Callable[[ScoredCompletion], None] | None = None):
        self.reward_config, self.config, self.on_scored = reward_config, config, on_scored
        self._workers = WorkerPool(config.math_workers, config.math_memory_mb)
        self._executor = concurrent.futures.ThreadPoolExecutor(config.threads, thread_name_prefix="magjax-verifier")
        self._slots = threading.BoundedSemaphore(config.max_pending)
        self._lock = threading.Lock()
        self._latencies: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self._waiting: dict[int, int] = {}  # submission number -> completion length, until graded
        self._submissions = 0
        self.verdicts = code_lib.VerdictCache()  # a group's identical programs run once
        self.counts = {"scored": 0, "timeouts": 0, "memory": 0, "crashes": 0, "math": 0, "code": 0}
        self._started = time.perf_counter()

    def _math_check(self, gold: str, pred: str) -> tuple[bool, str]:
        try:
            return bool(self._workers.call("math.equivalent", gold, pred, timeout=self.config.math_timeout_s)), ""
        except WorkerTimeout:
            self._count("timeouts")
            return False, "timeout"
        except WorkerDied:
            self._count("memory")
            return False, "memory"

    def _count(self, key: str):
        with self._lock:
            self.counts[key] += 1

    def score_now(self, problem: Problem, completion: Completion, tests: list | None = None,
                  reward_config: reward_lib.RewardConfig | None = None) -> ScoredCompletion:
        """Grades one completion in the calling thread (what the pool's threads run), under
        ``reward_config`` (default: the pool's; a curriculum stage brings its own)."""
        start = time.perf_counter()
        deadline = time.monotonic() + self.config.item_deadline_s
        try:
            breakdown = reward_lib.score(problem, completion.text, len(completion.tokens),
                                         reward_config or self.reward_config,
                                         tests=tests, math_check=self._math_check,
                                         code_check=functools.partial(reward_lib.default_code_check, deadline=deadline,
                                                                      verdicts=self.verdicts))
        except Exception as err:  # one bad item must not take the run down
            self._count("crashes")
            breakdown = reward_lib.RewardBreakdown(reason=f"verifier error: {type(err).__name__}: {err}",
                                                   kind=problem.kind)
        with self._lock:
            self.counts["scored"] += 1
            self.counts[problem.kind] = self.counts.get(problem.kind, 0) + 1
            self._latencies.append(time.perf_counter() - start)
        return ScoredCompletion(completion, breakdown)

    def submit(self, problem: Problem, completion: Completion, tests: list | None = None,
               reward_config: reward_lib.RewardConfig | None = None) -> concurrent.futures.Future:
        """Queues one completion; the result also goes to ``on_scored``. Blocks when saturated."""
        self._slots.acquire()
        with self._lock:
            self._submissions += 1
            number = self._submissions
            self._waiting[number] = len(completion.tokens)

        def job():
            try:
                scored = self.score_now(problem, completion, tests, reward_config)
                if self.on_scored is not None:
                    self.on_scored(scored)
                return scored
            finally:
                with self._lock:
                    del self._waiting[number]
                self._slots.release()

        try:
            return self._executor.submit(job)
        except RuntimeError:  # submitted after close: never queued, so not the pool's to count
            with self._lock:
                del self._waiting[number]
            self._slots.release()
            raise

    @property
    def latency_samples(self) -> int:
        """How many latencies the percentiles are over (at most LATENCY_WINDOW)."""
        return len(self._latencies)

    @property
    def waiting(self) -> int:
        """Items submitted and not yet graded (at most max_pending)."""
        return len(self._waiting)

    @property
    def backlog(self) -> int:
        return self.config.max_pending - self._slots._value  # noqa: SLF001  (semaphore has no public count)

    def stats(self) -> dict:
        with self._lock:
            lat = np.asarray(self._latencies) if self._latencies else np.zeros(1)
            elapsed = time.perf_counter() - self._started
            return {"verifier/scored": self.counts["scored"], "verifier/per_s": self.counts["scored"] / max(elapsed, 1e-9),
                    "verifier/latency_p50_s": float(np.percentile(lat, 50)),
                    "verifier/latency_p95_s": float(np.percentile(lat, 95)),
                    "verifier/timeouts": self.counts["timeouts"], "verifier/memory": self.counts["memory"],
                    "verifier/crashes": self.counts["crashes"], "verifier/worker_replacements": self._workers.replaced,
                    "verifier/backlog": self.backlog}

    def close(self) -> collections.Counter:
        """Stops grading: items still queued are cancelled, those being graded finish.
        Returns the lengths of the cancelled completions (the run's "cancelled" bucket)."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._workers.close()
        with self._lock:
            cancelled = collections.Counter(self._waiting.values())
            self._waiting.clear()
        return cancelled


@contextlib.contextmanager
def answer_equality(config: PoolConfig = PoolConfig()):
    """``same(a, b)``: whether two extracted math answers are equivalent, by the grader's own
    check in a worker process under the same deadline and memory cap (maj@k's classes). A
    check that times out or dies says "not the same". The worker starts on the first call."""
    workers: list[WorkerPool] = []
    known: dict[tuple[str, str], bool] = {}

    def same(a: str, b: str) -> bool:
        if (a, b) not in known:
            if not workers:
                workers.append(WorkerPool(1, config.math_memory_mb))
            try:
                known[(a, b)] = bool(workers[0].call("math.equivalent", a, b, timeout=config.math_timeout_s))
            except (WorkerTimeout, WorkerDied):
                known[(a, b)] = False
        return known[(a, b)]

    try:
        yield same
    finally:
        for w in workers:
            w.close()
