"""A resumable, shuffling, multi-host-sharded iterator over problems.

Its whole position is ``(epoch, index)``: each epoch is a fresh permutation drawn from
``(seed, epoch)``, and shard ``k`` of ``n`` takes every n-th element of it, so every
process sees a disjoint, equally sized share and a restored iterator continues with
exactly the element an uninterrupted one would have produced. The state is a small dict
that goes into the checkpoint. (Grain's checkpointable iterators do the same for large
record files; a problem set fits in memory, and this needs no extra dependency.)
"""

from __future__ import annotations

import numpy as np

from magjax.types import Problem


class ProblemIterator:
    def __init__(self, problems: list[Problem], *, seed: int = 0, shard_index: int = 0, shard_count: int = 1,
                 shuffle: bool = True):
        if not 0 <= shard_index < shard_count:
            raise ValueError(f"shard_index {shard_index} outside [0, {shard_count})")
        if len(problems) < shard_count:
            raise ValueError(f"{len(problems)} problems cannot be split over {shard_count} shards")
        self.problems, self.seed, self.shuffle = problems, seed, shuffle
        self.shard_index, self.shard_count = shard_index, shard_count
        self.epoch, self.index = 0, 0
        self._order = self._epoch_order()

    def _epoch_order(self) -> np.ndarray:
        n = len(self.problems) - len(self.problems) % self.shard_count  # equal shares: drop the remainder
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(len(self.problems)) if self.shuffle
                 else np.arange(len(self.problems)))
        return order[:n][self.shard_index :: self.shard_count]

    def __iter__(self):
        return self

    def __next__(self) -> Problem:
        if self.index >= len(self._order):
            self.epoch, self.index = self.epoch + 1, 0
            self._order = self._epoch_order()
        problem = self.problems[int(self._order[self.index])]
        self.index += 1
        return problem

    def take(self, n: int) -> list[Problem]:
        return [next(self) for _ in range(n)]

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "shard_index": self.shard_index,
                "shard_count": self.shard_count, "size": len(self.problems)}

    def set_state(self, state: dict):
        for key in ("seed", "shard_index", "shard_count", "size"):
            mine = len(self.problems) if key == "size" else getattr(self, key)
            if state[key] != mine:
                raise ValueError(f"iterator state was saved with {key}={state[key]}, this iterator has {mine}")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._epoch_order()
