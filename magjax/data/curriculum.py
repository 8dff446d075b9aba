"""Curriculum: a run as a sequence of stages (SPEC.md §4), each a gin-configured record.

A stage starts at an optimizer batch and may change what the run samples from (another
problem set, a difficulty or pass-rate window over it), how long completions may grow
(``max_new_tokens``, the length penalty's ``l_max`` / ``l_cache``) and the batch sizes
(``n_batch``, ``n_minibatch``, ``n_async``; Magistral shrank them as lengths grew, to keep
the KV cache in memory). Fields left ``None`` keep the value in force. ``loop.run``
switches stages at step boundaries: completions generated under the previous stage are
still trained (nothing is dropped for being late), new requests follow the new stage.

    RunConfig.stages = (@easy/Stage(), @hard/Stage())
    easy/Stage.start_step = 1
    easy/Stage.max_difficulty = 2
    hard/Stage.start_step = 200
    hard/Stage.min_difficulty = 2
    hard/Stage.max_new_tokens = 24576
    hard/Stage.n_batch = 4096
"""

from __future__ import annotations

import dataclasses

from magjax.types import Problem

_RUN_FIELDS = ("max_new_tokens", "n_batch", "n_minibatch", "n_async")
_REWARD_FIELDS = ("l_max", "l_cache")


@dataclasses.dataclass(frozen=True)
class Stage:
    start_step: int = 1  # the first optimizer batch trained under this stage
    data: str | None = None  # a problem file / dataset directory; None = the run's problems
    min_difficulty: float | None = None  # window on Problem.difficulty (problems without one are kept)
    max_difficulty: float | None = None
    min_pass_rate: float | None = None  # window on Problem.pass_rate (from `magjax filter`)
    max_pass_rate: float | None = None
    max_new_tokens: int | None = None
    l_max: int | None = None
    l_cache: int | None = None
    n_batch: int | None = None
    n_minibatch: int | None = None
    n_async: int | None = None

    def __post_init__(self):
        if self.start_step < 1:
            raise ValueError(f"Stage.start_step must be >= 1, got {self.start_step}")


def validate(stages: tuple[Stage, ...]):
    starts = [s.start_step for s in stages]
    if starts and (starts != sorted(set(starts))):
        raise ValueError(f"RunConfig.stages: start steps must strictly increase, got {starts}")


def index_at(stages: tuple[Stage, ...], step: int) -> int:
    """The stage in force at optimizer batch ``step``; -1 before the first (or with none)."""
    current = -1
    for i, s in enumerate(stages):
        if s.start_step <= step:
            current = i
    return current


def settings(stages: tuple[Stage, ...], index: int, run_config, reward_config):
    """(run config, reward config) in force during stage ``index``: each stage's non-None
    fields applied in order on top of the run's own, so a stage inherits what it leaves out."""
    run_changes, reward_changes = {}, {}
    for s in stages[: index + 1]:
        run_changes |= {f: getattr(s, f) for f in _RUN_FIELDS if getattr(s, f) is not None}
        reward_changes |= {f: getattr(s, f) for f in _REWARD_FIELDS if getattr(s, f) is not None}
    # replace() re-runs each config's validation: a stage cannot break a constraint unseen.
    return dataclasses.replace(run_config, **run_changes), dataclasses.replace(reward_config, **reward_changes)


def select(problems: list[Problem], stage: Stage, name: str) -> list[Problem]:
    """The stage's problems: its difficulty and pass-rate windows over ``problems``."""
    def inside(value, lo, hi):
        return value is None or ((lo is None or value >= lo) and (hi is None or value <= hi))

    chosen = [p for p in problems if inside(p.difficulty, stage.min_difficulty, stage.max_difficulty)
              and inside(p.pass_rate, stage.min_pass_rate, stage.max_pass_rate)]
    if not chosen:
        raise ValueError(f"{name}: no problem inside its windows (difficulty [{stage.min_difficulty}, "
                         f"{stage.max_difficulty}], pass rate [{stage.min_pass_rate}, {stage.max_pass_rate}]) "
                         f"among {len(problems)}")
    return chosen
