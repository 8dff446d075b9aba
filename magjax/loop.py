"""``run()``: the one top-level function. It reads like the diagram in DESIGN.md:

    data -> Generator -> VerifierPool -> GroupCollector -> Trainer -> WeightStore -> Generator

``mode="async"`` (Magistral's design): the generator runs in its own thread and never
waits for the trainer; verifiers score as completions finish; the trainer steps whenever
``n_batch`` completions' worth of groups are ready, and publishes new weights that the
generator picks up between decode chunks, mid-sequence. ``mode="sync"``: generate a batch,
score it, train, repeat; deterministic, for tests and ablations.

Across processes (``jax.distributed``, see distributed.py) every process runs this same
function: it generates and scores its own share of the prompts on its local devices, and
at each step the processes exchange their scored groups so that all of them train on the
same global batch over the trainer's mesh. Decisions that must agree (stop on a signal,
save a checkpoint) travel in the same exchange.
"""

from __future__ import annotations

import collections
import dataclasses
import queue
import signal
import threading
import time
from collections.abc import Callable
from typing import Literal

import jax
import numpy as np

from magjax import distributed, evaluate as evaluate_lib
from magjax.checkpoint import CheckpointConfig, Checkpointer, abstract_like
from magjax.data import curriculum, read_problems
from magjax.data.iterator import ProblemIterator
from magjax.mesh import MeshConfig, make_mesh
from magjax.metrics import MetricsWriter
from magjax.models import decoder
from magjax.models.config import ModelConfig, preset
from magjax.models.tokenizer import ChatFormat, check_vocab, load_tokenizer
from magjax.rewards import code as code_lib
from magjax.rewards.pool import PoolConfig, VerifierPool
from magjax.rewards.reward import RewardConfig
from magjax.rl import batching, optimizer as opt_lib, train_step
from magjax.rl.collector import GroupCollector
from magjax.rl.losses import LossConfig
from magjax.sampling.engine import Engine, EngineConfig, SamplingConfig
from magjax.sampling.generator import Generator, Request
from magjax.types import Problem, ScoredGroup
from magjax.weights import WeightStore


@dataclasses.dataclass(frozen=True)
class RunConfig:
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
    queue_groups: int = 8  # scored groups waiting for the trainer before generation blocks
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
        curriculum.validate(self.stages)


@dataclasses.dataclass
class RunResult:
    params: dict  # final parameters, on the host
    history: list[dict]
    accounting: dict[str, collections.Counter]  # completion-length histograms: finished/trained/filtered/unconsumed
    version: int
    spanning: int  # completions reaching the trainer whose tokens came from more than one policy version
    step: int = 0  # batches trained, counting those before a resume
    preempted: bool = False  # stopped early by SIGTERM/SIGINT (after saving a checkpoint)
    resumed_from: int | None = None


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


class _Requests:
    """Turns problems into generator requests, remembering which request is which problem."""

    def __init__(self, iterator: ProblemIterator, tokenizer, chat: ChatFormat, config: RunConfig, reward: RewardConfig,
                 process: int = 0, processes: int = 1):
        self.iterator, self.tokenizer, self.chat, self.config, self.reward = iterator, tokenizer, chat, config, reward
        self.process, self.processes = process, processes
        self.problems: dict[int, Problem] = {}
        self.tests: dict[int, list | None] = {}
        self._next_uid = 0
        self._lock = threading.Lock()
        self.consumed = 0  # groups taken by the trainer

    def switch(self, iterator: ProblemIterator, config: RunConfig, reward: RewardConfig):
        """A new curriculum stage: later requests come from ``iterator`` under ``config``."""
        with self._lock:
            self.iterator, self.config, self.reward = iterator, config, reward

    def state(self) -> dict:
        return {"next_uid": self._next_uid, "consumed": self.consumed}

    def restore(self, state: dict):
        # Groups in flight at save time were abandoned: nothing is outstanding after a restart.
        # (Counts are this process's: its requests and its consumed groups.)
        self._next_uid = self.consumed = int(state["next_uid"])

    def next(self) -> Request:
        with self._lock:
            problem = next(self.iterator)
            count = self._next_uid = self._next_uid + 1
            config, reward = self.config, self.reward
        # Unique over the job: the uid seeds this group's sampling (engine.py), so it must
        # not depend on which process or slot runs it.
        uid = (count - 1) * self.processes + self.process + 1
        self.problems[uid] = problem
        # The same test sample for every completion of the group (SPEC.md §2).
        self.tests[uid] = (code_lib.sample_tests(list(problem.tests), reward.max_tests, f"{problem.id}/{uid}")
                           if problem.kind == "code" else None)
        return Request(problem.id, self.chat.encode(self.tokenizer, problem.prompt), config.group_size,
                       config.max_new_tokens, uid)


