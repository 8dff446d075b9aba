"""Lowers and compiles the experiment's real functions for a TPU slice and reads, per chip,
what XLA allocates for each (``compiled.memory_analysis()``).

The functions, as a run builds them: the train step (``train_step.make_train_step``) at the
experiment's microbatch shape; the weight publication, the trainer's parameters turned into
the sampler's layout (``Engine.prepare``, from wherever the trainer's arrays arrive); the
sampler's prefill at its largest prompt bucket and its decode chunk, at the experiment's
slots and ``max_len`` (and its page pool and page tables, when the cache is paged). A
program that cannot fit fails to compile with RESOURCE_EXHAUSTED and the bytes it needed:
that is recorded as a measurement, not raised.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import time

import jax
import numpy as np

from magjax.aot import abstract
from magjax.aot.placement import Placement
from magjax.aot.topology import parse_bytes
from magjax.loop import shares_weights
from magjax.rl import train_step
from magjax.sampling.engine import Engine, prepared_shardings


@dataclasses.dataclass
class FunctionMemory:
    """Per-chip bytes of one compiled function, as XLA allocates them."""

    role: str  # trainer | sampler
    function: str  # train_step | publish | prefill | decode
    shape: str  # what it was compiled for, in words
    argument_bytes: int = 0
    output_bytes: int = 0
    alias_bytes: int = 0  # outputs written into donated arguments: counted once
    temp_bytes: int = 0
    code_bytes: int = 0
    compile_s: float = 0.0  # wall clock
    compile_cpu_s: float = 0.0  # this process's CPU time: comparable across busy and idle machines
    xla_flops: float | None = None  # per chip, XLA's cost analysis (a loop body counted once)
    needed_bytes: int | None = None  # did not fit: what XLA said it needed
    needed_kind: str | None = None  # "temporaries" (XLA named only those) or "total"
    error: str | None = None  # did not compile for another reason (one line)

    @property
    def peak_bytes(self) -> int:
        """Arguments, outputs not written in place, temporaries and code, all live at once."""
        if self.needed_kind == "total":
            return self.needed_bytes
        if self.needed_kind == "temporaries":  # the arguments (logical sizes) are live beside them
            return self.argument_bytes + self.needed_bytes
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes

    @property
    def compiled(self) -> bool:
        return self.needed_bytes is None and self.error is None


# RESOURCE_EXHAUSTED texts: "the total memory required for HLO temporaries (1.00T) exceeds
# available HBM (95.74G)" or "Used 120.5G of 95.74G hbm. Exceeded hbm capacity by 24.8G."
_NEEDS = (("temporaries", re.compile(r"memory required for HLO temporaries \(([0-9.]+)([KMGT]?)\) exceeds")),
          ("total", re.compile(r"Used ([0-9.]+)([KMGT]?) of [0-9.]+[KMGT]? hbm")))


def _needed(message: str) -> tuple[int, str] | tuple[None, None]:
    for kind, pattern in _NEEDS:
        found = pattern.search(message)
        if found:
            return parse_bytes(*found.groups()), kind
    return None, None


# Programs compiled in this process, by what XLA was given: the lowered module's text and
# the chips it is for. Plans of one recipe on several placements (or several recipes with
# one model) lower the same trainer or sampler program again; a TPU compile takes seconds
# to minutes, and XLA's persistent cache does not hold these (they have no TPU client).
_COMPILED: dict[tuple, tuple] = {}


def _compile(jitted, args, mesh):
    """``(compiled or None, the exception or None, wall s, CPU s)``, compiling once per program."""
    start, start_cpu = time.perf_counter(), time.process_time()
    try:
        with jax.set_mesh(mesh):
            lowered = jitted.lower(*args)
    except Exception as err:  # noqa: BLE001 - a program that does not trace is a result too
        return None, err, time.perf_counter() - start, time.process_time() - start_cpu
    key = (hashlib.sha256(lowered.as_text().encode()).hexdigest(),
           tuple((d.platform, d.device_kind, d.id) for d in mesh.devices.flat))
    if key not in _COMPILED:
        compiled = error = None
        try:
            with jax.set_mesh(mesh):
                compiled = lowered.compile()
        except Exception as err:  # noqa: BLE001
            error = err
        _COMPILED[key] = (compiled, error, time.perf_counter() - start, time.process_time() - start_cpu)
    return _COMPILED[key]


def compile_function(memory: FunctionMemory, jitted, args, mesh) -> tuple[FunctionMemory, object]:
    """Compiles ``jitted`` for ``args`` (abstract, with shardings) and fills in ``memory``.

    Traced under ``jax.set_mesh(mesh)``: Pallas TPU kernels read the chip generation from
    the context mesh. A program this process compiled before is not compiled again; its
    figures (compile time included) are the first compile's."""
    compiled, err, memory.compile_s, memory.compile_cpu_s = _compile(jitted, args, mesh)
    if err is not None:  # a program that does not fit is a result
        if os.environ.get("MAGJAX_PLAN_TRACEBACK"):  # debugging the planner: the full traceback
            raise err
        text = str(err)
        if "RESOURCE_EXHAUSTED" in text:
            memory.needed_bytes, memory.needed_kind = _needed(text)
            memory.argument_bytes = abstract.per_chip_bytes(args)  # logical: XLA gave no analysis
        if memory.needed_bytes is None:
            memory.error = f"{type(err).__name__}: {text.strip().splitlines()[0][:300]}"
    if compiled is not None:
        analysis = compiled.memory_analysis()
        memory.argument_bytes = int(analysis.argument_size_in_bytes)
        memory.output_bytes = int(analysis.output_size_in_bytes)
        memory.alias_bytes = int(analysis.alias_size_in_bytes)
        memory.temp_bytes = int(analysis.temp_size_in_bytes)
        memory.code_bytes = int(analysis.generated_code_size_in_bytes)
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
        memory.xla_flops = float(cost["flops"]) if cost and "flops" in cost else None
    return memory, compiled


