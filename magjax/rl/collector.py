"""The group collector: completions in, whole scored groups out (SPEC.md §1, §3).

A group is complete when all G completions of one request are scored. Complete groups go
to a bounded queue: when the trainer falls behind, ``put`` blocks, which blocks the
verifier threads, which blocks the generator's hand-off: back-pressure all the way up.
Everything that enters is accounted for. A completion is counted ``finished`` when the
generator hands it to the verifiers (``arrive``), and ends in exactly one bucket: trained,
filtered (a zero-variance group), stale (beyond ``RunConfig.max_lag_versions``; the loop
keeps those three), unconsumed (scored, never handed to the trainer: ``unconsumed``) or
cancelled (still waiting in the verifier at shutdown: ``VerifierPool.close``). Its only
table keyed by request, the partial groups, loses a group's entry the moment the group is
whole, so it holds at most the groups in flight.
"""

from __future__ import annotations

import collections
import queue
import threading

from magjax.types import Completion, ScoredCompletion, ScoredGroup


class GroupCollector:
    def __init__(self, group_size: int, max_groups: int):
        self.group_size = group_size
        self.groups: queue.Queue[ScoredGroup] = queue.Queue(maxsize=max_groups)
        self._partial: dict[tuple[str, int], list[ScoredCompletion]] = collections.defaultdict(list)
        self._lock = threading.Lock()
        self.finished = collections.Counter()  # completion length -> count, as finished by the generator
        self._closed = False
        self._leftover: list[ScoredGroup] = []  # groups completed after close()

    def arrive(self, completion: Completion):
        """Counts a completion the generator finished, as it goes to the verifiers."""
        with self._lock:
            self.finished[len(completion.tokens)] += 1

    @property
    def open_groups(self) -> int:
        """Requests with some but not all completions scored (bounded by the groups in flight)."""
        with self._lock:
            return len(self._partial)

    def add(self, scored: ScoredCompletion):
        """Adds one scored completion; emits its request's group when the group is whole."""
        key = (scored.completion.problem_id, scored.completion.uid)
        with self._lock:
            members = self._partial[key]
            members.append(scored)
            if len(members) < self.group_size:
                return
            del self._partial[key]
        members.sort(key=lambda s: s.completion.sample_index)
        group = ScoredGroup(key[0], [s.completion for s in members], [float(s.reward.total) for s in members],
                            [bool(s.reward.is_correct) for s in members], task=members[0].completion.task,
                            scored=members)
        with self._lock:
            if self._closed:
                self._leftover.append(group)
                return
        self.groups.put(group)  # blocks when the trainer lags

    def put_back(self, groups: list[ScoredGroup]):
        """Returns groups taken but not trained (a batch cut short by a stop signal)."""
        for g in groups:
            self.groups.put(g)

    def close(self):
        """Stops blocking: later groups are kept aside, and the queue is emptied so that a
        producer blocked in ``put`` can finish (everything stays counted as unconsumed)."""
        with self._lock:
            self._closed = True
        while True:
            try:
                self._leftover.append(self.groups.get_nowait())
            except queue.Empty:
                return

    def unconsumed(self) -> collections.Counter:
        """Lengths of completions scored but never handed to the trainer (run stopped)."""
        out = collections.Counter()
        with self._lock:
            for members in self._partial.values():
                out.update(len(s.completion.tokens) for s in members)
            for g in self._leftover:
                out.update(len(c.tokens) for c in g.completions)
            self._leftover.clear()
        while True:
            try:
                g = self.groups.get_nowait()
            except queue.Empty:
                return out
            out.update(len(c.tokens) for c in g.completions)
