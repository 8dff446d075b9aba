"""``magjax bench verifier``: math checks/s and code runs/s on this machine.

Math is timed on the answer-pair table (magjax/rewards/answer_pairs.tsv, the forms
NuminaMath- and OpenThoughts-style data use, with near-miss negatives) both in-process (the
parser and SymPy alone) and through the worker processes the pool uses, ``workers``
processes fed by as many threads (adding the inter-process round trip and the per-check
deadline); the table's agreement and false positives are reported with the rate. Code is
timed as sandboxed Python and C++ runs of a small stdin/stdout program.
"""

from __future__ import annotations

import concurrent.futures
import os
import time

from magjax.rewards import code as code_lib
from magjax.rewards import sandbox
from magjax.rewards.math import equivalent
from magjax.rewards.pool import PoolConfig
from magjax.rewards.workers import WorkerPool, WorkerTimeout
from magjax.types import IOTest

ANSWER_PAIRS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "rewards", "answer_pairs.tsv")
PY_ADD = "a, b = map(int, input().split())\nprint(a + b)"
CPP_ADD = "#include <iostream>\nint main() { long a, b; std::cin >> a >> b; std::cout << a + b << '\\n'; }"


def answer_pairs(path: str = ANSWER_PAIRS) -> list[tuple[str, str, str, bool]]:
    """(category, gold, pred, equivalent) rows of the table; comment lines start with #."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 4 or fields[3] not in ("0", "1"):
                raise ValueError(f"{path}:{number}: need category<TAB>gold<TAB>pred<TAB>0|1, got {line.strip()!r}")
            rows.append((fields[0], fields[1], fields[2], fields[3] == "1"))
    return rows


def _through_workers(pairs, workers: int) -> tuple[float, list[bool | None]]:
    """Seconds for all checks through ``workers`` processes (None: the check timed out)."""
    pool = WorkerPool(workers)
    timeout = PoolConfig().math_timeout_s

    def check(pair):
        try:
            return pool.call("math.equivalent", pair[1], pair[2], timeout=timeout)
        except WorkerTimeout:
            return None

    try:
        with concurrent.futures.ThreadPoolExecutor(workers) as threads:
            list(threads.map(check, pairs[:workers * 4]))  # every worker warm
            t0 = time.perf_counter()
            verdicts = list(threads.map(check, pairs))
            return time.perf_counter() - t0, verdicts
    finally:
        pool.close()


def run(rounds: int = 3, workers: int = 2) -> dict:
    table = answer_pairs()
    pairs = table * rounds
    t0 = time.perf_counter()
    for _, gold, pred, _ in pairs:
        equivalent(gold, pred)
    in_process = (time.perf_counter() - t0) / len(pairs)
    seconds, verdicts = _through_workers(pairs, workers)
    verdicts = verdicts[:len(table)]
    agree = sum(v == expected for v, (*_, expected) in zip(verdicts, table))
    false_positives = sum(v is True and not expected for v, (*_, expected) in zip(verdicts, table))
    test = [IOTest("1 2\n", "3\n")]
    t0 = time.perf_counter()
    for _ in range(10):
        code_lib.run_tests(PY_ADD, "python", test)  # each one a real run
    python_run = (time.perf_counter() - t0) / 10
    t0 = time.perf_counter()
    code_lib.run_tests(CPP_ADD, "cpp", test * 5)
    cpp_total = time.perf_counter() - t0
    return {"bench": "verifier", "sandbox_tier": sandbox.tier(), "pids_cgroup": sandbox.pids_cgroup_available(),
            "math_pairs": len(table), "math_agreement": agree / len(table), "math_false_positives": false_positives,
            "math_timeouts": sum(v is None for v in verdicts), "math_workers": workers,
            "math_ms_in_process": 1e3 * in_process, "math_ms_via_workers": 1e3 * seconds / len(pairs),
            "math_checks_per_s": len(pairs) / seconds, "python_runs_per_s": 1.0 / python_run,
            "cpp_compile_plus_5_runs_s": cpp_total, "cpus": os.cpu_count(), "cpu_model": _cpu_model()}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    except OSError:
        return "unknown"


def describe(r: dict) -> str:
    return (f"verifier  sandbox tier={r['sandbox_tier']} (pids cgroup: {r['pids_cgroup']}); {r['cpus']} CPUs, "
            f"{r['cpu_model']}\n"
            f"  math: {r['math_pairs']} answer pairs, agreement {100 * r['math_agreement']:.1f}%, "
            f"{r['math_false_positives']} false positives, {r['math_timeouts']} timeouts\n"
            f"        {r['math_ms_in_process']:.2f} ms/check in process; through {r['math_workers']} worker processes "
            f"{r['math_checks_per_s']:.0f} checks/s\n"
            f"  code: {r['python_runs_per_s']:.1f} sandboxed Python runs/s;"
            f"  C++ compile + 5 runs {r['cpp_compile_plus_5_runs_s']:.2f} s")
