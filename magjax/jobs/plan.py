"""``magjax plan --gin_file F --devices N``: per-device memory of the recipe's trainer and
sampler (magjax/plan.py), without building anything."""

from __future__ import annotations

from magjax.jobs.common import DEFAULT_GIN, MODEL_SETTINGS, gin_recipe

READS = MODEL_SETTINGS | {"RunConfig", "MeshConfig", "PackingConfig", "EngineConfig", "Recipe.run",
                          "Recipe.packing", "Recipe.engine"}


def add_arguments(p) -> None:
    p.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable)")
    p.add_argument("--devices", type=int, default=8, help="devices the mesh spans")
    p.add_argument("--device_memory_gb", type=float, help="memory per device, to check the fit")


def main(args, bindings: list[str]) -> int:
    from magjax.plan import make_plan

    recipe = gin_recipe("plan", args.gin_file or [DEFAULT_GIN], bindings, READS)
    run, engine, packing = recipe.run, recipe.engine, recipe.packing
    plan = make_plan(recipe.model_config, run.trainer_mesh, args.devices, rows=packing.rows, row_len=packing.row_len,
                     slots=engine.slots, max_len=engine.max_len, device_memory_gb=args.device_memory_gb)
    print(plan.describe())
    return 0 if plan.fits else 1
