"""From scored groups to fixed-shape train batches (SPEC.md §1 and §3).

The steps, in order: remove zero-variance groups; split the rest into minibatches of
whole groups; per minibatch compute advantages and every token's loss weight; pack the
sequences into rows of a fixed length (longest first, first fit) and the rows into
microbatches. The number of microbatches is rounded up to a power of two, so a run
compiles the train step for a handful of shapes at most.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np

from magjax.rl import advantages as adv_lib
from magjax.types import ScoredGroup, TrainBatch


@dataclasses.dataclass(frozen=True)
class AdvantageConfig:
    """How scored groups become advantages and per-token loss weights (SPEC.md §1), on the
    host. Defaults are Magistral's. (The on-device objective is rl/losses.py's LossConfig.)"""

    # How token terms are normalised: "group" = divide by the group's total completion
    # length and average over groups (Magistral); "minibatch" = divide by the minibatch's
    # completion tokens (DAPO/verl); "constant" = divide by constant_normalizer per
    # sequence (Dr. GRPO).
    aggregation: Literal["group", "minibatch", "constant"] = "group"
    constant_normalizer: float = 1024.0
    # "none": supervised examples, not groups: no advantages and nothing to filter (SFT).
    advantage_mode: Literal["magistral", "grpo", "dr_grpo", "rloo", "none"] = "magistral"
    advantage_eps: float = 1e-6
    filter_on: Literal["reward", "correct"] = "reward"  # zero-variance test

    def __post_init__(self):
        if self.aggregation not in ("group", "minibatch", "constant"):
            raise ValueError(f"AdvantageConfig.aggregation must be group, minibatch or constant, "
                             f"got {self.aggregation!r}")
        if self.constant_normalizer <= 0:
            raise ValueError("AdvantageConfig.constant_normalizer must be positive")
        if self.advantage_mode not in (*adv_lib.MODES, "none"):
            raise ValueError(f"AdvantageConfig.advantage_mode must be one of {adv_lib.MODES} or 'none', "
                             f"got {self.advantage_mode!r}")


# SFT examples: no advantages, every target token weighs the same (the minibatch token mean).
SFT = AdvantageConfig(aggregation="minibatch", advantage_mode="none")


@dataclasses.dataclass(frozen=True)
class PackingConfig:
    rows: int = 8  # b: rows per microbatch; a multiple of the mesh's data-parallel size
    row_len: int = 256  # t: tokens per row; a sequence (prompt + completion - 1) must fit
    # A per-chip token budget instead of a fixed ``rows``: each data-parallel shard of the
    # trainer's mesh gets tokens_per_chip // row_len rows, so a microbatch grows with the
    # slice while each chip's activations stay the same size. 0: ``rows`` as given.
    tokens_per_chip: int = 0

    def __post_init__(self):
        if self.rows < 1 or self.row_len < 2:
            raise ValueError(f"PackingConfig: rows >= 1 and row_len >= 2 required, got {self}")
        if self.tokens_per_chip and self.tokens_per_chip < self.row_len:
            raise ValueError(f"PackingConfig.tokens_per_chip ({self.tokens_per_chip}) must hold at least one row "
                             f"of row_len {self.row_len}")

    def for_mesh(self, data_parallel: int) -> PackingConfig:
        """The packing for a trainer mesh with ``data_parallel`` batch shards (its data x fsdp
        axes): ``rows`` from the token budget when one is set, else unchanged."""
        if not self.tokens_per_chip:
            return self
        return dataclasses.replace(self, rows=data_parallel * (self.tokens_per_chip // self.row_len),
                                   tokens_per_chip=0)


@dataclasses.dataclass
class PackedSequence:
    """One completion ready to pack: its tokens, where the completion starts, and per-token data."""

    tokens: list[int]  # prompt + completion
    prompt_len: int
    old_logprobs: list[float]  # per completion token
    advantage: float
    weight: float  # loss weight of each of its completion tokens

    @property
    def slots(self) -> int:  # inputs predict the next token: n tokens use n-1 positions
        return len(self.tokens) - 1


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of indices whose lengths sum to at most ``capacity``: longest first, first fit."""
    bins: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        if lengths[i] > capacity:
            raise ValueError(f"a sequence of {lengths[i]} positions does not fit rows of {capacity}; "
                             "raise PackingConfig.row_len")
        for b, room in enumerate(free):
            if lengths[i] <= room:
                bins[b].append(i)
                free[b] -= lengths[i]
                break
        else:
            bins.append([i])
            free.append(capacity - lengths[i])
    return bins


def token_weights(completion_lens_nG: list[list[int]], config: AdvantageConfig) -> list[np.ndarray]:
    """Each sequence's per-token loss weight, one array [G] per group of the minibatch.

    group:     1 / (n * tokens of its group)     -> mean over groups of per-group token means
    minibatch: 1 / (tokens of the minibatch)      -> token mean over the minibatch
    constant:  1 / (C * number of sequences)      -> Dr. GRPO's constant normaliser
    SFT uses the minibatch token mean (``SFT``).
    """
    lens = [np.asarray(g, np.float64) for g in completion_lens_nG]
    n = len(lens)
    num_seqs = sum(len(g) for g in lens)
    total = sum(float(g.sum()) for g in lens)
    mode = config.aggregation
    out = []
    for g in lens:
        if mode == "group":
            out.append(np.full(len(g), 1.0 / (n * max(g.sum(), 1.0))))
        elif mode == "minibatch":
            out.append(np.full(len(g), 1.0 / max(total, 1.0)))
        else:
            out.append(np.full(len(g), 1.0 / (config.constant_normalizer * num_seqs)))
    return out


