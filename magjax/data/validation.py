"""Code-test validation (SPEC.md §4): make a problem's tests agree with its known solutions.

Every known solution runs on every stdin/stdout test. A test on whose output the solutions
do not agree is dropped (the test, or the statement, is ambiguous). A test on which they
agree but whose expected output differs from theirs is repaired: the expected output
becomes the solutions' (the label was wrong). Problems left with fewer than ``min_tests``
tests are dropped. Every change is reported.
"""

from __future__ import annotations

import collections
import dataclasses

from magjax.rewards import code as code_lib
from magjax.types import IOTest, Problem


@dataclasses.dataclass(frozen=True)
class ValidationConfig:
    agreement: float = 1.0  # fraction of solutions that must produce the same output
    min_tests: int = 1  # problems with fewer valid tests are dropped
    min_solutions: int = 1  # problems with fewer known solutions are left as they are, reported


@dataclasses.dataclass
class ValidationReport:
    repaired: list[dict] = dataclasses.field(default_factory=list)  # {problem, test, old, new}
    dropped_tests: list[dict] = dataclasses.field(default_factory=list)  # {problem, test, outputs}
    dropped_problems: list[dict] = dataclasses.field(default_factory=list)  # {problem, reason}
    unchecked: list[str] = dataclasses.field(default_factory=list)  # too few solutions to judge


def _same(a: str, b: str) -> bool:
    return a.split() == b.split()


def validate_problem(problem: Problem, config: ValidationConfig, report: ValidationReport,
                     limits: code_lib.CodeLimits = code_lib.CodeLimits()) -> Problem | None:
    io_tests = [t for t in problem.tests if isinstance(t, IOTest)]
    if problem.kind != "code" or len(problem.solutions) < config.min_solutions or not io_tests:
        report.unchecked.append(problem.id)
        return problem
    runs = [code_lib.program_outputs(s, problem.code_language, [t.stdin for t in io_tests], limits)
            for s in problem.solutions]
    kept = []
    for i, test in enumerate(io_tests):
        outputs = [r[i] for r in runs]
        normalized = collections.Counter(" ".join(o.split()) for o in outputs if o is not None)
        if not normalized:
            report.dropped_tests.append({"problem": problem.id, "test": i, "outputs": outputs})
            continue
        common, count = normalized.most_common(1)[0]
        if count < config.agreement * len(outputs):
            report.dropped_tests.append({"problem": problem.id, "test": i, "outputs": outputs})
            continue
        if not _same(common, test.stdout):
            report.repaired.append({"problem": problem.id, "test": i, "old": test.stdout, "new": common + "\n"})
            test = IOTest(test.stdin, common + "\n")
        kept.append(test)
    if len(kept) < config.min_tests:
        report.dropped_problems.append({"problem": problem.id, "reason": f"{len(kept)} valid tests left"})
        return None
    others = tuple(t for t in problem.tests if not isinstance(t, IOTest))
    return dataclasses.replace(problem, tests=tuple(kept) + others)


def validate(problems: list[Problem], config: ValidationConfig = ValidationConfig()) -> tuple[list[Problem], ValidationReport]:
    report = ValidationReport()
    out = [p for p in (validate_problem(p, config, report) for p in problems) if p is not None]
    return out, report
