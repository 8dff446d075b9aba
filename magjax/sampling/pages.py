"""The host's book of the paged KV cache: which pages each slot holds, which are free.

The engine's cache is a pool of fixed-size pages per layer; a slot's page table row says
which pool page holds each ``page_size`` positions of its sequence. The device only reads
the table (a new one is handed to every prefill and decode call); all allocation happens
here, between calls, so the compiled functions never change shape.

* A group's prompt is prefilled once: the pages its whole prompt fills are shared by
  the G samples (one reference each) and never written again; the prompt's partial last
  page is written into each sample's own first page, where its completion continues.
* Pages are taken as sequences grow (``grow``, before each decode chunk, for the
  positions that chunk may write) and returned when the last sample holding them ends,
  or, for sliding-window models, once the window has passed them (``trim``).
* With ``shards`` > 1 the slots and the pages are split into equal contiguous ranges, one
  per data-parallel shard of the mesh: a slot only ever holds pages of its own shard, so
  each device's attention reads only its own part of the pool (a group spread over
  shards keeps one copy of its prompt in each).

Nothing is ever truncated: a slot that cannot grow is reported (``grow`` returns False)
and the generator decides whom to suspend.
"""

from __future__ import annotations

import numpy as np


class PoolExhausted(RuntimeError):
    """A request can never fit: it needs more pages than a shard's whole pool."""


class PagePool:
    def __init__(self, pages: int, page_size: int, slots: int, max_len: int, shards: int = 1):
        if page_size < 1 or pages < 1:
            raise ValueError(f"page pool: need page_size >= 1 and pages >= 1, got {page_size} and {pages}")
        if slots % shards or pages % shards:
            raise ValueError(f"page pool: {slots} slots and {pages} pages must split evenly over {shards} shards")
        self.pages, self.page_size, self.slots, self.max_len, self.shards = pages, page_size, slots, max_len, shards
        self.pages_per_slot = -(-max_len // page_size)
        self.pages_per_shard, self.slots_per_shard = pages // shards, slots // shards
        if self.pages_per_shard < self.pages_per_slot:
            raise ValueError(f"page pool: {self.pages_per_shard} pages per shard cannot hold one sequence of "
                             f"max_len {max_len} ({self.pages_per_slot} pages of {page_size}); raise "
                             f"EngineConfig.pages or page_size")
        # Table entries past a slot's pages point outside the pool: writes there are dropped.
        self.unused = pages
        self.table_bn = np.full((slots, self.pages_per_slot), self.unused, np.int32)
        self._held = [0] * slots  # pages in each slot's table row (a prefix)
        self._refs = np.zeros((pages,), np.int32)
        # Free pages per shard, lowest first out (a stack popped from the end).
        self._free = [list(range((s + 1) * self.pages_per_shard - 1, s * self.pages_per_shard - 1, -1))
                      for s in range(shards)]

    # ------------------------------------------------------------------ queries

    def shard_of(self, slot: int) -> int:
        return slot // self.slots_per_shard

    def free(self, shard: int = 0) -> int:
        return len(self._free[shard])

    @property
    def free_total(self) -> int:
        return sum(len(f) for f in self._free)

    @property
    def used(self) -> int:
        return self.pages - self.free_total

    def pages_for(self, positions: int) -> int:
        """Pages covering positions [0, positions)."""
        return -(-min(positions, self.max_len) // self.page_size)

    def held(self, slot: int) -> list[int]:
        """The slot's table row up to its last page (``unused`` where a window trimmed one)."""
        return self.table_bn[slot, : self._held[slot]].tolist()

    def group_need(self, prompt_len: int, samples: int, reach: int) -> int:
        """Pages a group of ``samples`` needs to hold its prompt and grow to ``reach``
        positions: the prompt's full pages once, the rest once per sample."""
        shared = min(prompt_len, self.max_len) // self.page_size
        return shared + samples * (self.pages_for(reach) - shared)

    # ------------------------------------------------------------------ changes

    def admit(self, slots: list[int], prompt_len: int, reach: int) -> bool:
        """Gives ``slots`` (one group) the prompt's shared pages and their own pages up to
        ``reach`` positions; False (nothing taken) when a shard lacks them. A group spread
        over several shards shares one copy of the prompt per shard."""
        if any(self._held[s] for s in slots):
            raise ValueError(f"page pool: slots {slots} must be free")
        by_shard: dict[int, list[int]] = {}
        for slot in slots:
            by_shard.setdefault(self.shard_of(slot), []).append(slot)
        if any(self.group_need(prompt_len, len(mine), reach) > self.free(shard) for shard, mine in by_shard.items()):
            return False
        for shard, mine in by_shard.items():
            shared = [self._take(shard) for _ in range(min(prompt_len, self.max_len) // self.page_size)]
            for slot in mine:
                for i, page in enumerate(shared):
                    self.table_bn[slot, i] = page
                    self._refs[page] += 1
                self._held[slot] = len(shared)
                self.grow(slot, reach)
            for page in shared:
                self._refs[page] -= 1  # _take's own reference: the slots hold them now
        return True

    def grow(self, slot: int, reach: int) -> bool:
        """Extends ``slot``'s pages to cover positions [0, reach); False when its shard ran
        out first (the pages taken so far stay with the slot)."""
        shard = self.shard_of(slot)
        need = self.pages_for(reach)
        while self._held[slot] < need:
            if not self._free[shard]:
                return False
            self.table_bn[slot, self._held[slot]] = self._take(shard)  # the slot's one reference
            self._held[slot] += 1
        return True

    def release(self, slot: int) -> None:
        """Returns the slot's pages (each to the free list once no other slot holds it)."""
        self._drop(slot, range(self._held[slot]))
        self._held[slot] = 0

    def trim(self, slot: int, first_position: int) -> None:
        """Returns the slot's pages that hold only positions before ``first_position``
        (a sliding window has moved past them: they are never read again)."""
        self._drop(slot, range(min(first_position // self.page_size, self._held[slot])))

    def _drop(self, slot: int, indices) -> None:
        shard = self.shard_of(slot)
        for i in indices:
            page = self.table_bn[slot, i]
            if page == self.unused:
                continue
            self._refs[page] -= 1
            if self._refs[page] == 0:
                self._free[shard].append(int(page))
            self.table_bn[slot, i] = self.unused

    def _take(self, shard: int) -> int:
        page = self._free[shard].pop()
        self._refs[page] = 1
        return page
