"""Turns on weights that the trainer and the sampler share.

When the sampler reads the trainer's own parameter arrays (one mesh, a backend that reads
the trainer's layout: ``Engine(share_weights=True)``), the train step, which donates those
arrays to update them in place, must not overlap any sampler call that reads them. In a
sync run that holds by construction (one thread does both). In an async run the generator
thread and the trainer take turns: a generator step (admissions and one decode chunk)
runs whole in its turn, and the trainer's turn (its step, then the publication of the new
arrays) comes as soon as the current generator step ends; the generator's next step then
reads the new version. On one set of chips the two programs ran one after the other
anyway; what the turns remove is the second copy of the weights.
"""

from __future__ import annotations

import contextlib
import threading
import time


class Turns:
    def __init__(self):
        self._cond = threading.Condition()
        self._generating = False
        self._training = False
        self._trainer_waiting = 0
        self.generator_wait_s = 0.0  # time the generator spent waiting for the trainer's turns

    @property
    def trainer_waiting(self) -> bool:
        return self._trainer_waiting > 0

    @contextlib.contextmanager
    def generating(self):
        """The generator's turn: waits while the trainer steps or asks to."""
        t0 = time.perf_counter()
        with self._cond:
            self._cond.wait_for(lambda: not self._training and not self._trainer_waiting)
            self._generating = True
        self.generator_wait_s += time.perf_counter() - t0
        try:
            yield
        finally:
            with self._cond:
                self._generating = False
                self._cond.notify_all()

    @contextlib.contextmanager
    def training(self):
        """The trainer's turn: next after the generator's current step, before its next one."""
        with self._cond:
            self._trainer_waiting += 1
            try:
                self._cond.wait_for(lambda: not self._generating)
            finally:
                self._trainer_waiting -= 1
            self._training = True
        try:
            yield
        finally:
            with self._cond:
                self._training = False
                self._cond.notify_all()
