"""The machine's limits, measured in the same process as the benchmark they scale.

Absolute times drift on shared machines; a ratio against a ceiling measured a few seconds
earlier does not. ``matmul_peak`` is the fastest call over a few square sizes (a
ceiling: a call slowed by a neighbour says nothing about the limit);
``read_bandwidth`` streams a large array through a reduction (what a decode step does to
its weights).
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp


def time_calls(fn, *args, reps: int = 5, warmup: int = 1) -> tuple[list[float], float]:
    """(seconds of each of ``reps`` calls, seconds of the first call) after ``block_until_ready``."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return times, first


def matmul_peak(dtype=jnp.float32, sizes=(1024, 2048), reps: int = 5) -> float:
    """Peak matmul FLOP/s: the fastest of ``reps`` calls at each of ``sizes`` (square
    n x n @ n x n)."""
    best = 0.0
    for n in sizes:
        a = jax.random.normal(jax.random.key(0), (n, n), dtype)
        b = jax.random.normal(jax.random.key(1), (n, n), dtype)
        f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=dtype))
        times, _ = time_calls(f, a, b, reps=reps)
        best = max(best, 2.0 * n**3 / min(times))
    return best


def read_bandwidth(nbytes: int = 512 << 20, reps: int = 5) -> float:
    """Read bandwidth in bytes/s: a float32 array of ``nbytes`` summed."""
    x = jnp.ones((nbytes // 4,), jnp.float32)
    times, _ = time_calls(jax.jit(jnp.sum), x, reps=reps)
    return nbytes / statistics.median(times)


def device_description() -> str:
    d = jax.devices()[0]
    return f"{jax.device_count()} x {d.platform} ({getattr(d, 'device_kind', d.platform)})"
