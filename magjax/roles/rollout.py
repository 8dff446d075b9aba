"""The rollout role: prompts in, scored completions out.

    problems ─▶ Requests ─▶ Generator (engine: jitted prefill/decode) ─▶ VerifierPool ─▶ GroupCollector
                (uid, Task)   continuous batching, new weights mid-flight    grade       whole groups

Built in one place and used three ways: RL streams groups from it (``start`` in async
mode, or ``next_groups`` batch by batch in sync mode), evaluation and difficulty
filtering draw k samples of given problems (``sample``). Each request carries its
``Task`` (the problem record and its test sample) to every completion, so grading and
grouping need no table keyed by id.
"""

from __future__ import annotations

import collections
import contextlib
import queue
import threading
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

from magjax.data.iterator import ProblemIterator
from magjax.models.config import ModelConfig
from magjax.models.tokenizer import ChatFormat, Tokenizer
from magjax.rewards import code as code_lib
from magjax.rewards.pool import PoolConfig, VerifierPool
from magjax.rewards.reward import RewardConfig
from magjax.rl.collector import GroupCollector
from magjax.sampling.engine import Engine, EngineConfig, SamplingConfig
from magjax.sampling.generator import Generator, Request
from magjax.sampling.turns import Turns
from magjax.types import Completion, Problem, ScoredCompletion, ScoredGroup, Task


class Requests:
    """Turns problems into generator requests: one uid per group, unique over the job, and
    the group's test sample chosen once (SPEC.md §2: the same tests for all G completions)."""

    def __init__(self, tokenizer: Tokenizer, chat: ChatFormat, process: int = 0, processes: int = 1):
        self.tokenizer, self.chat, self.process, self.processes = tokenizer, chat, process, processes
        self._iterator: ProblemIterator | None = None
        self._group_size, self._max_new_tokens, self._max_tests = 1, 1, 0
        self._count = 0  # requests this process made
        self._lock = threading.Lock()

    def switch(self, iterator: ProblemIterator, group_size: int, max_new_tokens: int, max_tests: int):
        """A new curriculum stage: later requests come from ``iterator`` with these sizes."""
        with self._lock:
            self._iterator, self._group_size = iterator, group_size
            self._max_new_tokens, self._max_tests = max_new_tokens, max_tests

    def state(self) -> dict:
        return {"next_uid": self._count}

    def restore(self, state: dict):
        # Groups in flight at save time were abandoned: nothing is outstanding after a restart.
        self._count = int(state["next_uid"])

    def next(self) -> Request:
        with self._lock:
            problem = next(self._iterator)
            self._count += 1
            count, group_size, max_new, max_tests = self._count, self._group_size, self._max_new_tokens, self._max_tests
        # Unique over the job: the uid seeds this group's sampling (engine.py), so it must
        # not depend on which process or slot runs it.
        uid = (count - 1) * self.processes + self.process + 1
        tests = (tuple(code_lib.sample_tests(list(problem.tests), max_tests, f"{problem.id}/{uid}"))
                 if problem.kind == "code" else None)
        return Request(problem.id, self.chat.encode(self.tokenizer, problem.prompt), group_size, max_new,
                       uid, Task(problem, tests))


