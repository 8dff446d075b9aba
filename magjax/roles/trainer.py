"""The trainer role: the train state on its mesh, one jitted step, and the weight path.

Used by RL (the loop publishes every new version to the rollout) and by SFT (no rollout,
nothing to publish). ``step`` places one host batch, runs the sharded, donated step and
counts a policy version; ``publish`` hands the current weights to the rollout through
the ``WeightStore`` (colocated: the arrays themselves, which the rollout lays out for its
engine before the call returns; otherwise a reshard onto the rollout's mesh).
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from magjax import distributed
from magjax.backends import race
from magjax.checkpoint import Checkpointer, abstract_like
from magjax.models import decoder
from magjax.models.config import ModelConfig
from magjax.rl import optimizer as opt_lib, train_step
from magjax.rl.losses import LossConfig
from magjax.types import TrainBatch
from magjax.weights import WeightStore

# Trainers of one configuration share their jitted functions (and the step's trace count):
# a process that builds several (SFT then RL, a curriculum's stages, a resumed attempt, a
# test suite) traces, lowers and compiles each step once instead of once per trainer. The
# key holds all the step is built from; the CPU kernels' override too, since a one-device
# step picks its attention (native or XLA) when it is traced.
_PROGRAMS: dict = {}


class Trainer:
    def __init__(self, model_config: ModelConfig, loss: LossConfig, optimizer: opt_lib.OptimizerConfig, mesh, *,
                 params: dict | None = None, seed: int = 0,
                 publish_to: Callable[[dict, int], None] | None = None, publish_mesh=None):
        """``params`` (host or device) start the state, else a fresh init from ``seed``.
        ``publish_to(params, version)`` receives each new version, laid out for
        ``publish_mesh`` (None: the trainer's own layout, a copy)."""
        self.model_config, self.mesh = model_config, mesh
        init = params if params is not None else decoder.init_params(model_config, jax.random.key(seed))
        tx, schedule = opt_lib.make_optimizer(optimizer)
        self.state = train_step.init_state(jax.device_put(init, decoder.param_shardings(model_config, mesh)), tx)
        shardings = train_step.state_shardings(self.state)
        key = (model_config, loss, optimizer, mesh, jax.tree.structure(shardings), tuple(jax.tree.leaves(shardings)),
               race.mode())
        if key not in _PROGRAMS:
            step = train_step.make_train_step(model_config, loss, tx, schedule, mesh=mesh, shardings=shardings)
            # The decoupled objective's pi_old: the trainer's own forward at the batch's start.
            old_policy = (train_step.make_logprob_step(model_config, loss, mesh=mesh, param_shardings=shardings.params)
                          if loss.decoupled_old_policy else None)
            _PROGRAMS[key] = step, old_policy
        self._step, self._old_policy = _PROGRAMS[key]
        self.version = 0
        shardings = decoder.param_shardings(model_config, publish_mesh) if publish_mesh is not None else None
        self._store = WeightStore(publish_to, shardings=shardings) if publish_to is not None else None

    def restore(self, ckpt: Checkpointer) -> tuple[int, dict] | None:
        """The latest checkpoint's state, if any: (its step, its metadata)."""
        restored = ckpt.restore_latest(abstract_like(self.state))
        if restored is None:
            return None
        step, self.state, meta = restored
        self.version = meta["version"]
        return step, meta

    def old_policy(self, batches: list[TrainBatch]) -> list[TrainBatch]:
        """The batch's minibatches, placed, with pi_old recomputed under the current weights
        when the objective is decoupled (LossConfig.decoupled_old_policy); else unchanged."""
        if self._old_policy is None:
            return batches
        placed = [train_step.place_batch(b, self.mesh) for b in batches]
        return train_step.recompute_old_logprobs(self._old_policy, self.state.params, placed)

    def step(self, batch: TrainBatch) -> dict:
        """One optimizer step on a host batch; its metrics as floats."""
        self.state, metrics = self._step(self.state, train_step.place_batch(batch, self.mesh))
        self.version += 1
        return {k: float(v) for k, v in jax.device_get(metrics).items()}

    def publish(self) -> float:
        """Hands the current weights to the rollout; returns the seconds it took."""
        return self._store.publish(self.state.params, self.version)

    @property
    def compiles(self) -> int:
        """How many times the step compiled in this process (once per microbatch count seen,
        by this trainer or an earlier one of the same configuration)."""
        return self._step.traces

    @property
    def skipped_steps(self) -> int:
        return int(self.state.skipped)

    def host_params(self) -> dict:
        return distributed.to_host(self.state.params)
