"""The host-side generation loop: continuous batching over the engine's slots.

The loop admits prompts into free slots (one prefill per prompt, G slots per prompt),
runs decode chunks, harvests finished sequences into ``Completion`` records and refills.
``set_weights`` may be called from any thread; the newest weights are picked up at the
next chunk boundary and every sequence in flight continues on them with its KV cache as
it is (Magistral's in-flight update). Each token is tagged with the version that sampled it.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import threading
import time
import zlib
from collections.abc import Callable

import numpy as np

from magjax.sampling.engine import EOS, RUNNING, Engine, SamplingConfig
from magjax.sampling.pages import PagePool, PoolExhausted
from magjax.sampling.turns import Turns
from magjax.types import Completion, Task

FINISH_NAMES = {EOS: "eos", 2: "length"}


@dataclasses.dataclass
class Request:
    """One prompt to sample ``num_samples`` completions of (a GRPO group)."""

    problem_id: str
    prompt: list[int]
    num_samples: int = 1
    max_new_tokens: int = 256
    uid: int | None = None  # the random stream's identity; default: a hash of problem_id
    task: Task | None = None  # what is asked, handed on to every completion untouched
    sampling: SamplingConfig | None = None  # how its samples are drawn; default: the engine's

    def __post_init__(self):
        if self.uid is None:
            self.uid = zlib.crc32(self.problem_id.encode()) & 0x7FFFFFFF


@dataclasses.dataclass
class _Slot:
    request: Request
    sample: int
    tokens: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    versions: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class GeneratorStats:
    chunks: int = 0
    slot_steps: int = 0  # slots x decode steps executed
    active_slot_steps: int = 0  # of which a slot was generating
    tokens: int = 0
    prefills: int = 0
    completions: int = 0
    abandoned: int = 0
    # Paged cache: sequences suspended for want of pages (their cache copied to the host
    # and restored on resumption) and admissions held back by a full pool.
    suspensions: int = 0
    admissions_waiting_for_pages: int = 0
    pages_peak: int = 0  # most pages held at once (of pages_total; 0 unpaged)
    pages_total: int = 0
    # The same two counts restricted to chunks that started with prompts still waiting:
    # occupancy when demand exceeds capacity (the steady state of an RL run).
    steady_slot_steps: int = 0
    steady_active_slot_steps: int = 0
    busy_s: float = 0.0
    waiting_s: float = 0.0  # time with nothing to generate (or paused)

    @property
    def occupancy(self) -> float:
        return self.active_slot_steps / self.slot_steps if self.slot_steps else 0.0

    @property
    def steady_occupancy(self) -> float:
        return self.steady_active_slot_steps / self.steady_slot_steps if self.steady_slot_steps else 0.0


class Generator:
    """Keeps up to ``max_in_flight`` sequences in flight on ``engine``.

    ``on_complete(completion)`` receives each finished sequence (it may block: that is
    the back-pressure that stops admissions when downstream lags). Drive it synchronously
    with ``generate``/``step`` or in a thread with ``start``.
    """

    def __init__(self, engine: Engine, params, version: int = 0, *, decode_text: Callable | None = None,
                 stop_strings: tuple[str, ...] = (), on_complete: Callable[[Completion], None] | None = None,
                 max_in_flight: int | None = None, feed: Callable[[], Request | None] | None = None,
                 prepared: bool = False, turns: Turns | None = None):
        self.engine = engine
        # Weights shared with a trainer in another thread: each step runs in its turn.
        self.turns = turns
        slots = engine.config.slots
        self.max_in_flight = min(max_in_flight or slots, slots)
        if stop_strings and decode_text is None:
            raise ValueError("stop strings need decode_text (a tokenizer's decode)")
        self.decode_text, self.stop_strings = decode_text, tuple(stop_strings)
        self.on_complete = on_complete
        self.feed = feed  # called for more work whenever nothing is pending: the loop never starves
        self.state = engine.init_state()
        self.stats = GeneratorStats()
        self._slots: dict[int, _Slot] = {}
        cfg = engine.config
        # The paged cache's book (None unpaged): pages per slot, taken as sequences grow.
        self.pool = (PagePool(cfg.pool_pages, cfg.page_size, cfg.slots, cfg.max_len, engine.page_shards)
                     if engine.paged else None)
        self._admitted: dict[int, int] = {}  # slot -> admission number: the oldest grow first
        self._admissions = 0
        self._suspended: dict[int, tuple] = {}  # slot -> (pages, host copies of them)
        self._pending: collections.deque[Request] = collections.deque()
        self._lock = threading.Condition()
        self._weights = (params, version)
        # (the _weights entry it came from, engine.prepare's output); ``prepared``: the
        # weights given are already in the engine's layout.
        self._prepared = (self._weights, params) if prepared else (None, None)
        self._paused = False
        self._stopping = False
        self._draining = False
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    # ------------------------------------------------------------------ control (any thread)

    def submit(self, requests: list[Request]):
        with self._lock:
            for r in requests:
                if r.num_samples > self.engine.config.slots:
                    raise ValueError(f"request {r.problem_id}: {r.num_samples} samples exceed "
                                     f"{self.engine.config.slots} slots")
                self.engine.bucket(len(r.prompt))  # fail here, not in the loop
                self.check_room(len(r.prompt), r.num_samples, f"request {r.problem_id}")
                self._pending.append(r)
            self._lock.notify_all()

    def limit_in_flight(self, n: int):
        """At most ``n`` sequences in flight from the next admission on (a new curriculum stage)."""
        with self._lock:
            self.max_in_flight = min(n, self.engine.config.slots)

    def set_weights(self, params, version: int, *, prepared: bool = False):
        """Publishes new weights; the loop switches at its next chunk boundary. ``prepared``:
        they are already ``engine.prepare``'s output (only that copy is kept)."""
        with self._lock:
            self._weights = (params, version)
            if prepared:
                self._prepared = (self._weights, params)

    @property
    def version(self) -> int:
        return self._weights[1]

    def pause(self):
        with self._lock:
            self._paused = True

    def resume(self):
        with self._lock:
            self._paused = False
            self._draining = False
            self._lock.notify_all()

    def drain(self):
        """Stop admitting; sequences in flight run to their end."""
        with self._lock:
            self._draining = True

    @property
    def in_flight(self) -> int:
        return len(self._slots)

    @property
    def pending(self) -> int:
        return len(self._pending)

    # ------------------------------------------------------------------ one round

    def step(self) -> list[Completion]:
        """Admit what fits, run one decode chunk, harvest. Returns the finished completions."""
        with self.turns.generating() if self.turns is not None else contextlib.nullcontext():
            done = self._step()
        for c in done:  # outside the turn: handing on may block until the trainer takes a batch
            if self.on_complete is not None:
                self.on_complete(c)
        return done

    def _step(self) -> list[Completion]:
        with self._lock:  # a consistent pair: set_weights may run in another thread
            weights, prepared = self._weights, self._prepared
        if prepared[0] is not weights:  # a new version: lay it out for the engine once
            prepared = (weights, self.engine.prepare(weights[0]))
            with self._lock:
                if self._weights is weights:
                    self._prepared = prepared
        params, version = prepared[1], weights[1]
        if self.pool is not None:
            self._resume()
        done = self._admit(params, version)
        if self.pool is not None:
            self._grow()
            self.stats.pages_peak = max(self.stats.pages_peak, self.pool.used)
            self.stats.pages_total = self.pool.pages
        if self._slots:
            saturated = bool(self._pending)
            t0 = time.perf_counter()
            table = (self.pool.table_bn,) if self.pool is not None else ()
            self.state, out = self.engine.decode(params, self.state, *table)
            self.stats.busy_s += time.perf_counter() - t0
            self.stats.chunks += 1
            slot_steps = out.steps * self.engine.config.slots
            active = int(out.valid_kb[: out.steps].sum())
            self.stats.slot_steps += slot_steps
            self.stats.active_slot_steps += active
            if saturated:
                self.stats.steady_slot_steps += slot_steps
                self.stats.steady_active_slot_steps += active
            done += self._harvest(out, version)
        return done

    def generate(self, requests: list[Request]) -> list[Completion]:
        """Runs ``requests`` to completion synchronously; completions in finishing order."""
        self.submit(requests)
        out = []
        while self._pending or self._slots:
            out += self.step()
        return out

    def _admit(self, params, version) -> list[Completion]:
        done = []
        while not self._draining:
            # Pull from the feed as requests are admitted, not once per chunk: a chunk can free
            # many groups' slots, and each must refill before the next decode call or it
            # decodes nothing for a whole chunk. Up to two requests wait ready, so the next
            # one is known when slots free (and `steady` occupancy can tell demand exceeded room).
            while self.feed is not None and len(self._pending) < 2 and len(self._slots) < self.max_in_flight:
                request = self.feed()
                if request is None:
                    break
                self.submit([request])
            if not self._pending:
                break
            req = self._pending[0]
            if len(self._slots) + req.num_samples > self.max_in_flight:
                break
            slots = self._place(req)
            if slots is None:
                break
            self._pending.popleft()
            table = (self.pool.table_bn[slots],) if self.pool is not None else ()
            t0 = time.perf_counter()
            self.state, (token_g, logp_g, finish_g) = self.engine.prefill(
                params, self.state, req.prompt, slots, req.uid, list(range(req.num_samples)), req.max_new_tokens,
                *table, sampling=req.sampling)
            self.stats.busy_s += time.perf_counter() - t0
            self.stats.prefills += 1
            for i, slot in enumerate(slots):
                s = self._slots[slot] = _Slot(req, i)
                self._admitted[slot] = self._admissions
                self._admissions += 1
                done += self._append(slot, s, int(token_g[i]), float(logp_g[i]), version, int(finish_g[i]))
        return done

    # ------------------------------------------------------------------ slots and pages

    def _place(self, req: Request) -> list[int] | None:
        """Free slots for the request's samples (one shard's, with pages for its prompt and
        first chunk taken when paged), or None: it waits."""
        cfg = self.engine.config
        free = [s for s in range(cfg.slots) if s not in self._slots]
        if self.pool is None:
            return free[: req.num_samples] if len(free) >= req.num_samples else None
        if self._suspended:  # suspended sequences resume before anything new starts
            return None
        reach = len(req.prompt) + cfg.chunk_steps
        # One shard's slots if any has room (the prompt's pages are then shared by all G),
        # else the free slots across shards (one copy of the prompt in each).
        by_shard = [[s for s in free if self.pool.shard_of(s) == shard] for shard in range(self.pool.shards)]
        choices = [mine[: req.num_samples] for mine in by_shard if len(mine) >= req.num_samples]
        if len(free) >= req.num_samples:
            choices.append(free[: req.num_samples])
        for slots in choices:
            if self.pool.admit(slots, len(req.prompt), reach):
                return slots
        if len(free) >= req.num_samples:
            self.stats.admissions_waiting_for_pages += 1
        return None

    def check_room(self, prompt_len: int, samples: int, what: str = "a request", *, up_to: bool = False) -> None:
        """Raises ``PoolExhausted`` (naming the limit) when ``samples`` completions of a
        ``prompt_len``-token prompt (``up_to``: of any prompt up to that long) could never
        start: a run checks its largest prompt bucket and group size before generating;
        ``submit`` checks each request."""
        if self.pool is None:
            return
        pool, cfg = self.pool, self.engine.config
        per_shard = min(samples, pool.slots_per_shard)  # the fewest a shard can be given
        # Not monotone in the length: a longer prompt may share more of its pages.
        need, prompt_len = max((pool.group_need(n, per_shard, n + cfg.chunk_steps), n)
                               for n in (range(1, prompt_len + 1) if up_to else (prompt_len,)))
        if need > pool.pages_per_shard:
            raise PoolExhausted(f"{what}: a prompt of {prompt_len} tokens and {per_shard} samples on one shard need "
                                f"{need} pages of {pool.page_size} to start, more than the {pool.pages_per_shard} "
                                f"a shard has (raise EngineConfig.pages)")

    def _reach(self, slot: int) -> int:
        """Positions the slot's next chunk may have written by its end."""
        s = self._slots[slot]
        return len(s.request.prompt) + len(s.tokens) - 1 + self.engine.config.chunk_steps

    def _grow(self):
        """Pages for every position the next chunk may write, oldest sequences first; when
        a shard runs out, its newest running sequence is suspended (never truncated)."""
        running = sorted((s for s in self._slots if s not in self._suspended), key=self._admitted.__getitem__)
        window = self.engine.model_config.sliding_window
        for slot in running:
            if window is not None:  # positions the chunk's first step no longer sees
                self.pool.trim(slot, self._reach(slot) - self.engine.config.chunk_steps - window + 1)
            while slot not in self._suspended and not self.pool.grow(slot, self._reach(slot)):
                shard = self.pool.shard_of(slot)
                victim = max((s for s in self._slots if s not in self._suspended and self.pool.shard_of(s) == shard),
                             key=self._admitted.__getitem__)
                self._suspend(victim)

    def _suspend(self, slot: int):
        held = self.pool.held(slot)
        self._suspended[slot] = (len(held), self.engine.take_pages(self.state, held))
        self.pool.release(slot)
        self.state = self.engine.release(self.state, [slot])
        self.stats.suspensions += 1

    def _resume(self):
        """Restores suspended sequences, oldest first, while their shard has the pages."""
        for slot in sorted(self._suspended, key=self._admitted.__getitem__):
            shard = self.pool.shard_of(slot)
            if self.pool.pages_for(self._reach(slot)) > self.pool.free(shard):
                break
            self.pool.grow(slot, self._reach(slot))
            n, data = self._suspended.pop(slot)
            self.state = self.engine.put_pages(self.state, self.pool.held(slot)[:n], data)
            self.state = self.engine.activate(self.state, [slot])

    def _free_slot(self, slot: int):
        del self._slots[slot]
        self._admitted.pop(slot, None)
        self._suspended.pop(slot, None)
        if self.pool is not None:
            self.pool.release(slot)

    def _harvest(self, out, version) -> list[Completion]:
        done = []
        for k in range(out.steps):
            for slot in np.nonzero(out.valid_kb[k])[0]:
                s = self._slots.get(int(slot))
                if s is None:
                    continue
                last = k == out.steps - 1 or not out.valid_kb[k + 1, slot]
                finish = int(out.finish_b[slot]) if last else RUNNING
                done += self._append(int(slot), s, int(out.tokens_kb[k, slot]), float(out.logprobs_kb[k, slot]),
                                     version, finish)
        return done

    def _append(self, slot, s: _Slot, token, logprob, version, finish) -> list[Completion]:
        s.tokens.append(token)
        s.logprobs.append(logprob)
        s.versions.append(version)
        self.stats.tokens += 1
        reason = FINISH_NAMES.get(finish)
        if reason is None and self.stop_strings:
            cut = self._stop_at(s.tokens)
            if cut is not None:
                del s.tokens[cut:], s.logprobs[cut:], s.versions[cut:]
                self.state = self.engine.release(self.state, [slot])
                reason = "stop"
        if reason is None:
            return []
        self._free_slot(slot)
        self.stats.completions += 1
        text = self.decode_text(s.tokens) if self.decode_text is not None else ""
        return [Completion(s.request.problem_id, s.sample, list(s.request.prompt), s.tokens, s.logprobs,
                           s.versions, text, reason, s.request.uid, s.request.task)]

    def _stop_at(self, tokens: list[int]) -> int | None:
        """The shortest token prefix whose text contains a stop string, or None."""
        text = self.decode_text(tokens)
        if not any(stop in text for stop in self.stop_strings):
            return None
        for n in range(1, len(tokens) + 1):
            prefix = self.decode_text(tokens[:n])
            if any(stop in prefix for stop in self.stop_strings):
                return n
        return len(tokens)

    def abandon(self) -> int:
        """Drops every sequence in flight and every pending request (counted, not returned)."""
        with self._lock:
            n = len(self._slots)
            if n:
                self.state = self.engine.release(self.state, list(self._slots))
            for slot in list(self._slots):
                self._free_slot(slot)
            self._pending.clear()
            self.stats.abandoned += n
            return n

    # ------------------------------------------------------------------ background thread

    def start(self):
        self._thread = threading.Thread(target=self._run, name="magjax-generator", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 30.0):
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self):
        try:
            while True:
                with self._lock:
                    t0 = time.perf_counter()
                    while not self._stopping and (self._paused or not (
                            self._slots or self.feed is not None or (self._pending and not self._draining))):
                        self._lock.wait(0.05)
                    self.stats.waiting_s += time.perf_counter() - t0
                    if self._stopping:
                        return
                self.step()
                if not self._slots and not self._pending:  # the feed had nothing: wait, do not spin
                    t0 = time.perf_counter()
                    with self._lock:
                        self._lock.wait(0.01)
                    self.stats.waiting_s += time.perf_counter() - t0
        except BaseException as err:  # surfaced to the owner, never swallowed
            self.error = err
