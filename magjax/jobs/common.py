"""What every job shares: loading the model a recipe names, reporting the records it read,
refusing bindings it would ignore, and the one-line errors of expected failures."""

from __future__ import annotations

import json
import os
import sys

from magjax.data.loaders import LoadReport, ProblemFormatError

SHOWN_REASONS = 3  # skipped records listed by file:line; the rest are counted


class JobError(Exception):
    """An expected failure; its message is one line naming the thing at fault."""


# Errors a user's input can cause: printed as one line, exit status 2, no traceback.
EXPECTED = (JobError, FileNotFoundError, NotADirectoryError, ProblemFormatError, ValueError)


def one_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return " ".join(line.strip() for line in text.splitlines())


def load_model(model, init_from: str | None, seed: int):
    """(ModelConfig, host params): ``init_from`` (a magjax run or checkpoint directory, or a
    Hugging Face directory), else a fresh ``model`` (a preset name or a ModelConfig)."""
    import jax

    from magjax.checkpoint import Checkpointer, find_checkpoints
    from magjax.models import decoder, hf
    from magjax.models.config import preset

    if init_from:
        if not os.path.isdir(init_from):
            raise JobError(f"init_from {init_from}: no such directory (a Hugging Face model or a magjax run)")
        checkpoints = find_checkpoints(init_from)
        if checkpoints:
            from magjax.export import restore_params

            ckpt = Checkpointer(checkpoints)
            try:
                config, params, _ = restore_params(ckpt)
            finally:
                ckpt.close()
            return config, jax.device_get(params)
        if not os.path.exists(os.path.join(init_from, "config.json")):
            raise JobError(f"init_from {init_from}: neither a magjax run (no checkpoints) nor a Hugging Face "
                           f"model (no config.json)")
        config, m = hf.load(init_from)
        return config, m.params()
    config = preset(model) if isinstance(model, str) else model
    return config, decoder.init_params(config, jax.random.key(seed))


def report_loads(reports: list[LoadReport], strict: bool, out=None) -> None:
    """Prints, per file read, how many records were loaded and skipped, with the first
    reasons; ``strict``: any skipped record is an error (after the report is printed)."""
    out = out or sys.stdout
    for r in reports:
        print(f"[magjax] {r.path}: loaded {r.loaded} records, skipped {r.skipped}", file=out)
        for reason in r.errors[:SHOWN_REASONS]:
            print(f"  skipped {reason}", file=out)
        if len(r.errors) > SHOWN_REASONS:
            print(f"  ... and {len(r.errors) - SHOWN_REASONS} more", file=out)
    skipped = sum(r.skipped for r in reports)
    if strict and skipped:
        first = next(e for r in reports for e in r.errors)
        raise JobError(f"--strict: {skipped} record(s) skipped, the first {first}")


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


def write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


# Everything that says which model a job loads and how it talks to it.
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


def simulated_cpu_devices() -> None:
    """The demo runs on 8 simulated CPU devices; accelerators ignore this flag. Set before
    JAX starts."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=8".strip()