@dataclasses.dataclass
class Compilation:
    functions: list[FunctionMemory]
    trainer_state_bytes: int  # per chip: parameters, optimizer moments, counters
    batch_bytes: int  # per chip: the train step's batch
    sampler_weights_bytes: int  # per chip: the sampler's copy of the weights
    kv_cache_bytes: int  # per chip: the sampler's slots (cache and per-slot state)
    microbatches: int
    rows: int  # per microbatch, all chips (from the token budget, where the recipe sets one)
    train_state: object  # the abstract TrainState, with its shardings
    kv_pool_bytes: int = 0  # per chip: the keys and values alone (every layer's pool or slots)
    decode_attention: str = ""  # the implementation the backend picked (e.g. tpu-paged)
    page_shards: int = 1  # parts the pool's pages are split into (data-parallel shards of the sampler's mesh)
    # per chip: the trainer's parameters the sampler reads as they are (colocated on one
    # mesh, a backend that reads the trainer's layout); 0 when it keeps its own copy
    shared_weights_bytes: int = 0


def compile_recipe(recipe, placement: Placement, *, eos_id: int = 0) -> Compilation:
    """Compiles every function of the recipe on its placement (see placement.py)."""
    model, engine_config = recipe.model, recipe.engine
    functions = []

    # Trainer: its state as the run initialises it, then one step over the largest
    # minibatch's microbatches.
    tmesh = placement.trainer
    p = abstract.params(model, tmesh)
    init, tx, schedule = abstract.init_state_fn(recipe, p)
    init_memory, compiled = compile_function(FunctionMemory("trainer", "init_state", "parameters -> train state"),
                                             init, (p,), tmesh)
    functions.append(init_memory)
    if compiled is not None:
        state = abstract.with_shardings(jax.eval_shape(init, p), compiled.output_shardings)
    else:
        state = abstract.with_shardings(jax.eval_shape(init, p), train_step.init_state_shardings(
            tx, p, with_ref=recipe.loss.kl_coef > 0))
    packing = recipe.packing.for_mesh(tmesh.shape["data"] * tmesh.shape["fsdp"])  # rows from a token budget
    recipe = recipe.with_packing(packing)
    m = abstract.microbatches(recipe)
    batch = abstract.train_batch(recipe, tmesh, m)
    step = train_step.make_train_step(model, recipe.loss, tx, schedule, mesh=tmesh,
                                      shardings=jax.tree.map(lambda s: s.sharding, state))
    shape = f"{m} microbatches x {packing.rows} rows x {packing.row_len} tokens"
    functions.append(compile_function(FunctionMemory("trainer", "train_step", shape), step.jitted,
                                      (state, batch), tmesh)[0])

    # Sampler: the publication fixes the layout prefill and decode read. On one mesh the
    # sampler reads the trainer's arrays where the layouts agree (loop.py): nothing to publish.
    gmesh = placement.generator
    engine = Engine(model, engine_config, recipe.sampling, eos_id, mesh=gmesh,
                    share_weights=shares_weights(recipe.run, placement.same_mesh, "tpu"))
    arriving = p if placement.same_mesh else abstract.params(model, gmesh)
    if engine.shared_weights:
        functions.append(FunctionMemory("sampler", "publish", "none: the sampler reads the trainer's arrays"))
        weights = arriving
    else:
        publish, compiled = compile_function(FunctionMemory("sampler", "publish", "trainer layout -> sampler layout"),
                                             engine._prepare, (arriving,), gmesh)
        functions.append(publish)
        shapes = jax.eval_shape(engine._prepare, arriving)
        if compiled is not None:
            weights = abstract.with_shardings(shapes, compiled.output_shardings)
        else:  # the layout the engine asks for
            weights = abstract.with_shardings(shapes, prepared_shardings(model, gmesh, engine.ops.projections))
    decode_state = abstract.decode_state(engine)
    g, bucket = recipe.run.group_size, engine_config.prompt_buckets[-1]
    i32 = lambda shape=(): abstract.scalar(gmesh, np.int32, shape)  # noqa: E731
    tokens = abstract.scalar(gmesh, np.int32, (1, bucket))
    # Paged: the page table rows of the prompt's G slots (prefill) and of every slot (decode).
    table = lambda rows: (i32((rows, engine_config.pages_per_slot)),) if engine.paged else ()  # noqa: E731
    sampling = (abstract.scalar(gmesh, np.float32), abstract.scalar(gmesh, np.float32), i32(), i32())
    prefill_args = (weights, decode_state, tokens, i32(), i32((g,)), i32(), i32((g,)), i32(), sampling, *table(g))
    cache = (f"a pool of {engine_config.pool_pages} pages x {engine_config.page_size}" if engine.paged
             else f"{engine_config.slots} slots x {engine_config.max_len}")
    functions.append(compile_function(
        FunctionMemory("sampler", "prefill", f"1 prompt of {bucket} tokens into {g} of {engine_config.slots} slots, "
                       f"{cache}"), engine._prefill, prefill_args, gmesh)[0])
    functions.append(compile_function(
        FunctionMemory("sampler", "decode",
                       f"{engine_config.chunk_steps} steps x {engine_config.slots} slots, {cache}"),
        engine._decode, (weights, decode_state, *table(engine_config.slots)), gmesh)[0])
    pool = abstract.per_chip_bytes((decode_state.k_cache, decode_state.v_cache))
    weights_bytes = abstract.per_chip_bytes(weights)
    return Compilation(functions, abstract.per_chip_bytes(state), abstract.per_chip_bytes(batch),
                       0 if engine.shared_weights else weights_bytes, abstract.per_chip_bytes(decode_state), m,
                       packing.rows, state, pool, engine.implementations.get("decode_attention", ""),
                       engine.page_shards, weights_bytes if engine.shared_weights else 0)
