"""The group collector: completions in, whole scored groups out (SPEC.md §1, §3).

A group is complete when all G completions of one request are scored. Complete groups go
to a bounded queue: when the trainer falls behind, ``put`` blocks, which blocks the
verifier threads, which blocks the generator's hand-off: back-pressure all the way up.
Everything that enters is accounted for: a completion is eventually trained, filtered (in
a zero-variance group), or left unconsumed when the run stops, and the collector keeps a
length histogram of each (SPEC.md §3: nothing may be dropped for being late).
"""

from __future__ import annotations

import collections
import queue
import threading

from magjax.types import ScoredCompletion, ScoredGroup


class GroupCollector:
    def __init__(self, group_size: int, max_groups: int):
        self.group_size = group_size
        self.groups: queue.Queue[ScoredGroup] = queue.Queue(maxsize=max_groups)
        self._partial: dict[tuple[str, int], list[ScoredCompletion]] = collections.defaultdict(list)
        self._lock = threading.Lock()
        self.finished = collections.Counter()  # completion length -> count, as scored
        self._closed = False
        self._leftover: list[ScoredGroup] = []  # groups completed after close()

    def add(self, scored: ScoredCompletion):
        """Adds one scored completion; emits its request's group when the group is whole."""
        key = (scored.completion.problem_id, scored.completion.uid)
        with self._lock:
            self.finished[len(scored.completion.tokens)] += 1
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
