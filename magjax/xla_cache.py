"""JAX's persistent compilation cache for magjax's jobs: a restarted or repeated run loads
its programs instead of compiling them again.

A preempted job on a TPU slice resumes into the same train step, prefill buckets and
decode chunk it compiled before; at Magistral Small's size those compiles take minutes
per attempt. ``magjax train``, ``sft`` and ``eval`` therefore turn the cache on by
default:

* one process: ``~/.cache/magjax/xla/<CPU identity>`` (``$MAGJAX_CACHE_DIR`` moves the
  root), shared by every run on the host;
* several processes (a pod, a cluster): ``RUN_DIR/xla_cache/<CPU identity>``. JAX writes
  entries from process 0 only, so a per-host directory would leave every other host
  compiling on each restart; the run directory is storage every process already sees.

The CPU identity is part of the path because XLA:CPU code is built for the host's
instruction set: a home directory shared by an AVX-512 and an AVX2-only machine must not
hand one the other's programs. JAX keys each entry by everything else (the program, the
devices, the compile options, the jax and XLA versions), so a stale entry is never used.
The cache is not bounded (JAX's default); deleting the directory at any time is safe.

JAX's own settings win: ``JAX_COMPILATION_CACHE_DIR`` (a path or ``gs://bucket/xla``),
``JAX_ENABLE_COMPILATION_CACHE=false`` to turn it off, and
``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` (programs that compile faster than this,
1 s by default, are not written). An unreadable or corrupt entry is JAX's warning ("Error
reading persistent compilation cache entry for 'jit_step'") and a recompile, never a
failed run; JAX does not replace the entry, so the warning recurs until the directory is
deleted.

Not for ``magjax plan``: programs compiled ahead of time for a TPU topology can be written
but not read back without a TPU, and its compile times are part of its report.
"""

from __future__ import annotations

import hashlib
import os
import threading

from magjax import build_cache

# JAX's monitoring events for a compilation the persistent cache was asked about, and for
# one it answered.
_REQUEST = "/jax/compilation_cache/compile_requests_use_cache"
_HIT = "/jax/compilation_cache/cache_hits"


def default_directory(run_dir: str | None = None) -> str:
    """``run_dir``'s cache (a multi-process job's) or the host's, for this CPU."""
    identity = hashlib.sha256(build_cache.cpu_identity().encode()).hexdigest()[:16]
    if run_dir is not None:
        return os.path.join(run_dir, "xla_cache", identity)
    return os.path.join(build_cache.root(), "xla", identity)


def choose_directory(configured: str | None, enabled: bool, *, run_dir: str, processes: int) -> str | None:
    """Where the cache goes: None when JAX's cache is switched off, the directory JAX was
    given (``JAX_COMPILATION_CACHE_DIR``) if any, else magjax's default for a job of
    ``processes`` processes writing to ``run_dir``."""
    if not enabled:
        return None
    return configured or default_directory(run_dir if processes > 1 else None)


class Usage:
    """Counts, from JAX's monitoring events, the compilations that asked the persistent
    cache and those it answered, since the last ``enable`` (the job's start)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests = self.hits = 0

    def __call__(self, event: str, **_):
        if event in (_REQUEST, _HIT):
            with self._lock:
                if event == _REQUEST:
                    self.requests += 1
                else:
                    self.hits += 1


_usage: Usage | None = None


def enable(run_dir: str) -> str | None:
    """Turns the persistent cache on for this job (after ``jax.distributed`` starts, before
    anything compiles) and returns its directory, or None where JAX's settings switch it
    off or the directory cannot be made (a read-only home: the job runs, compiling as
    before)."""
    global _usage
    import jax

    directory = choose_directory(jax.config.jax_compilation_cache_dir, jax.config.jax_enable_compilation_cache,
                                 run_dir=run_dir, processes=jax.process_count())
    if directory is None:
        return None
    if "://" not in directory:  # gs:// and the like: JAX's file layer makes its own
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as err:
            print(f"[magjax] no XLA compilation cache: cannot make {directory} ({err.strerror}); "
                  f"set JAX_COMPILATION_CACHE_DIR to a writable directory to keep compiled programs")
            return None
    jax.config.update("jax_compilation_cache_dir", directory)
    if _usage is None:
        _usage = Usage()
        jax.monitoring.register_event_listener(_usage)
    _usage.requests = _usage.hits = 0  # a job's own figures, where one process runs several
    return directory


def summary() -> str | None:
    """One line on what the cache did in this process, or None if ``enable`` did not turn it on."""
    import jax

    if _usage is None or not jax.config.jax_enable_compilation_cache:
        return None
    return (f"XLA compilation cache {jax.config.jax_compilation_cache_dir}: {_usage.hits} of {_usage.requests} "
            f"programs loaded from it; it keeps those that took over "
            f"{jax.config.jax_persistent_cache_min_compile_time_secs:g} s to compile")
