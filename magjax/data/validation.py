"""Code-test validation (SPEC.md §4): make a problem's tests agree with its known solutions.

Every known solution runs on every stdin/stdout test. A test on whose output the solutions
do not agree is dropped (the test, or the statement, is ambiguous). A test on which they
agree but whose expected output differs from theirs is repaired: the expected output
becomes the solutions' (the label was wrong). Problems left with fewer than ``min_tests``
tests are dropped. Optionally each stdin/stdout problem is duplicated into the other
code language (Python <-> C++, SPEC.md §4): same tests, the statement retargeted. Every
change is reported.
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
    duplicated: list[dict] = dataclasses.field(default_factory=list)  # {problem, twin, code_language}
    not_duplicated: list[dict] = dataclasses.field(default_factory=list)  # {problem, reason}


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


LANGUAGE_NAMES = {"python": "Python", "cpp": "C++"}


def twin(problem: Problem, ids: set[str], report: ValidationReport) -> Problem | None:
    """``problem`` stated for the other code language, or None (with the reason reported)."""
    other = "cpp" if problem.code_language == "python" else "python"
    new_id = f"{problem.id}.{other}"
    reason = None
    if any(not isinstance(t, IOTest) for t in problem.tests):
        reason = "assertion tests call Python functions; only stdin/stdout problems translate"
    elif new_id in ids:
        reason = f"{new_id} already exists"
    if reason:
        report.not_duplicated.append({"problem": problem.id, "reason": reason})
        return None
    src, dst = LANGUAGE_NAMES[problem.code_language], LANGUAGE_NAMES[other]
    # The statement names its language ("... (Python)"): rename it; otherwise say which.
    prompt = problem.prompt.replace(src, dst) if src in problem.prompt else f"{problem.prompt}\n\nWrite the solution in {dst}."
    report.duplicated.append({"problem": problem.id, "twin": new_id, "code_language": other})
    return dataclasses.replace(problem, id=new_id, prompt=prompt, code_language=other, solutions=())


def validate(problems: list[Problem], config: ValidationConfig = ValidationConfig(), *,
             duplicate_languages: bool = False) -> tuple[list[Problem], ValidationReport]:
    report = ValidationReport()
    out = [p for p in (validate_problem(p, config, report) for p in problems) if p is not None]
    if duplicate_languages:
        ids = {p.id for p in out}
        twins = [t for t in (twin(p, ids, report) for p in out if p.kind == "code") if t is not None]
        out += twins
    return out, report
