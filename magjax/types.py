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
"""

from __future__ import annotations

import dataclasses
from typing import Literal

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

    @property
    def size(self) -> int:
        return len(self.completions)


@dataclasses.dataclass
class TrainBatch:
    """One minibatch as fixed-shape arrays ``[m, b, t]``: m microbatches of b packed rows.

    Position j of a row holds an input token and the next token to predict (``targets``);
    ``weights`` is the token's share of the loss (0 for prompt, padding and filtered
    tokens), ``old_logprobs`` the sampler's log-probability of the target and
    ``advantages`` its sequence's advantage. ``segment_ids`` (0 = padding) keep packed
    sequences from attending to each other; ``positions`` restart at 0 for each sequence.
    ``trainer_old_logprobs`` is None, or, for the decoupled objective
    (``LossConfig.decoupled_old_policy``), the trainer's own log-probability of the target
    under the parameters at the start of the batch (``train_step.recompute_old_logprobs``).
    """

    tokens: object
    targets: object
    positions: object
    segment_ids: object
    weights: object
    old_logprobs: object
    advantages: object
    trainer_old_logprobs: object = None


def _register_train_batch():
    import jax

    fields = [f.name for f in dataclasses.fields(TrainBatch)]
    jax.tree_util.register_dataclass(TrainBatch, data_fields=fields, meta_fields=[])


_register_train_batch()
