"""The host allocator: back XLA:CPU's large temporaries with huge pages.

XLA:CPU takes each call's temporary buffers from ``malloc`` on the thread that runs the
call. glibc serves a request above 32 MiB with a fresh ``mmap`` and unmaps it on
``free``, so every train step asks the kernel again for its temporaries (698 MiB for the
tiny benchmark model, ~8 GiB for the small one), one 4 KiB page fault at a time: about a
third of the tiny model's step went to system time. With ``glibc.malloc.hugetlb=1``
glibc asks for transparent huge pages on those mappings: 2 MiB per fault, 512x fewer.

Keeping freed memory instead (one arena, no ``mmap``, no trimming) removes the faults
altogether, but glibc then lets small allocations split the freed blocks, and the heap
grew by another copy of the temporaries every few calls in a probe: a long run's memory
would grow without bound. Huge pages keep glibc's behaviour and its footprint.

glibc reads its tunables when the process starts, so the ``magjax`` command re-executes
itself once with the setting added to ``GLIBC_TUNABLES`` (same process id, same
arguments). A ``glibc.malloc.hugetlb`` the user set wins; ``MAGJAX_SYSTEM_MALLOC=1``
leaves the environment alone. Without transparent huge pages (``never`` in
/sys/kernel/mm/transparent_hugepage/enabled) or with glibc older than 2.35 the setting
does nothing, and costs nothing.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb"
SETTING = f"{TUNABLE}=1"  # madvise(MADV_HUGEPAGE) on glibc's mmap'd blocks and heap
OPT_OUT = "MAGJAX_SYSTEM_MALLOC"


def tuned_environment(environ=None) -> dict[str, str] | None:
    """``environ`` with the setting added, or None where there is nothing to add (not glibc,
    opted out, or already set)."""
    environ = dict(os.environ if environ is None else environ)
    if environ.get(OPT_OUT, "") not in ("", "0") or platform.libc_ver()[0] != "glibc":
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if TUNABLE in tunables:
        return None
    environ["GLIBC_TUNABLES"] = f"{tunables}:{SETTING}" if tunables else SETTING
    return environ


def reexec_with_huge_pages() -> None:
    """Replaces this process by itself with ``SETTING`` in its environment.

    Returns (doing nothing) when it is already in place or does not apply. Call it first
    thing in a program's main, before anything worth keeping has happened.
    """
    environ = tuned_environment()
    if environ is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    # sys.orig_argv is the command line as typed, interpreter options included.
    os.execve(sys.executable, sys.orig_argv, environ)