def filter_groups(groups: list[ScoredGroup], config: AdvantageConfig) -> tuple[list[ScoredGroup], list[ScoredGroup]]:
    """(kept, removed): groups whose rewards (or correctness) are all equal are removed."""
    kept, removed = [], []
    for g in groups:
        rewards = np.asarray([g.rewards])
        correct = np.asarray([g.correct]) if g.correct is not None else None
        dead = adv_lib.zero_variance_groups(rewards, correct, on=config.filter_on)[0]
        (removed if dead else kept).append(g)
    return kept, removed


def split_minibatches(groups: list, n_minibatch: int) -> list[list]:
    """Whole groups into ``n_minibatch`` nearly equal consecutive parts (empty parts dropped)."""
    if n_minibatch < 1:
        raise ValueError(f"n_minibatch must be >= 1, got {n_minibatch}")
    bounds = np.linspace(0, len(groups), n_minibatch + 1).round().astype(int)
    return [groups[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def minibatch_sequences(groups: list[ScoredGroup], config: AdvantageConfig) -> list[PackedSequence]:
    """Advantages and weights for one minibatch of (kept) groups, as packable sequences
    (``SFT``: examples, no advantages)."""
    completion_lens = [[len(c.tokens) for c in g.completions] for g in groups]
    weights = token_weights(completion_lens, config)
    if config.advantage_mode != "none":
        if len({g.size for g in groups}) != 1:
            raise ValueError("GRPO groups in one minibatch must have the same size G")
        advs = adv_lib.advantages(np.asarray([g.rewards for g in groups]), config.advantage_mode,
                                  config.advantage_eps)
    else:
        advs = [[0.0] * g.size for g in groups]
    seqs = []
    for g, adv_G, w_G in zip(groups, advs, weights):
        for c, a, w in zip(g.completions, adv_G, w_G):
            if len(c.logprobs) != len(c.tokens):
                raise ValueError(f"completion {c.problem_id}#{c.sample_index}: {len(c.tokens)} tokens "
                                 f"but {len(c.logprobs)} log-probs")
            seqs.append(PackedSequence(list(c.prompt_tokens) + list(c.tokens), len(c.prompt_tokens),
                                 list(c.logprobs), float(a), float(w) if c.tokens else 0.0))
    return seqs


def pack(seqs: list[PackedSequence], packing: PackingConfig, min_microbatches: int = 1) -> tuple[TrainBatch, dict]:
    """Packs sequences into a TrainBatch [m, b, t] and reports the padding fraction."""
    if packing.tokens_per_chip:
        raise ValueError("PackingConfig.tokens_per_chip sets rows per trainer mesh: resolve it with "
                         "PackingConfig.for_mesh(data-parallel shards) before packing")
    b, t = packing.rows, packing.row_len
    row_bins = first_fit_decreasing([s.slots for s in seqs], t)
    needed = max(math.ceil(len(row_bins) / b), min_microbatches, 1)
    m = 1 << (needed - 1).bit_length()  # next power of two: few distinct shapes
    shape = (m * b, t)
    tokens = np.zeros(shape, np.int32)
    targets = np.zeros(shape, np.int32)
    positions = np.zeros(shape, np.int32)
    segment_ids = np.zeros(shape, np.int32)
    weights = np.zeros(shape, np.float32)
    old_logprobs = np.zeros(shape, np.float32)
    advantages = np.zeros(shape, np.float32)
    for row, members in enumerate(row_bins):
        offset = 0
        for seg, i in enumerate(members, start=1):
            s = seqs[i]
            n = s.slots
            span = slice(offset, offset + n)
            tokens[row, span] = s.tokens[:-1]
            targets[row, span] = s.tokens[1:]
            positions[row, span] = np.arange(n)
            segment_ids[row, span] = seg
            # Target j+1 is a completion token iff j + 1 >= prompt_len.
            first = offset + s.prompt_len - 1
            weights[row, first : offset + n] = s.weight
            old_logprobs[row, first : offset + n] = s.old_logprobs
            advantages[row, span] = s.advantage
            offset += n
    as_mbt = lambda x: x.reshape(m, b, t)  # noqa: E731
    batch = TrainBatch(*(as_mbt(x) for x in (tokens, targets, positions, segment_ids, weights,
                                              old_logprobs, advantages)))  # fields in declaration order
    used = sum(s.slots for s in seqs)
    stats = {"padding_fraction": 1.0 - used / (m * b * t), "microbatches": m,
             "completion_tokens": int(sum(len(s.tokens) - s.prompt_len for s in seqs))}
    return batch, stats


def minibatches(kept: list[ScoredGroup], config: AdvantageConfig, packing: PackingConfig,
                n_minibatch: int = 1) -> tuple[list[TrainBatch], dict]:
    """Groups already filtered: split, weigh, pack. One TrainBatch per optimizer step."""
    batches, paddings = [], []
    for part in split_minibatches(kept, n_minibatch):
        batch, stats = pack(minibatch_sequences(part, config), packing)
        batches.append(batch)
        paddings.append(stats["padding_fraction"])
    return batches, {"groups_kept": len(kept), "padding_fraction": float(np.mean(paddings)) if paddings else 0.0}


def make_minibatches(groups: list[ScoredGroup], config: AdvantageConfig, packing: PackingConfig,
                     n_minibatch: int = 1) -> tuple[list[TrainBatch], dict]:
    """The whole host-side path: filter, split, weigh, pack. One TrainBatch per optimizer step."""
    kept, removed = filter_groups(groups, config) if config.advantage_mode != "none" else (groups, [])
    batches, stats = minibatches(kept, config, packing, n_minibatch)
    return batches, stats | {"groups_filtered": len(removed), "removed": [g.problem_id for g in removed]}
