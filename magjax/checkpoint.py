"""Checkpoints of the whole run, with Orbax (the only module that imports it).

One checkpoint step holds the trainer state (params, optimizer state, step and skip
counters) as sharded arrays, and a JSON record of everything else a run needs to continue
exactly: the data iterator's position, the request counter that seeds sampling, the
policy version, pipeline accounting, and the operative config with package versions.

Orbax writes each step into a temporary directory and renames it when complete, so a
crash mid-save never leaves a step that looks finished; ``restore_latest`` additionally
skips (with a warning naming it) a step directory that is corrupt or truncated and falls
back to the one before. Restores target the *current* mesh's shardings, so a run saved on
one mesh resumes on another.

Resume order (implemented by callers through ``resume_source``): the run directory's
latest complete checkpoint; else ``init_from`` (a magjax checkpoint or a Hugging Face
directory); else from scratch.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import logging
import os
import warnings

import jax
import orbax.checkpoint as ocp

log = logging.getLogger("magjax.checkpoint")
PACKAGES = ("magjax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 0  # save every N optimizer batches; 0 = only at the end and on preemption
    every_seconds: float = 0.0  # also save when this much time has passed since the last save; 0 = off
    keep_last: int = 3  # most recent checkpoints kept
    keep_every: int | None = None  # also keep every K-th step for good
    async_save: bool = True  # write in the background while training continues


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


class Checkpointer:
    def __init__(self, directory: str, config: CheckpointConfig = CheckpointConfig()):
        self.directory = os.path.abspath(directory)
        self.config = config
        options = ocp.CheckpointManagerOptions(
            max_to_keep=config.keep_last, keep_period=config.keep_every,
            enable_async_checkpointing=config.async_save, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))
        self._last_save = datetime.datetime.now()

    def due(self, step: int) -> bool:
        if self.config.every_steps and step % self.config.every_steps == 0:
            return True
        elapsed = (datetime.datetime.now() - self._last_save).total_seconds()
        return bool(self.config.every_seconds) and elapsed >= self.config.every_seconds

    def save(self, step: int, state, meta: dict, *, wait: bool = False):
        meta = dict(meta) | {"packages": package_versions(), "saved_at": datetime.datetime.now().isoformat()}
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         meta=ocp.args.JsonSave(meta)), force=True)
        self._last_save = datetime.datetime.now()
        if wait:
            self._manager.wait_until_finished()

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def restore_latest(self, abstract_state):
        """(step, state, meta) of the newest readable checkpoint, or None when there is none."""
        for step in reversed(self.steps()):
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
                return step, restored["state"], restored["meta"]
            except Exception as err:  # a corrupt step must not end the run: fall back
                message = f"checkpoint {os.path.join(self.directory, str(step))} is unreadable ({type(err).__name__}: {str(err)[:200]}); trying the previous one"
                warnings.warn(message)
                log.warning(message)
        return None

    def read_meta(self, step: int | None = None) -> tuple[int, dict]:
        """(step, JSON record) of ``step`` (default: the latest), without reading any array."""
        steps = self.steps()
        if not steps:
            raise FileNotFoundError(f"{self.directory}: no complete checkpoint")
        step = steps[-1] if step is None else step
        if step not in steps:
            raise FileNotFoundError(f"{self.directory}: no checkpoint {step} (have {steps})")
        restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return step, restored["meta"]

    def restore_step(self, step: int, abstract_state):
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        return restored["state"], restored["meta"]

    def wait(self):
        self._manager.wait_until_finished()

    def close(self):
        self._manager.wait_until_finished()
        self._manager.close()


def find_checkpoints(path: str) -> str | None:
    """The checkpoint directory of a run directory (its rl/ phase first), or ``path`` itself
    when it holds checkpoint steps; None when there is none."""
    for candidate in (os.path.join(path, "rl", "checkpoints"), os.path.join(path, "checkpoints"), path):
        if os.path.isdir(candidate) and any(d.isdigit() for d in os.listdir(candidate)):
            return candidate
    return None


def abstract_like(tree):
    """Shape, dtype and sharding of every leaf: a restore target on the current mesh."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
