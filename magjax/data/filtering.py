"""Difficulty filtering (SPEC.md §4): keep problems a model solves sometimes, not always.

For every problem, ``k`` completions are sampled and graded (by a ``PassRateSource``: the
rollout role, ``magjax.roles.rollout.pass_rate_source``, or any function for tests). A problem is kept when its
pass rate lies inside ``[min_pass_rate, max_pass_rate]``; it is dropped as likely
mislabelled when a majority of samples agree on one answer that contradicts the label
(Magistral's second pass, with a stronger model). Results are appended to
``OUT/pass_rates.jsonl`` as they come, so an interrupted run resumes where it stopped.
Outputs: ``kept.jsonl``, ``dropped.jsonl`` (with reasons) and ``histogram.json``.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from collections.abc import Callable

import numpy as np

from magjax.data.loaders import problem_to_record, write_problems
from magjax.types import Problem

# A source grades k samples of a problem: [(correct, extracted answer or None), ...].
PassRateSource = Callable[[Problem, int], list[tuple[bool, str | None]]]


@dataclasses.dataclass(frozen=True)
class FilterConfig:
    samples: int = 16  # k completions per problem
    min_pass_rate: float = 1 / 16  # below: never solved, nothing to learn
    max_pass_rate: float = 0.875  # above: solved too often, nothing to learn
    majority_fraction: float = 0.5  # this share agreeing on a wrong answer flags a bad label

    def __post_init__(self):
        if not 0 <= self.min_pass_rate <= self.max_pass_rate <= 1:
            raise ValueError(f"FilterConfig: need 0 <= min_pass_rate <= max_pass_rate <= 1, got {self}")


def decide(problem: Problem, results: list[tuple[bool, str | None]], config: FilterConfig) -> tuple[bool, str]:
    rate = float(np.mean([c for c, _ in results])) if results else 0.0
    wrong_answers = collections.Counter(a for c, a in results if not c and a is not None)
    if wrong_answers:
        answer, count = wrong_answers.most_common(1)[0]
        if count > config.majority_fraction * len(results):
            return False, f"likely mislabelled: {count}/{len(results)} samples answer {answer!r}, label {problem.answer!r}"
    if rate < config.min_pass_rate:
        return False, f"too hard: pass rate {rate:.3f} < {config.min_pass_rate}"
    if rate > config.max_pass_rate:
        return False, f"too easy: pass rate {rate:.3f} > {config.max_pass_rate}"
    return True, f"pass rate {rate:.3f}"


def filter_problems(problems: list[Problem], source: PassRateSource, out_dir: str,
                    config: FilterConfig = FilterConfig()) -> dict:
    os.makedirs(out_dir, exist_ok=True)
    log_path = os.path.join(out_dir, "pass_rates.jsonl")
    done: dict[str, list] = {}
    if os.path.exists(log_path):  # resume: problems already graded are not sampled again
        with open(log_path) as f:
            for line in f:
                if line.strip():
                    try:
                        r = json.loads(line)
                    except json.JSONDecodeError:  # a line cut by the interruption
                        continue
                    done[r["id"]] = [tuple(x) for x in r["results"]]
    with open(log_path, "a") as log:
        for p in problems:
            if p.id in done:
                continue
            results = [(bool(c), a) for c, a in source(p, config.samples)]
            done[p.id] = results
            log.write(json.dumps({"id": p.id, "results": results}) + "\n")
            log.flush()
    kept, dropped, rates = [], [], []
    for p in problems:
        keep, reason = decide(p, done[p.id], config)
        rate = float(np.mean([c for c, _ in done[p.id]])) if done[p.id] else 0.0
        rates.append(rate)
        if keep:
            kept.append(dataclasses.replace(p, pass_rate=rate))
        else:
            dropped.append(problem_to_record(dataclasses.replace(p, pass_rate=rate)) | {"reason": reason})
    write_problems(kept, os.path.join(out_dir, "kept.jsonl"))
    with open(os.path.join(out_dir, "dropped.jsonl"), "w") as f:
        for d in dropped:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    counts, edges = np.histogram(rates, bins=config.samples + 1, range=(0, 1))
    histogram = {"bin_edges": edges.tolist(), "counts": counts.tolist()}
    with open(os.path.join(out_dir, "histogram.json"), "w") as f:
        json.dump(histogram, f, indent=2)
    return {"kept": len(kept), "dropped": len(dropped), "histogram": histogram}
