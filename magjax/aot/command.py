"""``magjax plan``: what an experiment needs per chip of a slice, before anything runs.

With ``--topology`` and libtpu installed (the ``tpu`` extra) the experiment's functions are
compiled for the slice and XLA's allocations judged (compile.py, report.py). Without
libtpu, or without ``--topology``, the hand formula of magjax.plan, labelled an estimate.
Neither loads a checkpoint or a dataset. The device count comes from ``--devices``, else
the slice (``--topology``, or the mesh file's ``MESH_SLICE``), else the mesh file's
``MESH_DEVICES``.
"""

from __future__ import annotations

import json
import sys

import jax

from magjax import config
from magjax.aot import abstract, kv_pool, recipe as recipe_lib, topology
from magjax.aot.topology import INSTALL_HINT

DEFAULT_DEVICES = 8  # a mesh file that says nothing, and no --devices: the CPU demo's count


def model_flops_per_token(model, row_len: int) -> float:
    """Training FLOPs per token: 6 x matmul parameters, plus causal attention over rows of
    ``row_len`` tokens (12 x layers x heads x head_dim x row_len / 2)."""
    from magjax.bench.train import model_flops_per_token as matmul_flops

    return matmul_flops(model) + 12.0 * model.num_layers * model.num_heads * model.head_dim * row_len / 2


def _moment_note(state, init) -> list[str]:
    """Optimizer moments less sharded than the parameters they shadow cost every chip."""
    if not init.compiled:
        return ["the run's init_state does not fit; the train step was compiled with the optimizer moments "
                "sharded like the parameters"]
    params, moments = abstract.per_chip_bytes(state.params), abstract.per_chip_bytes(state.opt_state)
    total = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))  # noqa: E731
    expected = params * total(state.opt_state) / max(total(state.params), 1)
    if moments > 1.5 * expected:
        return [f"the optimizer state takes {moments / 2**30:.2f} GiB per chip where sharded like the parameters it "
                f"would take {expected / 2**30:.2f} GiB"]
    return []


def compile_report(recipe, slice_: topology.Slice):
    """Compiles the recipe for the slice; returns report.Report."""
    from magjax.aot import compile as compile_lib
    from magjax.aot.placement import place
    from magjax.aot.report import Report

    devices = topology.devices(slice_)
    hbm, source = topology.hbm_bytes(slice_)
    placement = place(recipe.run, slice_, devices)
    result = compile_lib.compile_recipe(recipe, placement)
    tokens = result.microbatches * result.rows * recipe.packing.row_len
    model = recipe.model
    return Report(
        model=recipe.model_name, params=model.num_params(), slice=slice_.name,
        topology=slice_.topology_name, chips=slice_.chips, hosts=slice_.hosts, hbm_bytes=hbm, hbm_source=source,
        trainer_mesh=dict(placement.trainer.shape), sampler_mesh=dict(placement.generator.shape),
        placement="colocated" if placement.colocated else "disaggregated", functions=result.functions,
        trainer_state_bytes=result.trainer_state_bytes, batch_bytes=result.batch_bytes,
        sampler_weights_bytes=result.sampler_weights_bytes, kv_cache_bytes=result.kv_cache_bytes,
        microbatches=result.microbatches, tokens_per_step=tokens,
        model_flops_per_step=tokens * model_flops_per_token(model, recipe.packing.row_len),
        notes=_moment_note(result.train_state, next(f for f in result.functions if f.function == "init_state")),
        kv_cache=kv_pool.report(recipe.engine, processes=slice_.hosts, page_shards=result.page_shards,
                                pool_bytes=result.kv_pool_bytes, decode_attention=result.decode_attention,
                                run=recipe.run, reward=recipe.reward),
        shared_weights_bytes=result.shared_weights_bytes)


def _estimate(recipe, args, slice_: topology.Slice | None) -> int:
    from magjax.loop import shares_weights
    from magjax.plan import make_plan

    if args.devices:
        devices, why = args.devices, "--devices"
    elif slice_ is not None:
        devices, why = slice_.chips, f"the chips of {slice_.name}"
    elif recipe.mesh_devices:
        devices, why = recipe.mesh_devices, "the mesh file's MESH_DEVICES"
    else:
        devices, why = DEFAULT_DEVICES, "assumed: neither the mesh file nor --devices says"
    data, fsdp, _ = recipe.trainer_mesh.resolve(devices)
    packing = recipe.packing.for_mesh(data * fsdp)
    engine = recipe.engine
    # A paged cache holds its pool's positions, however many slots share them.
    per_slot = engine.pool_pages * engine.page_size // engine.slots if engine.paged else engine.max_len
    plan = make_plan(recipe.model, recipe.trainer_mesh, devices, rows=packing.rows,
                     row_len=recipe.packing.row_len, slots=engine.slots, max_len=per_slot,
                     device_memory_gb=args.device_memory_gb,
                     shares_weights=shares_weights(recipe.run, slice_ is None or slice_.hosts == 1, "tpu"))
    print("ESTIMATE (a hand formula, not what XLA allocates; compile for the slice with --topology and libtpu: "
          f"{INSTALL_HINT})")
    print(f"devices: {devices} ({why})")
    if slice_ is not None and not args.topology and topology.libtpu_available():
        print(f"(XLA's own figures: add --topology {slice_.name})")
    print(plan.describe())
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"estimate": True, "devices": devices, "fits": plan.fits, "total_bytes": plan.total_bytes,
                       **{k: v for k, v in vars(plan).items()}}, f, indent=2)
    return 0 if plan.fits else 1


def run(args, bindings: list[str]) -> int:
    """The ``plan`` command; exit status 0 when everything fits, 1 when not, 2 on bad input."""
    files = args.gin_file or ["experiments/demo_cpu.gin"]
    try:
        recipe = recipe_lib.load(files, bindings)
        name = args.topology or recipe.mesh_slice
        slice_ = topology.parse_slice(name) if name else None
    except (config.ConfigError, ValueError) as err:
        print(f"magjax plan: configuration error: {err}", file=sys.stderr)
        return 2
    if args.topology and not topology.libtpu_available():
        print(f"magjax plan: compiling for {args.topology} needs libtpu, which is not installed: {INSTALL_HINT}",
              file=sys.stderr)
    if not args.topology or not topology.libtpu_available():
        try:
            return _estimate(recipe, args, slice_)
        except ValueError as err:  # a mesh that does not divide the device count
            print(f"magjax plan: configuration error: {err}", file=sys.stderr)
            return 2
    try:
        report = compile_report(recipe, slice_)
    except ValueError as err:  # a mesh that does not divide the slice, a placement that cannot be made
        print(f"magjax plan: configuration error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # libtpu could not describe the slice
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"magjax plan: cannot compile for {slice_.name}: {first}", file=sys.stderr)
        return 2
    print(report.describe())
    if args.json:
        report.write_json(args.json)
    return 0 if report.fits else 1