class Rollout:
    """The engine, the generator, the verifier pool and (for RL) the group collector.

    ``requests`` and ``collector`` make it an RL rollout; ``streaming`` (async mode) runs
    the generator in its own thread, fed by ``requests`` and handing each completion to
    the verifiers as it finishes. ``share_weights``: the weights delivered are the
    trainer's own (one mesh), and the engine reads them as they are where its layout
    agrees: no sampler copy at all. Nothing may then generate while the trainer steps: a
    sync run never does, and a streaming generator takes turns with the trainer
    (``trainer_turn``; sampling/turns.py).
    """

    def __init__(self, model_config: ModelConfig, tokenizer: Tokenizer, chat: ChatFormat, *, engine: EngineConfig,
                 sampling: SamplingConfig, reward: RewardConfig, pool: PoolConfig, mesh=None, params=None,
                 requests: Requests | None = None, collector: GroupCollector | None = None,
                 max_in_flight: int | None = None, streaming: bool = False, share_weights: bool = False):
        self.model_config, self.tokenizer, self.chat, self.mesh = model_config, tokenizer, chat, mesh
        self.share_weights = share_weights
        self.engine_config, self.sampling = engine, sampling
        self.requests, self.collector = requests, collector
        self._reward = reward  # the stage's: grades every completion handed on from now
        self.verifier = VerifierPool(reward, pool, on_scored=collector.add if collector is not None else None)
        self._weights = (params, 0, False)  # (params, version, already in the engine's layout)
        self.generator = self._generator(sampling, max_in_flight=max_in_flight,
                                         on_complete=self._grade if streaming else None,
                                         feed=requests.next if streaming else None)
        self.streaming = streaming
        # The turns exist only where there is something to take turns on.
        self._turns = Turns() if streaming and self.generator.engine.shared_weights else None
        self.generator.turns = self._turns
        self._closed: tuple[int, collections.Counter] | None = None  # close()'s result, once closed

    # ------------------------------------------------------------------ RL

    def switch(self, iterator: ProblemIterator, group_size: int, max_new_tokens: int, reward: RewardConfig,
               max_in_flight: int):
        """A curriculum stage takes over: its problems, lengths, reward and lag bound."""
        # A paged cache too small for one group at the longest prompt fails now, not mid-run.
        self.generator.check_room(self.engine_config.prompt_buckets[-1], group_size,
                                  f"groups of {group_size}", up_to=True)
        self.requests.switch(iterator, group_size, max_new_tokens, reward.max_tests)
        self._reward = reward
        self.generator.limit_in_flight(max_in_flight)

    def start(self):
        if self.streaming:
            self.generator.start()

    def trainer_turn(self):
        """Held by the trainer while it steps and publishes when the streaming generator
        reads its arrays: the generator's current step ends first, its next one reads the
        new version. Otherwise nothing to wait for."""
        return self._turns.training() if self._turns is not None else contextlib.nullcontext()

    def set_weights(self, params, version: int):
        """The weight store's delivery: laid out for the engine now, in the caller's thread,
        and only that copy kept (colocated, ``params`` are the trainer's own arrays, donated
        by its next step); the generator switches at its next chunk boundary. An engine that
        shares the trainer's arrays keeps them as they are: the trainer delivers the next
        version before anything generates again (in its turn, when streaming)."""
        if self.generator.engine.shared_weights:
            self._weights = (params, version, True)
            self.generator.set_weights(params, version, prepared=True)
            return
        prepared = _unaliased(self.generator.engine.prepare(params), params)
        jax.block_until_ready(prepared)
        self._weights = (prepared, version, True)
        self.generator.set_weights(prepared, version, prepared=True)

    def _generator(self, sampling: SamplingConfig, **kw) -> Generator:
        engine = Engine(self.model_config, self.engine_config, sampling, self.tokenizer.eos_id, mesh=self.mesh,
                        share_weights=self.share_weights)
        params, version, prepared = self._weights
        return Generator(engine, params, version, prepared=prepared, decode_text=self.tokenizer.decode, **kw)

    def _grade(self, completion: Completion):
        if self.collector is not None:
            self.collector.arrive(completion)
        return self.verifier.submit(completion.task.problem, completion, completion.task.tests, self._reward)

    def next_groups(self, count: int, stop: Callable[[], bool], timeout_s: float) -> list[ScoredGroup]:
        """This process's next ``count`` whole groups (fewer when ``stop()``).

        Sync mode generates and grades exactly that many now; async mode takes them from
        the collector as the streaming pipeline completes them.
        """
        if stop():
            return []
        if not self.streaming:
            reqs = [self.requests.next() for _ in range(count)]
            for future in [self._grade(c) for c in self.generator.generate(reqs)]:
                future.result()
            return [self.collector.groups.get_nowait() for _ in reqs]
        groups, start = [], time.perf_counter()
        while len(groups) < count and not stop():
            try:
                groups.append(self.collector.groups.get(timeout=0.2))
            except queue.Empty:
                if self.generator.error is not None:
                    raise RuntimeError("the generator thread failed") from self.generator.error
                if time.perf_counter() - start > timeout_s:
                    raise TimeoutError(f"no complete batch within {timeout_s} s (generator in flight "
                                       f"{self.generator.in_flight}, verifier backlog {self.verifier.backlog})")
        return groups

    def put_back(self, groups: list[ScoredGroup]):
        self.collector.put_back(groups)

    @property
    def queue_depth(self) -> int:
        return self.collector.groups.qsize()

    @property
    def generation(self):
        """The generator's counters (GeneratorStats): chunks, tokens, occupancy, idle time."""
        return self.generator.stats

    @property
    def finished(self) -> collections.Counter:
        """Completion length -> count, of every completion the generator finished (checkpointed)."""
        return self.collector.finished

    def restore_finished(self, counts: dict):
        self.collector.finished.update({int(n): c for n, c in counts.items()})

    def unconsumed(self) -> collections.Counter:
        """Lengths of completions scored but never handed to the trainer."""
        return self.collector.unconsumed()

    # ------------------------------------------------------------------ evaluation, filtering

    def sample(self, problems: list[Problem], samples: int, max_new_tokens: int, *, uids: list[int] | None = None,
               sampling: SamplingConfig | None = None) -> list[list[ScoredCompletion]]:
        """``samples`` graded completions of each problem, in sample order. ``uids`` seed each
        problem's random stream (default: a hash of its id); ``sampling`` overrides the
        rollout's own for this call (evaluation samples math and code differently): the
        requests carry it, so the same compiled engine serves. A streaming rollout's
        generator runs in its own thread; these requests then go to a generator of their own."""
        generator = self._generator(self.sampling) if self.streaming else self.generator
        uids = uids if uids is not None else [None] * len(problems)
        requests = [Request(p.id, self.chat.encode(self.tokenizer, p.prompt), samples, max_new_tokens, uid, Task(p),
                            sampling) for p, uid in zip(problems, uids)]
        futures = [self._grade(c) for c in generator.generate(requests)]
        by_request: dict[tuple[str, int], list[ScoredCompletion]] = {(r.problem_id, r.uid): [] for r in requests}
        for f in futures:
            scored = f.result()
            by_request[scored.completion.problem_id, scored.completion.uid].append(scored)
        return [sorted(by_request[r.problem_id, r.uid], key=lambda s: s.completion.sample_index) for r in requests]

    # ------------------------------------------------------------------ both

    def stats(self) -> dict:
        """The verifiers' figures and the size of every table kept per request (each bounded
        by the work in flight, never by the run's length)."""
        tables = {"rollout/weight_copy_bytes": self.weight_copy_bytes,
                  # seconds the generator has waited for the trainer's turns on shared weights
                  "rollout/trainer_turn_wait_s": self._turns.generator_wait_s if self._turns is not None else 0.0,
                  "rollout/open_groups": self.collector.open_groups if self.collector is not None else 0,
                  "rollout/generator_requests": self.generator.in_flight + self.generator.pending,
                  "verifier/waiting": self.verifier.waiting, "verifier/latency_samples": self.verifier.latency_samples}
        return self.verifier.stats() | tables

    @property
    def weight_copy_bytes(self) -> int:
        """Bytes of the sampler's own copy of the weights (all devices): 0 when its engine
        reads the trainer's arrays (``share_weights``)."""
        if self.generator.engine.shared_weights or self._weights[0] is None:
            return 0
        return sum(x.nbytes for x in jax.tree.leaves(self._weights[0]))

    def close(self) -> tuple[int, collections.Counter]:
        """Stops everything once; returns (every time) the sequences abandoned in flight
        (unfinished, so never counted) and the lengths of the finished completions cancelled
        in the verifier."""
        if self._closed is None:
            if self.collector is not None:
                self.collector.close()  # unblocks a verifier thread blocked on a full queue; keeps counting
            self.generator.stop()
            abandoned = self.generator.abandon()
            self._closed = (abandoned, self.verifier.close())
        return self._closed


def _unaliased(prepared: dict, params: dict) -> dict:
    """``prepared`` with a copy of any leaf that is one of ``params``' own buffers (jit may
    forward an unchanged input), so nothing the sampler keeps can be donated under it."""
    def buffers(x):
        return {s.data.unsafe_buffer_pointer() for s in x.addressable_shards}
    theirs = set().union(*(buffers(x) for x in jax.tree.leaves(params)))
    return jax.tree.map(lambda x: jnp.copy(x) if buffers(x) & theirs else x, prepared)


def pass_rate_source(rollout: Rollout, max_new_tokens: int, *, with_text: bool = False):
    """Difficulty filtering's source (data/filtering.py): k graded samples of a problem as
    (correct, extracted answer or None). With ``with_text``, (correct, response text)
    pairs: a teacher for data/distill.py."""

    def source(problem: Problem, k: int) -> list[tuple[bool, str | None]]:
        (scored,) = rollout.sample([problem], k, max_new_tokens)
        if with_text:
            return [(s.reward.is_correct, s.completion.text) for s in scored]
        return [(s.reward.is_correct, s.reward.extracted if problem.kind == "math" else None) for s in scored]

    return source
