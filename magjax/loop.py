"""``run()``: GRPO on a problem set. It reads like the diagram in README.md:

    next batch (rollout) -> filter -> advantages -> step -> publish -> metrics -> checkpoint

The roles are built and placed by ``_Pipeline`` (roles/): a ``Rollout`` that turns
problems into whole scored groups, a ``Trainer`` that holds the state and publishes each
new version to the rollout. ``mode="async"`` (Magistral's design): the rollout streams in
its own thread and never waits for the trainer; the trainer steps whenever a batch of
groups is ready, and the generator picks new weights up between decode chunks,
mid-sequence. ``mode="sync"``: generate a batch, score it, train, repeat; deterministic,
for tests and ablations.

Across processes (``jax.distributed``, see distributed.py) every process runs this same
function: it generates and scores its own share of the prompts on its local devices, and
at each step the processes exchange their scored groups so that all of them train on the
same global batch over the trainer's mesh. Decisions that must agree (stop on a signal,
save a checkpoint) travel in the same exchange.
"""

from __future__ import annotations

import collections
import dataclasses
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import jax
import numpy as np

from magjax import distributed, evaluate as evaluate_lib
from magjax.checkpoint import CheckpointConfig, Checkpointer
from magjax.data import curriculum, read_problems
from magjax.data.iterator import ProblemIterator
from magjax.mesh import MeshConfig
from magjax.metrics import MetricsWriter
from magjax.models.tokenizer import check_vocab, load_tokenizer
from magjax.rewards.reward import RewardConfig
from magjax.rl import batching, losses, staleness
from magjax.rl.collector import GroupCollector
from magjax.roles.placement import Placement, place
from magjax.roles.rollout import Requests, Rollout
from magjax.roles.trainer import Trainer
from magjax.sampling.engine import EngineConfig
from magjax.types import Problem, ScoredGroup

if TYPE_CHECKING:  # the recipe gathers this module's RunConfig
    from magjax.recipe import Recipe


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The RL pipeline's shape: mode, placement, batch sizes, lag bound, length, stages."""

    mode: Literal["async", "sync"] = "async"
    placement: Literal["colocated", "disaggregated"] = "colocated"
    generator_devices: int = 4  # disaggregated: N devices generate (split evenly over processes), the rest train
    trainer_mesh: MeshConfig = MeshConfig(data=1, fsdp=-1, model=1)
    generator_mesh: MeshConfig = MeshConfig(data=-1, fsdp=1, model=1)
    steps: int = 10  # optimizer batches to train
    group_size: int = 4  # G completions per prompt
    n_batch: int = 32  # completions per batch (a multiple of group_size)
    n_minibatch: int = 1  # optimizer steps per batch
    n_async: int = 32  # sequences in flight in the generator
    max_async_ratio: float = 2.0  # Magistral: n_async / n_batch <= 2 bounds the off-policy lag
    # Per-sample bound: a group with a completion whose oldest token is more than this many
    # versions behind the trainer when its batch is trained is dropped (rl/staleness.py) and
    # counted (pipeline/dropped_stale); the batch is refilled with fresh groups. None: off.
    max_lag_versions: int | None = None
    queue_groups: int = 8  # scored groups waiting for the trainer before generation blocks
    # The sampler's weights beside the trainer's: "copy" (its own, in its backend's layout),
    # "shared" (the trainer's arrays, read in place: colocated on one mesh, with projections
    # that read the trainer's layout, never native panels; an async generator then waits while the trainer
    # steps, sampling/turns.py) or "auto": shared on accelerators, whose compilers read a
    # layer's slice of the stacked arrays in place and whose chips run one program at a
    # time anyway; a copy on CPUs, where XLA copies every slice on every decode step (about
    # a quarter slower) and the two roles' programs run side by side.
    sampler_weights: Literal["auto", "copy", "shared"] = "auto"
    max_new_tokens: int = 64
    seed: int = 0
    run_dir: str | None = None  # metrics and checkpoints; None = keep nothing on disk
    checkpoint: CheckpointConfig = CheckpointConfig()
    batch_timeout_s: float = 600.0  # no scored group for this long is an error, not a hang
    stages: tuple[curriculum.Stage, ...] = ()  # a curriculum (data/curriculum.py); empty = one stage

    def __post_init__(self):
        if self.mode not in ("async", "sync") or self.placement not in ("colocated", "disaggregated"):
            raise ValueError(f"RunConfig: mode must be async|sync and placement colocated|disaggregated, got {self}")
        if self.n_batch % self.group_size:
            raise ValueError(f"RunConfig.n_batch ({self.n_batch}) must be a multiple of group_size ({self.group_size})")
        groups = self.n_batch // self.group_size
        if self.n_minibatch < 1 or groups % self.n_minibatch:
            raise ValueError(f"RunConfig.n_minibatch ({self.n_minibatch}) must divide the batch's "
                             f"{groups} groups (n_batch / group_size)")
        if self.n_async / self.n_batch > self.max_async_ratio:
            raise ValueError(f"RunConfig: n_async / n_batch = {self.n_async}/{self.n_batch} exceeds "
                             f"max_async_ratio {self.max_async_ratio} (the off-policy bound)")
        if self.n_async < self.group_size:
            raise ValueError(f"RunConfig.n_async ({self.n_async}) must hold at least one group ({self.group_size})")
        if self.sampler_weights not in ("auto", "copy", "shared"):
            raise ValueError(f"RunConfig.sampler_weights must be auto|copy|shared, got {self.sampler_weights!r}")
        if self.sampler_weights == "shared" and self.placement != "colocated":
            raise ValueError("RunConfig.sampler_weights='shared' needs placement='colocated': disaggregated, the "
                             "sampler's weights live on other devices")
        if self.max_lag_versions is not None and self.max_lag_versions < 0:
            raise ValueError(f"RunConfig.max_lag_versions ({self.max_lag_versions}) must be >= 0 or None (off)")
        curriculum.validate(self.stages)




