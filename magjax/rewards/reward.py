"""The combined reward (SPEC.md §2): format, correctness, soft length penalty, language.

Grading stops at the first failure: a response that fails the format check scores 0 and
nothing else applies. The correctness checks are injected (``math_check``, ``code_check``)
so the verifier pool can run them in worker processes and sandboxes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from magjax.rewards import code as code_lib
from magjax.rewards import format as fmt
from magjax.rewards import language as lang
from magjax.rewards import math as math_lib
from magjax.types import Problem


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    format_reward: float = 0.1  # for passing the format check
    correct_reward: float = 0.9  # for a correct answer
    length_penalty: float = 0.1  # the most the soft overlong penalty takes away
    l_max: int = 4096  # tokens: beyond this the full penalty applies
    l_cache: int = 1024  # tokens: the buffer before l_max where the penalty ramps up
    language_reward: float = 0.1  # problem, thinking and answer in one language
    languages: tuple[str, ...] = lang.DEFAULT_LANGUAGES
    max_tests: int = 20  # code: tests sampled per group

    def __post_init__(self):
        if not 0 < self.l_cache <= self.l_max:
            raise ValueError(f"RewardConfig: need 0 < l_cache <= l_max, got {self.l_cache}, {self.l_max}")


@dataclasses.dataclass
class RewardBreakdown:
    format: float = 0.0
    correct: float = 0.0
    length_penalty: float = 0.0
    language: float = 0.0
    total: float = 0.0
    is_correct: bool = False
    reason: str = ""  # why a part was not earned
    verdicts: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    extracted: str | None = None  # the boxed answer or the code language that was graded
    kind: str = ""  # the problem's kind (math | code), for per-kind metrics


def length_penalty(num_tokens: int, l_max: int, l_cache: int, weight: float = 0.1) -> float:
    """DAPO's soft overlong penalty: 0 up to l_max - l_cache, a linear ramp to -weight at l_max."""
    start = l_max - l_cache
    if num_tokens <= start:
        return 0.0
    if num_tokens <= l_max:
        return -weight * (num_tokens - start) / l_cache
    return -weight


def default_math_check(gold: str, pred: str) -> tuple[bool, str]:
    return math_lib.equivalent(gold, pred), ""


def default_code_check(source: str, language: str, tests: list, deadline: float | None = None,
                       verdicts: code_lib.VerdictCache | None = None) -> tuple[bool, list[str], str]:
    r = code_lib.run_tests(source, language, tests, deadline=deadline, verdicts=verdicts)
    return r.passed, r.verdicts, r.detail


def score(problem: Problem, response: str, num_tokens: int, config: RewardConfig = RewardConfig(), *,
          tests: list | None = None, math_check: Callable = default_math_check,
          code_check: Callable = default_code_check) -> RewardBreakdown:
    """Grades one response. ``tests`` overrides the problem's (the group's shared sample)."""
    start = time.perf_counter()
    out = RewardBreakdown(kind=problem.kind)
    f = fmt.check_format(problem.kind, response)
    if not f.ok:
        out.reason = f"format: {f.reason}"
        out.seconds = time.perf_counter() - start
        return out
    out.format = config.format_reward
    if problem.kind == "math":
        out.extracted = math_lib.last_boxed(f.answer)
        ok, why = math_check(problem.answer, out.extracted) if out.extracted is not None else (False, "empty box")
        if not ok:
            out.reason = f"math: {why or 'not equivalent to the reference'}"
    else:
        language, source = fmt.first_code_block(f.answer)
        language = fmt.LANGUAGE_ALIASES.get(language, language)
        out.extracted = language
        if language != problem.code_language:
            ok, out.reason = False, f"code: block is {language!r}, the problem asks for {problem.code_language!r}"
        else:
            sample = tests if tests is not None else code_lib.sample_tests(list(problem.tests), config.max_tests, problem.id)
            ok, out.verdicts, detail = code_check(source, language, sample)
            if not ok:
                out.reason = f"code: {detail[:300]}" if detail else "code: failed"
    out.is_correct = bool(ok)
    out.correct = config.correct_reward if ok else 0.0
    out.length_penalty = length_penalty(num_tokens, config.l_max, config.l_cache, config.length_penalty)
    if config.language_reward and lang.consistent(problem.prompt, f.thinking, f.answer, config.languages):
        out.language = config.language_reward
    out.total = out.format + out.correct + out.length_penalty + out.language
    out.seconds = time.perf_counter() - start
    return out
