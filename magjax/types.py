"""Data types that cross module boundaries, and the shape-letter legend.

Arrays in magjax carry their shape in their name: ``tokens_bt`` is ``[batch, time]``,
``logits_btv`` is ``[batch, time, vocab]``. The letters:

    b  batch (sequences, or slots in the sampler)     t  time / sequence position
    s  source positions of attention (keys)            v  vocabulary
    d  model width (embed)                             f  MLP hidden width
    h  query heads                                     k  key/value heads
    g  query heads per key/value head (h = k * g)      e  head dimension
    l  layers                                          m  microbatches
    n  groups (prompts)                                G  samples per group

Host-side records (``Problem`` … ``ScoredGroup``) hold Python and NumPy values; only
``TrainBatch`` (built in magjax.rl.batching) is arrays all the way down.

A problem travels whole: a ``Task`` (the problem record and the test sample its group is
graded on) rides on the generator's request, on every completion sampled for it and on
the scored group, so the verifier and the collector never look anything up by id.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Literal, Union

if TYPE_CHECKING:
    import jax
    import numpy as np

    Array = Union[jax.Array, np.ndarray]

ProblemKind = Literal["math", "code"]
FinishReason = Literal["eos", "stop", "length"]


@dataclasses.dataclass(frozen=True)
class IOTest:
    """A stdin/stdout test: the program's output must match ``stdout`` token by token."""

    stdin: str
    stdout: str


@dataclasses.dataclass(frozen=True)
class AssertTest:
    """A HumanEval-style test: ``code`` defines ``check(candidate)``; Python only."""

    code: str
    entry_point: str


@dataclasses.dataclass(frozen=True)
class Problem:
    """One training or evaluation problem (SPEC.md §4)."""

    id: str
    kind: ProblemKind
    prompt: str
    answer: str | None = None  # math: the reference answer
    tests: tuple = ()  # code: IOTest or AssertTest records
    code_language: str | None = None  # code: python | cpp
    language: str = "en"  # natural language of the prompt (ISO 639-1)
    difficulty: float | None = None
    pass_rate: float | None = None
    source: str | None = None
    solutions: tuple = ()  # code: known-correct programs in code_language (for test validation)

    def __post_init__(self):
        if self.kind not in ("math", "code"):
            raise ValueError(f"problem {self.id!r}: kind must be math or code, got {self.kind!r}")
        if self.kind == "math" and not self.answer:
            raise ValueError(f"problem {self.id!r}: a math problem needs an answer")
        if self.kind == "code":
            if not self.tests:
                raise ValueError(f"problem {self.id!r}: a code problem needs tests")
            if self.code_language not in ("python", "cpp"):
                raise ValueError(f"problem {self.id!r}: code_language must be python or cpp, got {self.code_language!r}")


@dataclasses.dataclass(frozen=True)
class Task:
    """A problem as posed to the policy: the record, and the tests its group is graded on.

    ``tests`` is the group's sample of ``problem.tests`` (SPEC.md §2: the same sample for
    every completion of a group); None grades on all of them (and for math).
    """

    problem: Problem
    tests: tuple | None = None


@dataclasses.dataclass(frozen=True)
class PolicyVersion:
    """Which weights produced something: incremented once per optimizer step."""

    version: int


@dataclasses.dataclass
class Completion:
    """One sampled response, with what the trainer needs to score and learn from it.

    ``logprobs`` are per completion token, under the distribution the token was drawn from
    (the sampler's pi_old); ``versions`` the policy version that produced each token.
    """

    problem_id: str
    sample_index: int
    prompt_tokens: list[int]
    tokens: list[int]
    logprobs: list[float]
    versions: list[int]
    text: str = ""
    finish_reason: FinishReason = "eos"
    uid: int = -1  # the request it belongs to (one uid per group)
    task: Task | None = None  # what it answers, carried from the request (None: a bare prompt)


@dataclasses.dataclass
class ScoredCompletion:
    """A completion with its reward breakdown (magjax.rewards.reward.RewardBreakdown)."""

    completion: Completion
    reward: object


@dataclasses.dataclass
class ScoredGroup:
    """The G completions of one prompt, scored; advantages are filled by the trainer side."""

    problem_id: str
    completions: list[Completion]
    rewards: list[float]
    correct: list[bool] | None = None
    task: Task | None = None  # the problem the group answers (None for SFT examples)
    scored: list[ScoredCompletion] = dataclasses.field(default_factory=list)  # full reward breakdowns

    @property
    def size(self) -> int:
        return len(self.completions)


@dataclasses.dataclass
class TrainBatch:
    """One minibatch as fixed-shape arrays ``[m, b, t]``: m microbatches of b packed rows.

    Position j of a row holds an input token and the next token to predict (``targets_mbt``);
    ``weights_mbt`` is the token's share of the loss (0 for prompt, padding and filtered
    tokens), ``old_logprobs_mbt`` the sampler's log-probability of the target and
    ``advantages_mbt`` its sequence's advantage. ``segment_ids_mbt`` (0 = padding) keep packed
    sequences from attending to each other; ``positions_mbt`` restart at 0 for each sequence.
    ``trainer_old_logprobs_mbt`` is None, or, for the decoupled objective
    (``LossConfig.decoupled_old_policy``), the trainer's own log-probability of the target
    under the parameters at the start of the batch (``train_step.recompute_old_logprobs``).
    NumPy on the host (batching.py), jax.Array once placed (train_step.place_batch). A JAX
    pytree once magjax.rl is imported (registered there: this module imports no JAX, so
    the verifiers and the data tools never load it).
    """

    tokens_mbt: Array  # int32
    targets_mbt: Array  # int32
    positions_mbt: Array  # int32
    segment_ids_mbt: Array  # int32
    weights_mbt: Array  # float32
    old_logprobs_mbt: Array  # float32
    advantages_mbt: Array  # float32
    trainer_old_logprobs_mbt: Array | None = None  # float32

