"""Builds magjax's native CPU kernels on first use and registers them with XLA.

The kernels are C++ sources shipped in this package, compiled on the machine that runs
them (``-march=native``, so one source serves AVX-512, AVX2 and Arm hosts) against the
XLA FFI headers that come with jaxlib, and cached under ``~/.cache/magjax`` (or
``$MAGJAX_CACHE_DIR``) keyed by source, compiler, flags, jaxlib and CPU.
``MAGJAX_NATIVE_MARCH`` names another target (``haswell`` for AVX2 with FMA): for a
fleet of several CPU kinds, and so that an AVX-512 host can check and time the code an
AVX2-only host would run. Without a C++ compiler, or with ``MAGJAX_NATIVE_KERNELS=0``,
nothing is built and callers keep XLA's own kernels: the kernels are an optimisation, never a
requirement. Where they are built, ``magjax.backends`` still races each against XLA's
code at its shapes before using it.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import threading

import jax
import jaxlib

from magjax import build_cache

log = logging.getLogger("magjax.kernels")

SOURCES = ("panel_matmul.cc", "decode_attention.cc", "causal_attention.cc")
HEADERS = ("ffi_types.h", "parallel.h", "vec.h")


def flags() -> tuple[str, ...]:
    """The compiler's flags (linking adds -shared): -march from ``MAGJAX_NATIVE_MARCH``."""
    march = os.environ.get("MAGJAX_NATIVE_MARCH", "").strip() or "native"
    return ("-O3", f"-march={march}", "-std=c++17", "-fPIC", "-w")


TARGETS = {"magjax_panel_matmul": "MagjaxPanelMatmul",  # XLA custom-call name -> exported symbol
           "magjax_decode_attention": "MagjaxDecodeAttention",
           "magjax_attention_forward": "MagjaxAttentionForward",
           "magjax_attention_backward": "MagjaxAttentionBackward"}
_LOCK = threading.Lock()


def cache_dir() -> str:
    return os.path.join(build_cache.root(), "kernels")


def _build(compiler: str) -> str:
    """Compiles the sources into a cached shared library and returns its path."""
    here = os.path.dirname(__file__)
    sources = [os.path.join(here, s) for s in SOURCES]
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    digest = hashlib.sha256()
    for part in (version, " ".join(flags()), jaxlib.__version__, platform.machine(), build_cache.cpu_identity()):
        digest.update(part.encode())
    for path in [*sources, *(os.path.join(here, h) for h in HEADERS)]:
        with open(path, "rb") as f:
            digest.update(f.read())

    def compile_to(tmp: str) -> None:
        # One compiler per source, all at once (the first use waits on the slowest, not
        # the sum), then one link.
        objects = [f"{tmp}.{i}.o" for i in range(len(sources))]
        compiles = [[compiler, *flags(), "-I", jax.ffi.include_dir(), "-c", src, "-o", obj]
                    for src, obj in zip(sources, objects)]
        running: list[subprocess.Popen] = []
        try:
            for cmd in compiles:
                running.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
            errors = [proc.communicate(timeout=300)[1] for proc in running]  # every compiler done first
            for cmd, proc, stderr in zip(compiles, running, errors):
                _raise_if_failed(cmd, proc.returncode, stderr)
            link = [compiler, "-shared", *objects, "-o", tmp]
            linked = subprocess.run(link, capture_output=True, text=True, timeout=300)
            _raise_if_failed(link, linked.returncode, linked.stderr)
        finally:
            for proc in running:  # after a timeout or a failed start: no compiler left behind
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            for obj in objects:
                if os.path.exists(obj):
                    os.remove(obj)

    return build_cache.build_once(os.path.join(cache_dir(), f"magjax_kernels-{digest.hexdigest()[:16]}.so"),
                                  compile_to)


def _raise_if_failed(cmd: list[str], returncode: int, stderr: str) -> None:
    if returncode != 0:
        raise RuntimeError(f"compiling magjax's native kernels failed ({' '.join(cmd)}):\n{stderr[-2000:]}")


_LOADED: list[bool] = []  # the one outcome of load() in this process


def load() -> bool:
    """Builds (once per machine) and registers the kernels; False where they are unavailable.

    The first call decides for the whole process (thread-safe); later calls are free.
    """
    with _LOCK:
        if not _LOADED:
            _LOADED.append(_load())
        return _LOADED[0]


def _load() -> bool:
    if os.environ.get("MAGJAX_NATIVE_KERNELS", "1") == "0":
        return False
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        log.warning("no C++ compiler found (set CXX): magjax's native CPU kernels are off, XLA's own run instead")
        return False
    try:
        library = ctypes.cdll.LoadLibrary(_build(compiler))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        log.warning("magjax's native CPU kernels are off, XLA's own run instead: %s", e)
        return False
    for name, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
    return True