def _group_metrics(groups: list[ScoredGroup], version: int) -> dict:
    scored = [s for g in groups for s in g.scored]
    lengths = np.asarray([len(s.completion.tokens) for s in scored])
    spans = np.asarray([max(s.completion.versions) - min(s.completion.versions) for s in scored])
    token_lag = np.concatenate([version - np.asarray(s.completion.versions) for s in scored])
    by_kind = collections.defaultdict(list)
    for s in scored:
        by_kind[s.reward.kind].append(s.reward.is_correct)  # Problem.kind, whatever the ids look like
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


def run(config: RunConfig = RunConfig(), *, problems: list[Problem], model: ModelConfig | str = "demo",
        params: dict | None = None, tokenizer: str = "byte", chat: ChatFormat = ChatFormat("plain", None),
        sampling: SamplingConfig = SamplingConfig(), engine: EngineConfig = EngineConfig(slots=32, max_len=256, prompt_buckets=(32, 64, 128)),
        loss: LossConfig = LossConfig(), optimizer: opt_lib.OptimizerConfig = opt_lib.OptimizerConfig(learning_rate=1e-4),
        packing: batching.PackingConfig = batching.PackingConfig(rows=8, row_len=256),
        reward: RewardConfig = RewardConfig(l_max=256, l_cache=64), pool: PoolConfig = PoolConfig(),
        console: bool = True, evaluator: Callable[[dict], dict] | None = None, eval_every: int = 0) -> RunResult:
    """Trains ``config.steps`` batches with GRPO on ``problems``; see the module docstring.

    ``evaluator(params) -> summary`` (see evaluate.py), if given, runs every ``eval_every``
    batches on the trainer's current parameters; its figures join that step's metrics as
    ``eval/...``. The generator keeps running meanwhile.
    """
    model_config = preset(model) if isinstance(model, str) else model
    tok = load_tokenizer(tokenizer)
    check_vocab(tok, model_config.vocab_size)
    processes, process = jax.process_count(), jax.process_index()
    # Every stage's settings (data/curriculum.py), checked now rather than hours in.
    phases = [(config, reward)] + [curriculum.settings(config.stages, i, config, reward)
                                   for i in range(len(config.stages))]
    for phase, _ in phases:
        _check_fits(phase, engine, packing, processes)
    stage_problems = [problems] + [
        curriculum.select(read_problems(s.data) if s.data else problems, s, f"RunConfig.stages[{i}]")
        for i, s in enumerate(config.stages)]
    largest_batch = max(phase.n_batch for phase, _ in phases)
    groups_per_batch = largest_batch // config.group_size
    trainer_mesh, generator_mesh = _meshes(config, processes)
    packing = packing.for_mesh(trainer_mesh.shape["data"] * trainer_mesh.shape["fsdp"])  # a token budget's rows
    if config.mode == "sync":
        engine = _sync_engine(engine, largest_batch // processes, generator_mesh)

    # Trainer: state on its mesh, one jitted step.
    init = params if params is not None else decoder.init_params(model_config, jax.random.key(config.seed))
    tx, schedule = opt_lib.make_optimizer(optimizer)
    state = train_step.init_state(jax.device_put(init, decoder.param_shardings(model_config, trainer_mesh)), tx)
    step_fn = train_step.make_train_step(model_config, loss, tx, schedule, mesh=trainer_mesh,
                                         shardings=train_step.state_shardings(state))

    # Generator, verifiers, collector, weight path.
    requests = _Requests(None, tok, chat, config, reward, process, processes)
    # Back-pressure (SPEC.md §3): at most `queue_groups` scored groups wait for the trainer and
    # at most one batch of completions waits for the verifiers; beyond that the generator's
    # hand-off blocks, and its sequences stay in flight until the trainer catches up, then
    # continue on the newer weights. This is what bounds the off-policy lag.
    # A whole batch of groups must fit, or sync mode (which scores a batch before training
    # on it) would wait on itself.
    collector = GroupCollector(config.group_size, max(config.queue_groups, groups_per_batch))
    pool = dataclasses.replace(pool, max_pending=min(pool.max_pending, groups_per_batch * config.group_size))
    verifier = VerifierPool(reward, pool, on_scored=lambda s: collector.add(s, s.completion.uid))
    eng = Engine(model_config, engine, sampling, tok.eos_id, mesh=generator_mesh)
    gen_shardings = (decoder.param_shardings(model_config, generator_mesh)
                     if generator_mesh is not trainer_mesh else None)
    generator = Generator(eng, None, 0, decode_text=tok.decode,
                          max_in_flight=max(config.n_async // processes, config.group_size))
    store = WeightStore(generator.set_weights, shardings=gen_shardings)
    store.publish(state.params, 0)

    accounting = {k: collections.Counter() for k in ("trained", "filtered")}
    spanning, version, first_step, resumed_from, mine = 0, 0, 1, None, None
    ckpt = Checkpointer(f"{config.run_dir}/checkpoints", config.checkpoint) if config.run_dir else None
    if ckpt is not None:
        restored = ckpt.restore_latest(abstract_like(state))
        if restored is not None:
            resumed_from, state, meta = restored
            mine = _process_state(meta, process, processes, f"{ckpt.directory}/{resumed_from}")
            requests.restore(mine["requests"])
            collector.finished.update({int(n): c for n, c in mine["finished"].items()})
            version, spanning, first_step = meta["version"], meta["spanning"], meta["step"] + 1
            for k in accounting:
                accounting[k] = collections.Counter({int(n): c for n, c in meta["accounting"][k].items()})
            store.publish(state.params, version)
            print(f"[magjax] resumed from {ckpt.directory}/{resumed_from} (version {version})")

    stage, iterator, local_completions = None, None, 0

    def enter_stage(index: int, iterator_state: dict | None = None):
        """Curriculum stage ``index`` (-1: the run's own settings) takes over new requests."""
        nonlocal config, reward, stage, iterator, local_completions
        config, reward = phases[index + 1]
        seed = config.seed if index < 0 else config.seed + index + 1
        iterator = ProblemIterator(stage_problems[index + 1], seed=seed, shard_index=process, shard_count=processes)
        if iterator_state is not None:
            iterator.set_state(iterator_state)
        requests.switch(iterator, config, reward)
        verifier.reward_config = reward
        generator.max_in_flight = max(config.n_async // processes, config.group_size)
        local_completions = config.n_batch // processes  # each process's share of every batch
        stage = index

    first_stage = curriculum.index_at(config.stages, first_step)
    # A checkpoint holds the data position within the stage it was saved in.
    enter_stage(first_stage, mine["iterator"] if mine is not None and mine.get("stage", -1) == first_stage else None)

    def save(step: int, wait: bool = False):
        # Every process joins (the exchange and Orbax's save are collective); each one's data
        # position, request counter and scored-length histogram go into the one record.
        mine = {"iterator": iterator.get_state(), "stage": stage, "requests": requests.state(),
                "finished": dict(collector.finished)}
        meta = {"step": step, "version": version, "spanning": spanning, "processes": distributed.exchange(mine),
                "run_config": repr(config), "tokenizer": tokenizer,
                "model_config": dataclasses.asdict(model_config), "optimizer_config": dataclasses.asdict(optimizer),
                "accounting": {k: dict(v) for k, v in accounting.items()}}
        ckpt.save(step, state, meta, wait=wait)

    # Process 0 speaks for the job: one metrics file, one console.
    metrics = MetricsWriter(config.run_dir if process == 0 else None, total_steps=config.steps,
                            console=console and process == 0)
    wall_start = time.perf_counter()
    trainer_wait = 0.0
    stop = _StopSignals()
    preempted, finished_normally, step = False, False, first_step - 1

    if config.mode == "async":
        generator.on_complete = lambda c: verifier.submit(requests.problems[c.uid], c, requests.tests[c.uid])
        generator.feed = requests.next
        generator.start()

    def local_groups(wait_start: float) -> list[ScoredGroup]:
        """This process's share of the next batch; fewer when a stop signal arrived."""
        if stop.requested:
            return []
        if config.mode == "sync":
            reqs = [requests.next() for _ in range(local_completions // config.group_size)]
            completions = generator.generate(reqs)
            futures = [verifier.submit(requests.problems[c.uid], c, requests.tests[c.uid]) for c in completions]
            for f in futures:
                f.result()
            return [collector.groups.get_nowait() for _ in reqs]
        groups = []
        while sum(g.size for g in groups) < local_completions and not stop.requested:
            try:
                groups.append(collector.groups.get(timeout=0.2))
            except queue.Empty:
                if generator.error is not None:
                    raise RuntimeError("the generator thread failed") from generator.error
                if time.perf_counter() - wait_start > config.batch_timeout_s:
                    raise TimeoutError(f"no complete batch within {config.batch_timeout_s} s "
                                       f"(generator in flight {generator.in_flight}, verifier backlog {verifier.backlog})")
        return groups

    def next_batch(step: int) -> tuple[list[ScoredGroup], bool]:
        """The global batch (every process's groups) and whether a checkpoint is due after it."""
        mine = local_groups(time.perf_counter())
        shares = distributed.exchange({"groups": mine, "stop": stop.requested,
                                       "save": ckpt is not None and ckpt.due(step)})
        if any(s["stop"] for s in shares):
            for g in mine:  # a partial batch is not trained half-done: back it goes
                collector.groups.put(g)
            raise _Stop
        groups = [g for s in shares for g in s["groups"]]
        if config.mode == "sync":
            groups.sort(key=lambda g: g.completions[0].uid)  # scoring order must not matter
        requests.consumed += len(mine)
        return groups, any(s["save"] for s in shares)

    try:
        stop.install()  # kept until the final checkpoint is written, so a second signal waits for it
        for step in range(first_step, config.steps + 1):
            if curriculum.index_at(config.stages, step) != stage:
                enter_stage(curriculum.index_at(config.stages, step))
                print(f"[magjax] step {step}: curriculum stage {stage} ({len(iterator.problems)} problems, "
                      f"n_batch {config.n_batch}, max_new_tokens {config.max_new_tokens}, l_max {reward.l_max})")
            wait_start = time.perf_counter()
            groups, save_due = next_batch(step)
            step_wait = time.perf_counter() - wait_start
            trainer_wait += step_wait
            kept, removed = batching.filter_groups(groups, loss)
            for g, bucket in [(g, "trained") for g in kept] + [(g, "filtered") for g in removed]:
                accounting[bucket].update(len(c.tokens) for c in g.completions)
            spanning += sum(len(set(c.versions)) > 1 for g in groups for c in g.completions)
            m = _group_metrics(groups, version)
            batches, batch_stats = batching.make_minibatches(kept, loss, packing, config.n_minibatch) if kept else ([], {})
            traced = step_fn.traces
            for batch in batches:
                state, train_metrics = step_fn(state, train_step.place_batch(batch, trainer_mesh))
                version += 1
                m |= {k: float(v) for k, v in jax.device_get(train_metrics).items()}
                m["pipeline/publish_s"] = store.publish(state.params, version)
            wall = time.perf_counter() - wall_start
            gstats = generator.stats
            m |= {"pipeline/stage": stage, "pipeline/groups_filtered": len(removed), "pipeline/groups_trained": len(kept),
                  "pipeline/padding_fraction": batch_stats.get("padding_fraction", 0.0),
                  "pipeline/queue_depth": collector.groups.qsize(), "pipeline/version": version,
                  "pipeline/trainer_idle_fraction": trainer_wait / wall, "pipeline/trainer_wait_s": step_wait,
                  "pipeline/step_s": time.perf_counter() - wait_start,
                  # A batch of a new microbatch count compiles the step (a few shapes per run).
                  "pipeline/train_compiles": step_fn.traces - traced,
                  "pipeline/generator_idle_fraction": gstats.waiting_s / wall if config.mode == "async" else 0.0,
                  "rollout/slot_occupancy": gstats.occupancy, "rollout/tokens_per_s": gstats.tokens / wall,
                  "train/skipped_steps": int(state.skipped)} | verifier.stats()
            if evaluator is not None and eval_every and step % eval_every == 0:
                start = time.perf_counter()
                m |= evaluate_lib.flatten(evaluator(distributed.to_host(state.params)))
                m["pipeline/eval_s"] = time.perf_counter() - start
            metrics.write(step, m)
            if ckpt is not None and (save_due or step == config.steps):
                save(step)
        finished_normally = True
    except _Stop:
        preempted = True
        step -= 1  # the interrupted step trained nothing
        if ckpt is not None:
            save(step, wait=True)
        print(f"[magjax] stopped by signal: checkpoint {step} saved, in-flight generations abandoned")
    finally:
        stop.restore()
        if ckpt is not None:
            ckpt.close()
        collector.close()  # unblock the pipeline, keep counting
        generator.stop()
        abandoned = generator.abandon()
        verifier.close()
        collector.close()
        metrics.close()
    accounting["unconsumed"] = collector.unconsumed()
    accounting["finished"] = collector.finished
    accounting["abandoned_in_flight"] = collections.Counter({"sequences": abandoned})
    if processes > 1 and (finished_normally or preempted):  # every process got here together: sum their counts
        for key in ("unconsumed", "finished", "abandoned_in_flight"):
            accounting[key] = sum(distributed.exchange(accounting[key]), collections.Counter())
    return RunResult(distributed.to_host(state.params), metrics.history, accounting, version, spanning, step,
                     preempted, resumed_from)


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


def _sync_engine(engine: EngineConfig, in_flight: int, mesh) -> EngineConfig:
    """Sync mode holds one batch in flight, never ``n_async``: every slot runs every decode
    step, so slots beyond the batch would only decode padding. Rounded up to a multiple of
    the generator's data-parallel shards, and never more than configured."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    return dataclasses.replace(engine, slots=min(engine.slots, -(-in_flight // shards) * shards))


def _meshes(config: RunConfig, processes: int):
    """(trainer mesh, generator mesh). Colocated on one process they are one mesh; across
    processes each process generates on its own devices while the trainer spans them all."""
    devices = jax.devices()
    if config.placement == "disaggregated":
        if config.generator_devices % processes:
            raise ValueError(f"RunConfig.generator_devices ({config.generator_devices}) must split evenly over "
                             f"{processes} processes")
        per_process = config.generator_devices // processes
        generating = [d for p in range(processes) for d in jax.local_devices(process_index=p)[:per_process]]
        train_devices = [d for d in devices if d not in generating]
        if not train_devices or not per_process:
            raise ValueError(f"disaggregated placement needs devices for both roles; have {len(devices)}, "
                             f"generator_devices={config.generator_devices}")
        return (make_mesh(config.trainer_mesh, train_devices),
                make_mesh(config.generator_mesh, jax.local_devices()[:per_process]))
    trainer_mesh = make_mesh(config.trainer_mesh, devices)
    if processes == 1:
        return trainer_mesh, trainer_mesh
    return trainer_mesh, make_mesh(config.generator_mesh, jax.local_devices())


def _process_state(meta: dict, process: int, processes: int, where: str) -> dict:
    saved = meta.get("processes")
    if not saved or len(saved) != processes:
        raise ValueError(f"checkpoint {where} was written by {len(saved or [])} process(es); this run has "
                         f"{processes}: each process's data position is in the checkpoint, so resume with the "
                         f"same process count")
    return saved[process]
