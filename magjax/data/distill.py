"""Teacher traces (Magistral Small's cold start, SPEC.md §4-5): sample a teacher, keep the
responses the verifiers accept, and write an SFT dataset.

At most ``cap_per_problem`` correct traces are kept per problem; problems the teacher
rarely solves are up-weighted (``weight = min(max_weight, 1 / pass rate)``), since their
traces teach the most. ``read_traces`` expands weights into repeated examples for
``magjax.sft.run_sft``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable

from magjax.types import Problem

# (problem, k) -> [(correct, response text), ...]
TraceSource = Callable[[Problem, int], list[tuple[bool, str]]]


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    samples: int = 8  # teacher completions per problem
    cap_per_problem: int = 2  # correct traces kept per problem
    max_weight: float = 4.0  # cap on the up-weighting of hard problems


def distill(problems: list[Problem], source: TraceSource, out_path: str, config: DistillConfig = DistillConfig()) -> dict:
    kept, unsolved = 0, []
    tmp = f"{out_path}.tmp"
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(tmp, "w", encoding="utf-8") as f:
        for p in problems:
            results = source(p, config.samples)
            correct = [text for ok, text in results if ok]
            if not correct:
                unsolved.append(p.id)
                continue
            weight = min(config.max_weight, len(results) / len(correct))
            for text in correct[: config.cap_per_problem]:
                f.write(json.dumps({"problem_id": p.id, "prompt": p.prompt, "response": text, "weight": weight,
                                    "pass_rate": len(correct) / len(results)}, ensure_ascii=False) + "\n")
                kept += 1
    os.replace(tmp, out_path)
    return {"traces": kept, "unsolved": unsolved}


def read_traces(path: str) -> list[tuple[str, str]]:
    """(prompt, response) examples, each repeated round(weight) times (at least once)."""
    examples = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                examples += [(r["prompt"], r["response"])] * max(1, round(float(r.get("weight", 1.0))))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                raise ValueError(f"{path}:{n}: not a trace record ({err})") from None
    return examples