@dataclasses.dataclass
class RunResult:
    params: dict  # final parameters, on the host
    history: list[dict]
    # Completion-length histograms. Every completion the generator finished ("finished") is in
    # exactly one of trained, filtered, stale, unconsumed (scored, never trained, including
    # what a resumed run's predecessor left) and cancelled (waiting in the verifier at shutdown).
    # "abandoned_in_flight" counts unfinished sequences dropped at shutdown (not finished).
    accounting: dict[str, collections.Counter]
    version: int
    spanning: int  # completions reaching the trainer whose tokens came from more than one policy version
    step: int = 0  # batches trained, counting those before a resume
    preempted: bool = False  # stopped early by SIGTERM/SIGINT (after saving a checkpoint)
    resumed_from: int | None = None


def run(recipe: Recipe, problems: list[Problem], params: dict | None = None, *, console: bool = True,
        evaluator: Callable[[dict], dict] | None = None, eval_every: int = 0) -> RunResult:
    """Trains ``recipe.run.steps`` batches with GRPO on ``problems``; see the module docstring.

    ``evaluator(params) -> summary`` (see evaluate.py), if given, runs every ``eval_every``
    batches on the trainer's current parameters; its figures join that step's metrics as
    ``eval/...``. The rollout keeps running meanwhile.
    """
    job = _Pipeline(recipe, problems, params, console)
    try:
        for step in job.steps():
            groups = job.next_batch(step)  # every process's scored groups
            kept, removed = batching.filter_groups(groups, recipe.advantage)  # zero-variance groups out, once
            batches, packed = batching.minibatches(kept, recipe.advantage, job.packing, job.config.n_minibatch)
            batches = job.trainer.old_policy(batches)  # pi_old, when the objective is decoupled
            m = {}
            for batch in batches:
                with job.rollout.trainer_turn():  # the generator's, when it reads the trainer's arrays
                    m |= job.trainer.step(batch)
                    m["pipeline/publish_s"] = job.trainer.publish()
            job.record(step, groups, kept, removed, packed, m)
            if evaluator is not None and eval_every and step % eval_every == 0:
                m |= _evaluate(evaluator, job.trainer)
            job.write(step, m)
            job.checkpoint(step)
        job.done()
    except _Stop:
        job.stopped()
    finally:
        job.close()
    return job.result()


def _evaluate(evaluator: Callable[[dict], dict], trainer: Trainer) -> dict:
    start = time.perf_counter()
    m = evaluate_lib.flatten(evaluator(trainer.host_params()))
    return m | {"pipeline/eval_s": time.perf_counter() - start}


class _Stop(Exception):
    """SIGTERM or SIGINT arrived: checkpoint at the step boundary and leave cleanly."""


