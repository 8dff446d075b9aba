"""Evaluation as papers report it: pass@1 averaged over k samples, maj@k, pass@k.

``pass_at_k`` is the unbiased estimator of Chen et al. (2021): 1 - C(n-c, k) / C(n, k)
for n samples of which c are correct (k > n has no estimate and is refused). ``maj@k``
groups the extracted answers into classes by the grader's own equivalence (``1/2``, ``0.5``
and ``\\frac{1}{2}`` are one vote), takes the largest class (ties broken by the earliest
sample, so it is deterministic) and scores it. Results break
down by problem kind and natural language. Sampling defaults follow Magistral's
evaluation: temperature 0.7, top-p 1.0 for math and 0.95 for code.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import numpy as np

from magjax import distributed
from magjax.models.config import ModelConfig
from magjax.models.tokenizer import ChatFormat, Tokenizer
from magjax.rewards.pool import PoolConfig, answer_equality
from magjax.rewards.reward import RewardConfig
from magjax.roles.rollout import Rollout
from magjax.sampling.engine import EngineConfig, SamplingConfig
from magjax.types import Problem


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    samples: int = 4  # k
    temperature: float = 0.7
    top_p_math: float = 1.0
    top_p_code: float = 0.95
    max_new_tokens: int = 64
    seed: int = 1234
    every_steps: int = 0  # during RL: evaluate the held-out split every N batches (0 = before and after only)


def pass_at_k(n: int, c: int, k: int) -> float:
    """The chance that k of the n samples, drawn without replacement, include a correct one."""
    if not 0 <= c <= n:
        raise ValueError(f"pass@k: need 0 <= correct <= samples, got {c} correct of {n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k}: needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority(answers: list[str | None], correct: list[bool],
             same: Callable[[str, str], bool] | None = None) -> bool:
    """maj@k: the largest class of equivalent non-empty answers, ties to the earliest; is it correct?

    ``same(a, b)`` says whether two answers are one (the grader's equivalence, so ``0.5`` and
    ``\\frac{1}{2}`` vote together); without it, only identical strings are. A class is as
    correct as its earliest sample. Programs have no single answer to vote on; for them (all
    answers None) maj@k is whether a strict majority of the samples passed.
    """
    if all(a is None for a in answers):
        return sum(correct) * 2 > len(correct)
    classes: list[list[int]] = []  # sample indices, in order of each class's first sample
    for i, a in enumerate(answers):
        if a is None:
            continue
        for members in classes:
            first = answers[members[0]]
            if first == a or (same is not None and same(first, a)):
                members.append(i)
                break
        else:
            classes.append([i])
    best = max(len(members) for members in classes)
    return bool(correct[next(members for members in classes if len(members) == best)[0]])


def summarize(per_problem: dict[str, dict], k: int, same: Callable[[str, str], bool] | None = None) -> dict:
    """Aggregate per-problem results ({kind, language, correct: [bool], answers, lengths});
    ``same`` decides which answers vote together for maj@k (see ``majority``)."""
    def block(items):
        items = list(items)
        if not items:
            return {}
        return {"problems": len(items),
                "pass@1": float(np.mean([np.mean(r["correct"]) for r in items])),
                f"pass@{k}": float(np.mean([pass_at_k(len(r["correct"]), sum(r["correct"]), k) for r in items])),
                f"maj@{k}": float(np.mean([majority(r["answers"], r["correct"], same) for r in items])),
                "length_mean": float(np.mean([l for r in items for l in r["lengths"]]))}
    out = {"all": block(per_problem.values())}
    for key in ("kind", "language"):
        for value in sorted({r[key] for r in per_problem.values()}):
            out[f"{key}={value}"] = block(r for r in per_problem.values() if r[key] == value)
    return out


def evaluate(problems: list[Problem], params, model_config: ModelConfig, tokenizer: Tokenizer, chat: ChatFormat,
             config: EvalConfig = EvalConfig(), *, engine: EngineConfig = EngineConfig(slots=32, max_len=256,
                                                                                        prompt_buckets=(64, 128)),
             reward: RewardConfig = RewardConfig(), pool: PoolConfig = PoolConfig(), mesh=None) -> dict:
    """Samples ``config.samples`` completions per problem, grades them, returns the summary.

    Across processes each one evaluates every process_count-th problem on its own devices
    and the results are exchanged, so every process returns the whole evaluation. A
    problem's samples are seeded by its place in ``problems``, so the figures do not depend
    on how many processes share the work.
    """
    per_problem: dict[str, dict] = {}
    process, processes = jax.process_index(), jax.process_count()
    mine = [(i, p) for i, p in enumerate(problems) if i % processes == process]
    sampling = {kind: SamplingConfig(temperature=config.temperature, top_p=top_p, seed=config.seed)
                for kind, top_p in (("math", config.top_p_math), ("code", config.top_p_code))}
    rollout = Rollout(model_config, tokenizer, chat, engine=engine, sampling=sampling["math"], reward=reward,
                      pool=pool, mesh=mesh, params=params)
    try:
        for kind in ("math", "code"):
            indexed = [(i, p) for i, p in mine if p.kind == kind]
            if not indexed:
                continue
            graded = rollout.sample([p for _, p in indexed], config.samples, config.max_new_tokens,
                                    uids=[i for i, _ in indexed], sampling=sampling[kind])
            for (_, p), scored in zip(indexed, graded):
                r = per_problem.setdefault(p.id, {"kind": kind, "language": p.language, "samples": {}})
                for s in scored:
                    r["samples"][s.completion.sample_index] = (
                        s.reward.is_correct, s.reward.extracted if kind == "math" else None, len(s.completion.tokens))
    finally:
        rollout.close()
    for r in per_problem.values():
        samples = r.pop("samples")
        ordered = [samples[i] for i in sorted(samples)]
        r["correct"] = [s[0] for s in ordered]
        r["answers"] = [s[1] for s in ordered]
        r["lengths"] = [s[2] for s in ordered]
    if processes > 1:  # every process calls evaluate at the same point of the program
        merged = {}
        for part in distributed.exchange(per_problem):
            merged |= part
        per_problem = {p.id: merged[p.id] for p in problems if p.id in merged}
    with answer_equality(pool) as same:  # maj@k votes by the grader's equivalence
        summary = summarize(per_problem, config.samples, same)
    return {"summary": summary, "problems": per_problem}


def format_table(before: dict, after: dict, k: int) -> str:
    """A before/after table of pass@1 and maj@k by row of the summary."""
    lines = [f"{'':<16}{'pass@1 before':>14}{'pass@1 after':>14}{f'maj@{k} after':>14}"]
    for row in after:
        b, a = before.get(row, {}), after[row]
        lines.append(f"{row:<16}{100 * b.get('pass@1', float('nan')):>13.1f}%{100 * a['pass@1']:>13.1f}%"
                     f"{100 * a[f'maj@{k}']:>13.1f}%")
    return "\n".join(lines)


def format_summary(summary: dict, k: int) -> str:
    """One evaluation as a table: problems, pass@1 (mean over k), pass@k, maj@k, mean length."""
    lines = [f"{'':<16}{'problems':>9}{'pass@1':>9}{f'pass@{k}':>9}{f'maj@{k}':>9}{'length':>8}"]
    for row, r in summary.items():
        if r:
            lines.append(f"{row:<16}{r['problems']:>9}{100 * r['pass@1']:>8.1f}%{100 * r[f'pass@{k}']:>8.1f}%"
                         f"{100 * r[f'maj@{k}']:>8.1f}%{r['length_mean']:>8.1f}")
    return "\n".join(lines)


def flatten(summary: dict, prefix: str = "eval/") -> dict:
    """A summary as flat metric names: ``eval/pass@1``, ``eval/pass@1/kind=math``, ..."""
    out = {}
    for row, r in summary.items():
        for key, value in r.items():
            if key != "problems":
                out[f"{prefix}{key}" + ("" if row == "all" else f"/{row}")] = value
    return out
