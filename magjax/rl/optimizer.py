"""AdamW with warm-up and a constant or cosine schedule, global-norm clipping, and a
weight-decay mask that spares norms, biases and embeddings."""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import optax

# Parameters that weight decay applies to: the projection matrices. Norm scales, biases
# and the token embedding are left alone (decaying them hurts, and is not what the
# field's recipes do).
DECAYED = frozenset({"wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down", "lm_head"})


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    learning_rate: float = 1e-6  # peak learning rate
    warmup_steps: int = 0  # linear warm-up from 0
    schedule: Literal["constant", "cosine"] = "constant"
    decay_steps: int = 1000  # cosine: steps from the peak to end_lr_fraction * peak
    end_lr_fraction: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip_norm: float = 1.0  # global gradient norm; <= 0 disables clipping

    def __post_init__(self):
        if self.learning_rate <= 0:
            raise ValueError(f"OptimizerConfig.learning_rate must be positive, got {self.learning_rate}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"OptimizerConfig.schedule must be constant or cosine, got {self.schedule!r}")
        if self.warmup_steps < 0 or self.decay_steps < 1:
            raise ValueError("OptimizerConfig: warmup_steps >= 0 and decay_steps >= 1 required")


def make_schedule(config: OptimizerConfig) -> optax.Schedule:
    peak = config.learning_rate
    if config.schedule == "cosine":
        after = optax.cosine_decay_schedule(peak, config.decay_steps, alpha=config.end_lr_fraction)
    else:
        after = optax.constant_schedule(peak)
    if config.warmup_steps == 0:
        return after
    warmup = optax.linear_schedule(0.0, peak, config.warmup_steps)
    return optax.join_schedules([warmup, after], [config.warmup_steps])


def decay_mask(params):
    """True for the parameters weight decay applies to (see DECAYED)."""
    def decayed(path, _):
        return any(getattr(k, "key", None) in DECAYED for k in path)
    return jax.tree_util.tree_map_with_path(decayed, params)


def make_optimizer(config: OptimizerConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = make_schedule(config)
    parts = [optax.clip_by_global_norm(config.clip_norm)] if config.clip_norm > 0 else []
    parts.append(optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                             weight_decay=config.weight_decay, mask=decay_mask))
    return optax.chain(*parts), schedule