class _StopSignals:
    """Turns SIGTERM/SIGINT (Cloud TPU's preemption notice, Ctrl-C) into a flag the loop
    checks between steps. Only the main thread can install handlers; elsewhere it is inert."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def install(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _Stages:
    """The curriculum: each stage's (run, reward) settings and problems, all checked at the
    start, and the one in force."""

    def __init__(self, recipe: Recipe, problems: list[Problem], processes: int):
        run, stages = recipe.run, recipe.run.stages
        self.settings = [(run, recipe.reward)] + [curriculum.settings(stages, i, run, recipe.reward)
                                                  for i in range(len(stages))]
        for config, _ in self.settings:
            _check_fits(config, recipe.engine, recipe.packing, processes)
        self.problems = [problems] + [
            curriculum.select(read_problems(s.data) if s.data else problems, s, f"RunConfig.stages[{i}]")
            for i, s in enumerate(stages)]
        self.stages = stages
        self.index: int | None = None

    @property
    def largest_batch(self) -> int:
        return max(config.n_batch for config, _ in self.settings)

    def at(self, step: int) -> int:
        return curriculum.index_at(self.stages, step)

    def enter(self, index: int, process: int, processes: int,
              iterator_state: dict | None = None) -> tuple[RunConfig, RewardConfig, ProblemIterator]:
        """Stage ``index`` (-1: the run's own settings): its settings and a problem iterator."""
        config, reward = self.settings[index + 1]
        seed = config.seed if index < 0 else config.seed + index + 1
        iterator = ProblemIterator(self.problems[index + 1], seed=seed, shard_index=process, shard_count=processes)
        if iterator_state is not None:
            iterator.set_state(iterator_state)
        self.index = index
        return config, reward, iterator


class _Pipeline:
    """The roles of one RL run, placed and wired at construction, and the run's books:
    versions, accounting, metrics, checkpoints, the stop flag."""

    def __init__(self, recipe: Recipe, problems: list[Problem], params: dict | None, console: bool):
        self.recipe = recipe
        model_config, run = recipe.model_config, recipe.run
        tokenizer = load_tokenizer(recipe.tokenizer)
        check_vocab(tokenizer, model_config.vocab_size)
        self.process, self.processes = jax.process_index(), jax.process_count()
        self.stages = _Stages(recipe, problems, self.processes)
        groups_per_batch = self.stages.largest_batch // run.group_size
        placement = place(run.placement, run.trainer_mesh, run.generator_mesh, run.generator_devices)
        engine = recipe.engine
        if run.mode == "sync":
            engine = _sync_engine(engine, self.stages.largest_batch // self.processes, placement)

        # Back-pressure (SPEC.md §3): at most `queue_groups` scored groups wait for the trainer and
        # at most one batch of completions waits for the verifiers; beyond that the generator's
        # hand-off blocks, and its sequences stay in flight until the trainer catches up, then
        # continue on the newer weights. This is what bounds the off-policy lag. A whole batch
        # of groups must fit, or sync mode (which scores a batch before training on it) would
        # wait on itself.
        self.requests = Requests(tokenizer, recipe.chat, self.process, self.processes)
        self.rollout = Rollout(
            model_config, tokenizer, recipe.chat, engine=engine, sampling=recipe.sampling, reward=recipe.reward,
            pool=dataclasses.replace(recipe.pool, max_pending=min(recipe.pool.max_pending,
                                                                  groups_per_batch * run.group_size)),
            mesh=placement.rollout, requests=self.requests,
            collector=GroupCollector(run.group_size, max(run.queue_groups, groups_per_batch)),
            max_in_flight=self._in_flight(run), streaming=run.mode == "async",
            share_weights=shares_weights(run, placement.shared, placement.rollout.devices.flat[0].platform))
        # Rows per microbatch from a per-chip token budget, when the recipe gives one.
        self.packing = recipe.packing.for_mesh(placement.trainer.shape["data"] * placement.trainer.shape["fsdp"])
        # The trainer scores tokens under the distribution the sampler drew them from.
        loss = losses.for_sampling(recipe.loss, recipe.sampling)
        self.trainer = Trainer(model_config, loss, recipe.optimizer, placement.trainer, params=params,
                               seed=run.seed, publish_to=self.rollout.set_weights,
                               publish_mesh=None if placement.shared else placement.rollout)
        self.trainer.publish()

        self.accounting = {k: collections.Counter() for k in ("trained", "filtered", "stale")}
        self.cancelled = collections.Counter()
        self.left_by_restart = collections.Counter()  # finished before the resumed checkpoint, never trained
        self.spanning, self.first_step, self.resumed_from, self.consumed = 0, 1, None, 0
        self.ckpt = Checkpointer(f"{run.run_dir}/checkpoints", run.checkpoint) if run.run_dir else None
        try:
            mine = self._restore() if self.ckpt is not None else None
        except BaseException:  # an unusable checkpoint: leave no threads or worker processes behind
            self.ckpt.close()
            self.rollout.close()
            raise
        first_stage = self.stages.at(self.first_step)
        # A checkpoint holds the data position within the stage it was saved in.
        self._enter(first_stage, mine["iterator"] if mine is not None and mine.get("stage", -1) == first_stage
                    else None)
        # Process 0 speaks for the job: one metrics file, one console.
        self.metrics = MetricsWriter(run.run_dir if self.process == 0 else None, total_steps=run.steps,
                                     console=console and self.process == 0)
        self.signals = _StopSignals()
        self.signals.install()  # kept until the final checkpoint is written, so a second signal waits for it
        self.step, self.finished, self.preempted, self.abandoned = self.first_step - 1, False, False, 0
        self._save_due = False
        self._wall_start, self._trainer_wait, self._wait_start = time.perf_counter(), 0.0, 0.0
        self.rollout.start()

    def _in_flight(self, config: RunConfig) -> int:
        return max(config.n_async // self.processes, config.group_size)

    def _enter(self, index: int, iterator_state: dict | None = None):
        self.config, self.reward, self.iterator = self.stages.enter(index, self.process, self.processes,
                                                                    iterator_state)
        self.rollout.switch(self.iterator, self.config.group_size, self.config.max_new_tokens, self.reward,
                            self._in_flight(self.config))

    def _restore(self) -> dict | None:
        restored = self.trainer.restore(self.ckpt)
        if restored is None:
            return None
        self.resumed_from, meta = restored
        mine = _process_state(meta, self.process, self.processes, f"{self.ckpt.directory}/{self.resumed_from}")
        self.requests.restore(mine["requests"])
        self.rollout.restore_finished(mine["finished"])
        self.consumed = int(mine["requests"]["next_uid"])  # what was in flight then was abandoned
        self.spanning, self.first_step = meta["spanning"], meta["step"] + 1
        for k in self.accounting:
            self.accounting[k] = collections.Counter({int(n): c for n, c in meta["accounting"].get(k, {}).items()})
        if self.process == 0:  # process 0 books, once for the job, what the saved run never trained
            finished = sum((collections.Counter({int(n): c for n, c in p["finished"].items()})
                            for p in meta["processes"]), collections.Counter())
            self.left_by_restart = finished - sum(self.accounting.values(), collections.Counter())
        self.trainer.publish()
        print(f"[magjax] resumed from {self.ckpt.directory}/{self.resumed_from} (version {self.trainer.version})")
        return mine

    # ------------------------------------------------------------------ the steps

    def steps(self):
        for step in range(self.first_step, self.recipe.run.steps + 1):
            if self.stages.at(step) != self.stages.index:
                self._enter(self.stages.at(step))
                print(f"[magjax] step {step}: curriculum stage {self.stages.index} ({len(self.iterator.problems)} "
                      f"problems, n_batch {self.config.n_batch}, max_new_tokens {self.config.max_new_tokens}, "
                      f"l_max {self.reward.l_max})")
            self.step = step
            yield step

    def next_batch(self, step: int) -> list[ScoredGroup]:
        """The global batch: every process's share, exchanged; raises _Stop on a signal."""
        self._wait_start = time.perf_counter()
        stopping = lambda: self.signals.requested  # noqa: E731
        want = self.config.n_batch // self.processes // self.config.group_size
        mine, stale = [], []
        while len(mine) < want and not stopping():  # stale groups out, fresh ones in their place
            got = self.rollout.next_groups(want - len(mine), stopping, self.config.batch_timeout_s)
            fresh, old = staleness.split_stale(got, self.trainer.version, self.config.max_lag_versions)
            mine, stale = mine + fresh, stale + old
        shares = distributed.exchange({"groups": mine, "stop": self.signals.requested, "stale": _lengths(stale),
                                       "save": self.ckpt is not None and self.ckpt.due(step)})
        self._stale_now = sum((s["stale"] for s in shares), collections.Counter())  # the job's, every process's
        self.accounting["stale"] += self._stale_now
        if any(s["stop"] for s in shares):
            self.rollout.put_back(mine)  # a partial batch is not trained half-done: back it goes
            raise _Stop
        self._save_due = any(s["save"] for s in shares)
        self.consumed += len(mine)  # this process's groups taken by the trainer
        groups = [g for s in shares for g in s["groups"]]
        if self.config.mode == "sync":
            groups.sort(key=lambda g: g.completions[0].uid)  # scoring order must not matter
        self._step_wait = time.perf_counter() - self._wait_start
        self._trainer_wait += self._step_wait
        self._compiles_before, self._version_at_batch = self.trainer.compiles, self.trainer.version
        return groups

    def record(self, step: int, groups: list[ScoredGroup], kept: list[ScoredGroup], removed: list[ScoredGroup],
               packed: dict, m: dict):
        """The step's books and metrics, added to ``m``."""
        for bucket, part in (("trained", kept), ("filtered", removed)):
            for g in part:
                self.accounting[bucket].update(len(c.tokens) for c in g.completions)
        self.spanning += sum(len(set(c.versions)) > 1 for g in groups for c in g.completions)
        wall = time.perf_counter() - self._wall_start
        gstats = self.rollout.generation
        m |= _group_metrics(groups, self._version_at_batch)  # lag against the weights the batch reached
        m |= {"pipeline/stage": self.stages.index, "pipeline/groups_filtered": len(removed),
              "pipeline/dropped_stale": sum(self._stale_now.values()),
              "pipeline/groups_trained": len(kept), "pipeline/padding_fraction": packed["padding_fraction"],
              "pipeline/queue_depth": self.rollout.queue_depth, "pipeline/version": self.trainer.version,
              "pipeline/trainer_idle_fraction": self._trainer_wait / wall, "pipeline/trainer_wait_s": self._step_wait,
              "pipeline/step_s": time.perf_counter() - self._wait_start,
              # A batch of a new microbatch count compiles the step (a few shapes per run).
              "pipeline/train_compiles": self.trainer.compiles - self._compiles_before,
              "pipeline/generator_idle_fraction": gstats.waiting_s / wall if self.config.mode == "async" else 0.0,
              "rollout/slot_occupancy": gstats.occupancy, "rollout/tokens_per_s": gstats.tokens / wall,
              # The paged KV cache (zeros unpaged): its high-water mark and what running out cost.
              "rollout/kv_pages_peak_fraction": gstats.pages_peak / max(gstats.pages_total, 1),
              "rollout/suspensions": gstats.suspensions,
              "rollout/admissions_waiting_for_pages": gstats.admissions_waiting_for_pages,
              "train/skipped_steps": self.trainer.skipped_steps} | self.rollout.stats()

    def write(self, step: int, m: dict):
        self.metrics.write(step, m)

    def done(self):
        self.finished = True

    def checkpoint(self, step: int):
        if self.ckpt is not None and (self._save_due or step == self.recipe.run.steps):
            self._save(step)

    def _save(self, step: int, wait: bool = False):
        # Every process joins (the exchange and Orbax's save are collective); each one's data
        # position, request counter and scored-length histogram go into the one record.
        mine = {"iterator": self.iterator.get_state(), "stage": self.stages.index,
                "requests": self.requests.state() | {"consumed": self.consumed}, "finished": dict(self.rollout.finished)}
        meta = {"step": step, "version": self.trainer.version, "spanning": self.spanning,
                "processes": distributed.exchange(mine), "run_config": repr(self.config),
                "tokenizer": self.recipe.tokenizer, "model_config": dataclasses.asdict(self.recipe.model_config),
                "optimizer_config": dataclasses.asdict(self.recipe.optimizer),
                "accounting": {k: dict(v) for k, v in self.accounting.items()}}
        self.ckpt.save(step, self.trainer.state, meta, wait=wait)

    def stopped(self):
        self.preempted = True
        self.step -= 1  # the interrupted step trained nothing
        # Stop the rollout first, so that the checkpoint's books are final: a resumed run
        # counts exactly what this one finished and never trained (_restore).
        self.abandoned, self.cancelled = self.rollout.close()
        if self.ckpt is not None:
            self._save(self.step, wait=True)
        print(f"[magjax] stopped by signal: checkpoint {self.step} saved, in-flight generations abandoned")

    def close(self):
        self.signals.restore()
        if self.ckpt is not None:
            self.ckpt.close()
        self.abandoned, self.cancelled = self.rollout.close()
        self.metrics.close()

    def result(self) -> RunResult:
        accounting = dict(self.accounting)
        accounting["unconsumed"] = self.rollout.unconsumed() + self.left_by_restart
        accounting["cancelled"] = self.cancelled
        accounting["finished"] = self.rollout.finished
        accounting["abandoned_in_flight"] = collections.Counter({"sequences": self.abandoned})
        if self.processes > 1 and (self.finished or self.preempted):  # every process got here together: sum
            for key in ("unconsumed", "cancelled", "finished", "abandoned_in_flight"):
                accounting[key] = sum(distributed.exchange(accounting[key]), collections.Counter())
        return RunResult(self.trainer.host_params(), self.metrics.history, accounting, self.trainer.version,
                         self.spanning, self.step, self.preempted, self.resumed_from)


def _lengths(groups: list[ScoredGroup]) -> collections.Counter:
    return collections.Counter(len(c.tokens) for g in groups for c in g.completions)


def _group_metrics(groups: list[ScoredGroup], version: int) -> dict:
    scored = [s for g in groups for s in g.scored]
    lengths = np.asarray([len(s.completion.tokens) for s in scored])
    spans = np.asarray([max(s.completion.versions) - min(s.completion.versions) for s in scored])
    token_lag = np.concatenate([version - np.asarray(s.completion.versions) for s in scored])
    by_kind = collections.defaultdict(list)
    for g in groups:
        by_kind[g.task.problem.kind] += [s.reward.is_correct for s in g.scored]
    m = {"reward/mean": float(np.mean([s.reward.total for s in scored])),
         "reward/accuracy": float(np.mean([s.reward.is_correct for s in scored])),
         "reward/format": float(np.mean([s.reward.format > 0 for s in scored])),
         "reward/language": float(np.mean([s.reward.language > 0 for s in scored])),
         "reward/length_penalty": float(np.mean([s.reward.length_penalty for s in scored])),
         "rollout/length_mean": float(lengths.mean()), "rollout/length_max": int(lengths.max()),
         "rollout/truncated": float(np.mean([s.completion.finish_reason == "length" for s in scored])),
         "pipeline/lag_versions_spanned_mean": float(spans.mean()),
         "pipeline/lag_versions_spanned_max": int(spans.max()),
         "pipeline/lag_tokens_mean": float(token_lag.mean()), "pipeline/lag_tokens_max": int(token_lag.max())}
    for kind, correct in by_kind.items():
        m[f"reward/accuracy_{kind}"] = float(np.mean(correct))
    return m


def _check_fits(config: RunConfig, engine: EngineConfig, packing: batching.PackingConfig, processes: int):
    longest = engine.prompt_buckets[-1] + config.max_new_tokens
    if longest - 1 > packing.row_len or longest > engine.max_len:
        raise ValueError(f"the longest sequence (largest prompt bucket {engine.prompt_buckets[-1]} + max_new_tokens "
                         f"{config.max_new_tokens}) must fit PackingConfig.row_len ({packing.row_len}) and "
                         f"EngineConfig.max_len ({engine.max_len})")
    groups = config.n_batch // config.group_size
    if groups % processes:
        raise ValueError(f"RunConfig: the batch's {groups} groups (n_batch / group_size) must split "
                         f"evenly over {processes} processes")
    if config.n_async % processes:
        raise ValueError(f"RunConfig.n_async ({config.n_async}) must split evenly over {processes} processes")
    if engine.slots < config.n_async // processes:
        raise ValueError(f"EngineConfig.slots ({engine.slots}) must hold n_async ({config.n_async}) sequences"
                         + (f" / {processes} processes" if processes > 1 else ""))


def shares_weights(run: RunConfig, one_mesh: bool, platform: str) -> bool:
    """Whether the sampler reads the trainer's arrays (RunConfig.sampler_weights): only
    where both roles hold them on one mesh."""
    if not one_mesh or run.sampler_weights == "copy":
        return False
    return run.sampler_weights == "shared" or platform != "cpu"


def _sync_engine(engine: EngineConfig, in_flight: int, placement: Placement) -> EngineConfig:
    """Sync mode holds one batch in flight, never ``n_async``: every slot runs every decode
    step, so slots beyond the batch would only decode padding. Rounded up to a multiple of
    the rollout's data-parallel shards, and never more than configured."""
    shards = placement.rollout.shape["data"] * placement.rollout.shape["fsdp"]
    return dataclasses.replace(engine, slots=min(engine.slots, -(-in_flight // shards) * shards))


def _process_state(meta: dict, process: int, processes: int, where: str) -> dict:
    saved = meta.get("processes")
    if not saved or len(saved) != processes:
        raise ValueError(f"checkpoint {where} was written by {len(saved or [])} process(es); this run has "
                         f"{processes}: each process's data position is in the checkpoint, so resume with the "
                         f"same process count")
    return saved[process]
