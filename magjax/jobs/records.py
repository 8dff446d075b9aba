"""What a job reads and writes besides its recipe: the model it starts from, the load
reports of its problem files, and its JSON results."""

from __future__ import annotations

import json
import os
import sys

from magjax.data.loaders import LoadReport
from magjax.jobs.errors import JobError

SHOWN_REASONS = 3  # skipped records listed by file:line; the rest are counted


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
        if not any(os.path.exists(os.path.join(init_from, f)) for f in ("config.json", "params.json")):
            raise JobError(f"init_from {init_from}: neither a magjax run (no checkpoints) nor a Hugging Face "
                           f"model (no config.json) nor one in Mistral's layout (no params.json)")
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


def write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


# Everything that says which model a job loads and how it talks to it.
