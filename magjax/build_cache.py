"""What magjax compiles on the machine that runs it (the native kernels, the C++
verifier's precompiled header), cached across processes.

Entries live under ``~/.cache/magjax`` (``$MAGJAX_CACHE_DIR`` moves it), named by a key
over everything the output depends on, so a stale entry is never reused: it is simply
not found. An entry is built under a temporary name and renamed into place, so processes
building the same entry at once never read a partial file.
"""

from __future__ import annotations

import os
import platform
import threading
from typing import Callable


def cpu_identity() -> str:
    """The CPU's model name and feature flags: what ``-march=native`` code and a measured
    race between implementations depend on, so a cache shared by different hosts never
    mixes them."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [l for l in f if l.startswith(("model name", "flags", "Features", "CPU part"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def cpu_model_and_flags() -> tuple[str, set[str]]:
    """The CPU's model name and its feature flags (x86 ``flags``, Arm ``Features``), read
    from the same lines as ``cpu_identity``."""
    model, flags = "", set()
    for line in cpu_identity().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model = value.strip()
        elif key.strip() in ("flags", "Features"):
            flags |= set(value.split())
    return model or platform.processor() or platform.machine(), flags


def root() -> str:
    return os.environ.get("MAGJAX_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "magjax")


def build_once(path: str, build: Callable[[str], None]) -> str:
    """``path``, first made by ``build(temporary_path)`` unless it exists already.

    ``build`` writes the file at the path it is given or raises; nothing is left behind
    by a failed build.
    """
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        build(tmp)
        os.replace(tmp, path)  # atomic: a concurrent build of the same key writes the same bytes
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
