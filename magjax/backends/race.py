"""Which of two CPU implementations of a function runs here: decided by a short race.

A native kernel tuned on one CPU can lose to XLA's own code on another (an AVX2 machine
ran the sampler at half XLA's speed through them), so nothing is assumed: the first time
a function is needed at a shape, each candidate is compiled and timed at that shape
(best of a few alternating calls; compiling the candidates is most of the cost, a few
seconds per model the first time on 2 cores), and the faster one is used. Outcomes are
cached on disk (``races.json`` under magjax's cache directory) per CPU identity (model
name and flags), kernel version (sources and compiler flags), jax version and the XLA
flags that change XLA's code, so each machine races each shape once per configuration.

``MAGJAX_KERNELS`` overrides: ``native`` or ``xla`` forces every function, ``race``
(the default) races. ``MAGJAX_NATIVE_KERNELS=0`` still means ``xla``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import threading
import time
from typing import Callable

import jax

from magjax import build_cache

log = logging.getLogger("magjax.backends")

MODES = ("native", "xla", "race")
REPS = 3  # timed calls per candidate at least, after one that compiles ...
BUDGET_S = 0.1  # ... and more, up to MAX_REPS, until this long was spent timing them all
MAX_REPS = 50
_LOCK = threading.Lock()
_MEMORY: dict[str, dict] = {}
DECISIONS: list[dict] = []  # every decision this process made, in order (``magjax bench`` prints them)


def mode() -> str:
    """The override in force: native, xla or race."""
    if os.environ.get("MAGJAX_NATIVE_KERNELS", "1") == "0":
        return "xla"
    value = os.environ.get("MAGJAX_KERNELS", "race").strip().lower()
    if value not in MODES:
        raise ValueError(f"MAGJAX_KERNELS must be one of {', '.join(MODES)}, got {value!r}")
    return value


def cache_path() -> str:
    return os.path.join(build_cache.root(), "races.json")


def xla_code_flags() -> str:
    """The ``XLA_FLAGS`` that can change XLA's candidate code (all but the simulated device
    count), sorted: ``--xla_cpu_max_isa=AVX2`` or an optimisation level makes its own race."""
    tokens = os.environ.get("XLA_FLAGS", "").split()
    return " ".join(sorted(t for t in tokens if not t.startswith("--xla_force_host_platform_device_count")))


def _identity_key(kernel_version: str) -> str:
    digest = hashlib.sha256()
    for part in (build_cache.cpu_identity(), kernel_version, jax.__version__, platform.machine(), xla_code_flags()):
        digest.update(part.encode())
    return digest.hexdigest()[:16]


def _read_disk() -> dict:
    try:
        with open(cache_path()) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _write_disk(key: str, record: dict) -> None:
    """Adds one outcome to the file; a concurrent writer may win the rename, which only
    costs a later process one more race."""
    path = cache_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = _read_disk()
        data[key] = record
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as e:
        log.warning("could not record a kernel race in %s: %s", path, e)


def time_candidates(builders: dict[str, Callable[[], Callable[[], object]]]) -> dict[str, float]:
    """Best wall time of each candidate's calls (the thunks the builders return), after
    one call each that compiles it. Calls alternate between the candidates, so a machine
    busy with other work slows them alike: at least ``REPS`` each, more for fast functions
    (their single calls are noisy), while within ``BUDGET_S``."""
    runs = {name: build() for name, build in builders.items()}
    for run in runs.values():
        jax.block_until_ready(run())
    best = {name: float("inf") for name in runs}
    spent, reps = 0.0, 0
    while reps < REPS or (spent < BUDGET_S and reps < MAX_REPS):
        for name, run in runs.items():
            t0 = time.perf_counter()
            jax.block_until_ready(run())
            elapsed = time.perf_counter() - t0
            best[name], spent = min(best[name], elapsed), spent + elapsed
        reps += 1
    return best


def pick(function: str, shape: str, kernel_version: str, candidates: dict[str, Callable]) -> str:
    """The implementation of ``function`` to use at ``shape``: "native" or "xla".

    ``candidates`` maps each name to a builder of a zero-argument callable that runs the
    candidate once at this shape on made-up inputs. Forced by ``MAGJAX_KERNELS``, else
    read from the cache, else raced (and cached).
    """
    forced = mode()
    if forced != "race":
        winner = forced if forced in candidates else "xla"
        by = "MAGJAX_NATIVE_KERNELS=0" if os.environ.get("MAGJAX_NATIVE_KERNELS") == "0" else f"MAGJAX_KERNELS={forced}"
        return _record(function, shape, winner, {}, f"forced by {by}")
    key = f"{_identity_key(kernel_version)}|{function}|{shape}"
    with _LOCK:
        record, how = _MEMORY.get(key), "decided earlier in this process"
        if record is None:
            record, how = _read_disk().get(key), f"cached in {cache_path()}"
        if record is None:
            # Inside a trace (the train step's attention is chosen while it is traced) the
            # race still runs on real arrays: compile-time evaluation.
            with jax.ensure_compile_time_eval():
                seconds = time_candidates(candidates)
            record = {"winner": min(seconds, key=seconds.get), "seconds": seconds}
            _write_disk(key, record)
            how = "raced"
        _MEMORY[key] = record
    return _record(function, shape, record["winner"], record["seconds"], how)


def _record(function: str, shape: str, winner: str, seconds: dict, how: str) -> str:
    DECISIONS.append({"function": function, "shape": shape, "winner": winner, "seconds": seconds, "how": how})
    return winner


def describe(decision: dict) -> str:
    """One line: which implementation won and by how much."""
    s = decision["seconds"]
    line = f"{decision['function']} at {decision['shape']}: {decision['winner']} ({decision['how']}"
    if len(s) == 2:
        loser = next(n for n in s if n != decision["winner"])
        line += (f"; {decision['winner']} {1e3 * s[decision['winner']]:.2f} ms, {loser} {1e3 * s[loser]:.2f} ms,"
                 f" {s[loser] / s[decision['winner']]:.2f}x")
    return line + ")"


def summary(decisions: list[dict]) -> list[str]:
    """One line per function and shape decided (the first decision of each): which
    implementation runs and, where raced, by how much it won."""
    seen, lines = set(), []
    for d in decisions:
        if (d["function"], d["shape"]) not in seen:
            seen.add((d["function"], d["shape"]))
            lines.append(describe(d))
    return lines or ["kernels: XLA's (no native kernel applies here)"]
