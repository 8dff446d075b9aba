"""The machine's limits, measured in the same process as the benchmark they scale.

Absolute times drift on shared machines; a ratio against a ceiling measured a few seconds
earlier does not. ``matmul_peak`` is the fastest call over a few square sizes (a
ceiling: a call slowed by a neighbour says nothing about the limit);
``read_bandwidth`` streams a large array through a reduction (what a decode step does to
its weights).
"""

from __future__ import annotations

import os
import re
import statistics
import time

import jax
import jax.numpy as jnp

from magjax import build_cache


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
    kind = cpu_description() if d.platform == "cpu" else getattr(d, "device_kind", d.platform)
    return f"{jax.device_count()} x {d.platform} ({kind})"


def cpu_description() -> str:
    """The host's CPU model and widest vector instructions (figures from AVX-512 and AVX2
    hosts differ in kind, not only in speed), and any build setting that holds the code
    below them: the native kernels' ``MAGJAX_NATIVE_MARCH``, XLA's ``--xla_cpu_max_isa``."""
    model, flags = build_cache.cpu_model_and_flags()
    isa = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("asimd", "NEON"),
                                        ("sse2", "SSE2")) if flag in flags), None)
    parts = [model] + ([isa] if isa else [])
    march = os.environ.get("MAGJAX_NATIVE_MARCH", "").strip()
    if march:
        parts.append(f"kernels built for {march}")
    max_isa = re.search(r"--xla_cpu_max_isa=(\S+)", os.environ.get("XLA_FLAGS", ""))
    if max_isa:
        parts.append(f"XLA held to {max_isa.group(1)}")
    return ", ".join(parts)
