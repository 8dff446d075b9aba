"""How a job takes its configuration: gin files and ``--gin`` bindings, built into the
recipe, with bindings the job would not honour refused by name."""

from __future__ import annotations

import os

from magjax.jobs.errors import JobError


def refuse_unread(command: str, bindings: list[str], reads: set[str] | None,
                  refused: dict[str, str] | None = None) -> None:
    """Raises JobError for the first command-line binding ``command`` would not honour.

    ``reads``: the configurables (``DataConfig``) or parameters (``Recipe.sft_optimizer``)
    the job reads; None: all of them. ``refused``: parameters it reads but overrides,
    with the reason. Scoped bindings (``trainer/MeshConfig.fsdp``) are deliberate wiring
    and pass.
    """
    for binding in bindings:
        name = binding.split("=", 1)[0].strip()
        if "/" in name:
            continue
        configurable = name.split(".", 1)[0]
        if refused and name in refused:
            raise JobError(f"--gin.{name}: not honoured by `magjax {command}`: {refused[name]}")
        if reads is not None and configurable not in reads and name not in reads:
            raise JobError(f"--gin.{name}: `magjax {command}` does not read {configurable} (it reads "
                           f"{', '.join(sorted(reads))})")


MODEL_SETTINGS = {"MODEL", "TOKENIZER", "INIT_FROM", "ModelConfig", "RopeScaling", "preset", "ChatFormat",
                  "Recipe.model", "Recipe.tokenizer", "Recipe.init_from", "Recipe.chat", "Recipe.remat"}
DEFAULT_GIN = "experiments/demo_cpu.gin"


def add_gin_arguments(p) -> None:
    p.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable)")
    p.add_argument("--run_dir", help="where checkpoints, metrics and outputs go")
    p.add_argument("--strict", action="store_true", help="any skipped input record is an error")


def gin_recipe(command: str, files: list[str], bindings: list[str], reads: set[str] | None,
               refused: dict[str, str] | None = None, extra: list[str] = ()):
    """Parses the gin files and ``--gin`` bindings (``extra`` are the job's own, not the
    user's), refuses user bindings the job would not honour, and builds the recipe."""
    from magjax import config

    files = files or [DEFAULT_GIN]
    try:
        names = [b.split("=", 1)[0].strip() for b in bindings]
        # A value the files require is given whatever the job: it is not the user's choice.
        required = config.required(files, names) if reads is not None else set()
        config.parse(files, list(bindings) + list(extra))
    except config.ConfigError as err:
        raise JobError(f"configuration error: {err}") from None
    refuse_unread(command, [b for b in bindings if b.split("=", 1)[0].strip() not in required], reads, refused)
    return config.recipe()


def simulated_cpu_devices(count: int = 8) -> None:
    """The demo runs on 8 simulated CPU devices; accelerators ignore this flag. Set before
    JAX starts; a count already in XLA_FLAGS wins."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def run_job(command: str, job, args, bindings: list[str], *, reads: set[str] | None,
            refused: dict[str, str] | None = None, default_dir: str) -> dict | None:
    """What every training or evaluation job does around its work: 8 simulated CPU devices,
    JAX's persistent compilation cache (``xla_cache.py``), the cluster (a no-op unless
    launch/ or the environment describes one), the recipe from gin, then ``job(recipe,
    run_dir, strict=...)``. On process 0, which speaks for a multi-process job, saves the
    operative configuration in the run directory, says it is done and returns the job's
    results; elsewhere returns None."""
    import jax

    from magjax import config, xla_cache
    from magjax.mesh import initialize_distributed

    simulated_cpu_devices()
    initialize_distributed()
    run_dir = args.run_dir or default_dir
    xla_cache.enable(run_dir)
    recipe = gin_recipe(command, args.gin_file, bindings, reads, refused)
    results = job(recipe, run_dir, strict=args.strict)
    if jax.process_index() != 0:
        return None
    config.save_operative(results["run_dir"])
    cache = xla_cache.summary()
    print((f"[magjax] {cache}\n" if cache else "") + f"\n[magjax] done. Run directory: {results['run_dir']}")
    return results
