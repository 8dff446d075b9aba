"""``magjax bench verifier``: math checks/s and code runs/s on this machine.

Math is timed both in-process (the parser and SymPy alone) and through the worker
processes the pool uses (adding the inter-process round trip); code as sandboxed Python
and C++ runs of a small stdin/stdout program.
"""

from __future__ import annotations

import time

from magjax.rewards import code as code_lib
from magjax.rewards import sandbox
from magjax.rewards.math import equivalent
from magjax.rewards.workers import WorkerPool
from magjax.types import IOTest

ORDINARY = [("\\frac{1}{2}", "0.5"), ("42", "42"), ("2\\sqrt{2}", "\\sqrt{8}"), ("x^2+2x+1", "(x+1)^2"),
            ("[1,2)", "[1,2)"), ("\\{1,2\\}", "\\{2,1\\}"), ("3\\pi", "3.14"), ("1,234", "1234"),
            ("50\\%", "0.5"), ("x=3", "3"), ("\\frac{7}{2}", "3.5"), ("(1,2)", "(2,1)")]
PY_ADD = "a, b = map(int, input().split())\nprint(a + b)"
CPP_ADD = "#include <iostream>\nint main() { long a, b; std::cin >> a >> b; std::cout << a + b << '\\n'; }"


def run(rounds: int = 10) -> dict:
    pairs = ORDINARY * rounds
    t0 = time.perf_counter()
    for gold, pred in pairs:
        equivalent(gold, pred)
    in_process = (time.perf_counter() - t0) / len(pairs)
    workers = WorkerPool(1)
    workers.call("math.equivalent", "1", "1")
    t0 = time.perf_counter()
    for gold, pred in pairs:
        workers.call("math.equivalent", gold, pred)
    via_workers = (time.perf_counter() - t0) / len(pairs)
    workers.close()
    test = [IOTest("1 2\n", "3\n")]
    t0 = time.perf_counter()
    for _ in range(10):
        code_lib.run_tests(PY_ADD, "python", test, share=False)  # each one a real run
    python_run = (time.perf_counter() - t0) / 10
    t0 = time.perf_counter()
    code_lib.run_tests(CPP_ADD, "cpp", test * 5, share=False)
    cpp_total = time.perf_counter() - t0
    return {"bench": "verifier", "sandbox_tier": sandbox.tier(), "pids_cgroup": sandbox.pids_cgroup_available(),
            "math_ms_in_process": 1e3 * in_process, "math_ms_via_workers": 1e3 * via_workers,
            "math_checks_per_s": 1.0 / via_workers, "python_runs_per_s": 1.0 / python_run,
            "cpp_compile_plus_5_runs_s": cpp_total}


def describe(r: dict) -> str:
    return (f"verifier  sandbox tier={r['sandbox_tier']} (pids cgroup: {r['pids_cgroup']})\n"
            f"  math: {r['math_ms_in_process']:.2f} ms/check in process, {r['math_ms_via_workers']:.2f} ms via workers"
            f"  ({r['math_checks_per_s']:.0f} checks/s)\n"
            f"  code: {r['python_runs_per_s']:.1f} sandboxed Python runs/s;"
            f"  C++ compile + 5 runs {r['cpp_compile_plus_5_runs_s']:.2f} s")
