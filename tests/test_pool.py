"""The verifier pool: concurrency, deadlines, and a crashed worker costing one item."""

import os
import signal
import threading

import pytest

from magjax.rewards import reward
from magjax.rewards.pool import PoolConfig, VerifierPool
from magjax.types import Completion, Problem

MATH = Problem("m", "math", "What is one half?", answer="\\frac{1}{2}")


def _completion(i, text):
    return Completion("m", i, [1], [5] * 10, [-1.0] * 10, [0] * 10, text, "eos")


@pytest.fixture
def pool():
    scored = []
    p = VerifierPool(reward.RewardConfig(language_reward=0.0), PoolConfig(threads=2, math_timeout_s=2.0),
                     on_scored=scored.append)
    p.scored = scored
    yield p
    p.close()


def test_scores_arrive_through_the_callback(pool):
    texts = ["<think>a</think>\\boxed{0.5}", "<think>a</think>\\boxed{1/3}", "no format"]
    futures = [pool.submit(MATH, _completion(i, t)) for i, t in enumerate(texts)]
    totals = [f.result(timeout=60).reward.total for f in futures]
    assert totals == [pytest.approx(1.0), pytest.approx(0.1), 0.0]
    assert len(pool.scored) == 3 and pool.stats()["verifier/scored"] == 3


def test_pool_keeps_scoring_after_a_worker_is_killed_mid_item(pool):
    # Kill the SymPy worker while it works on an item: that item scores 0, the next are fine.
    worker_pids = [w.process.pid for w in pool._workers._all]
    slow = "\\frac{1}{2}"
    started = threading.Event()
    original = pool._workers.call

    def call_and_kill(name, *args, timeout):
        if not started.is_set():
            started.set()
            for pid in worker_pids:
                os.kill(pid, signal.SIGKILL)
        return original(name, *args, timeout=timeout)

    pool._workers.call = call_and_kill
    first = pool.submit(MATH, _completion(0, f"<think>a</think>\\boxed{{{slow}}}")).result(timeout=60)
    assert first.reward.total == pytest.approx(0.1) and "memory" in first.reward.reason
    after = [pool.submit(MATH, _completion(i, "<think>a</think>\\boxed{0.5}")).result(timeout=60) for i in range(1, 4)]
    assert all(s.reward.is_correct for s in after)
    assert pool.stats()["verifier/worker_replacements"] == 1


def test_a_hanging_check_times_out_and_counts(pool):
    pool._workers.call("test.sleep", 0.0)
    original = pool._workers.call
    pool._workers.call = lambda name, *a, timeout: original("test.sleep", 30, timeout=timeout)
    result = pool.submit(MATH, _completion(0, "<think>a</think>\\boxed{0.5}")).result(timeout=60)
    assert result.reward.reason == "math: timeout" and pool.stats()["verifier/timeouts"] == 1


def test_an_unexpected_error_costs_one_item(pool):
    broken = Problem("b", "code", "p", code_language="python", tests=({"not": "a test"},))
    result = pool.submit(broken, _completion(0, "<think>a</think>```python\nprint(1)\n```")).result(timeout=60)
    assert result.reward.total == 0.0 and result.reward.reason.startswith("verifier error")
    assert pool.stats()["verifier/crashes"] == 1
    assert pool.submit(MATH, _completion(1, "<think>a</think>\\boxed{0.5}")).result(timeout=60).reward.is_correct


def test_items_waiting_at_close_are_cancelled_and_returned_by_length():
    # The single thread is held inside the first item's callback, so the rest are still
    # queued when close() cancels them; they come back as a length histogram.
    release, first = threading.Event(), threading.Event()

    def hold_first(scored):
        first.set()
        release.wait(60)

    pool = VerifierPool(reward.RewardConfig(language_reward=0.0), PoolConfig(threads=1), on_scored=hold_first)
    lengths = [3, 5, 5, 7, 9]
    futures = []
    for i, n in enumerate(lengths):
        futures.append(pool.submit(MATH, Completion("m", i, [1], [5] * n, [-1.0] * n, [0] * n, "x", "eos")))
        if i == 0:
            assert first.wait(60)  # the first item is being graded, the others will queue
    assert pool.waiting == len(lengths)
    out = {}
    closer = threading.Thread(target=lambda: out.setdefault("cancelled", pool.close()))
    closer.start()
    while not all(f.cancelled() for f in futures[1:]):  # close() cancels the queue before it waits
        threading.Event().wait(0.01)
    release.set()
    closer.join(60)
    assert out["cancelled"] == {5: 2, 7: 1, 9: 1}  # the graded one (length 3) is not among them
    assert futures[0].result().completion.tokens == [5] * 3 and pool.waiting == 0


def test_latencies_are_a_bounded_window(monkeypatch):
    from magjax.rewards import pool as pool_lib

    monkeypatch.setattr(pool_lib, "LATENCY_WINDOW", 8)
    p = VerifierPool(reward.RewardConfig(language_reward=0.0), PoolConfig(threads=1))
    try:
        for i in range(20):  # format-only failures: no math worker call, fast
            p.score_now(MATH, _completion(i, "no format"))
        assert p.latency_samples == 8 and p.stats()["verifier/scored"] == 20
    finally:
        p.close()
