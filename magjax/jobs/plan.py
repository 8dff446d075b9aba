"""``magjax plan``: what a recipe needs per chip, before anything runs.

``--topology v5p-64`` (with libtpu, the ``tpu`` extra) compiles the recipe's real functions
for the slice ahead of time and judges XLA's per-chip allocations (magjax/aot/); without
it, the hand formula of magjax/plan.py, labelled an estimate. Neither loads a checkpoint
or a dataset.
"""

from __future__ import annotations

from magjax.jobs.bindings import DEFAULT_GIN, MODEL_SETTINGS, refuse_unread
from magjax.jobs.errors import JobError

READS = MODEL_SETTINGS | {"RunConfig", "MeshConfig", "PackingConfig", "EngineConfig", "SamplingConfig", "LossConfig",
                          "OptimizerConfig", "MESH_SLICE", "MESH_DEVICES", "Recipe.run", "Recipe.packing",
                          "Recipe.engine", "Recipe.sampling", "Recipe.loss", "Recipe.optimizer"}


def add_arguments(p) -> None:
    p.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable)")
    p.add_argument("--devices", type=int,
                   help="devices the mesh spans (default: the slice's chips, or the mesh file's MESH_DEVICES)")
    p.add_argument("--device_memory_gb", type=float, help="estimate: memory per device, to check the fit")
    p.add_argument("--topology", help="a TPU slice (v5p-64, v5e-16, v4-32, v6e-8, v5p:2x4x4): compile the "
                                      "recipe for it and report XLA's per-chip memory (needs libtpu)")
    p.add_argument("--json", help="also write the report as JSON to this path")


def main(args, bindings: list[str]) -> int:
    from magjax import config
    from magjax.aot import command

    # A value the files require (INIT_FROM, DataConfig.train) may be given, as for any job;
    # the plan reads neither.
    try:
        required = config.required(args.gin_file or [DEFAULT_GIN], [b.split("=", 1)[0].strip() for b in bindings])
    except config.ConfigError as err:
        raise JobError(f"configuration error: {err}") from None
    refuse_unread("plan", [b for b in bindings if b.split("=", 1)[0].strip() not in required], READS)
    import jax

    # Never JAX's persistent cache, even where the environment configures one: programs
    # compiled for a TPU topology without a TPU are written but cannot be read back (each
    # later plan would warn and compile again), and compile time is part of the report.
    enabled = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        return command.run(args, bindings)
    finally:
        jax.config.update("jax_enable_compilation_cache", enabled)
