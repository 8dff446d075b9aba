"""Supervised fine-tuning: Magistral Small's cold start, on the same train step as RL.

Each example is a prompt and a target response (a teacher trace, or a demo task's worked
solution); the loss is cross-entropy on the response tokens and the end-of-sequence token.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from magjax.mesh import MeshConfig, make_mesh
from magjax.metrics import MetricsWriter
from magjax.models.config import ModelConfig
from magjax.models.tokenizer import ChatFormat, Tokenizer, check_vocab
from magjax.rl import batching, optimizer as opt_lib
from magjax.rl.losses import LossConfig
from magjax.roles.trainer import Trainer
from magjax.types import Completion, ScoredGroup


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    steps: int = 100
    batch_size: int = 32  # sequences per step
    seed: int = 0
    mesh: MeshConfig = MeshConfig(data=1, fsdp=-1, model=1)
    # Devices of each process to train on; -1 = all. On simulated CPU devices a small
    # model trains faster on fewer (the demo model: 378 ms a step on 8, 204 ms on 1: they
    # share two cores, and the collectives cost more than the split saves).
    devices_per_process: int = -1

    def __post_init__(self):
        if self.devices_per_process == 0 or self.devices_per_process < -1:
            raise ValueError(f"SFTConfig.devices_per_process must be -1 (all) or positive, got {self}")


def sft_devices(per_process: int) -> list | None:
    """The first ``per_process`` devices of every process, in process order (None for -1:
    ``make_mesh`` then lays every device out for the topology)."""
    if per_process == -1:
        return None
    available = len(jax.local_devices())
    if per_process > available:
        raise ValueError(f"SFTConfig.devices_per_process={per_process}, but a process has {available} devices")
    return [d for p in range(jax.process_count()) for d in jax.local_devices(process_index=p)[:per_process]]


def examples_to_groups(examples: list[tuple[str, str]], tokenizer: Tokenizer, chat: ChatFormat) -> list[ScoredGroup]:
    """(prompt, response) pairs as one-completion groups the batcher understands."""
    groups = []
    for i, (prompt, response) in enumerate(examples):
        tokens = tokenizer.encode(response) + [tokenizer.eos_id]
        c = Completion(f"sft-{i}", 0, chat.encode(tokenizer, prompt), tokens, [0.0] * len(tokens), [0] * len(tokens))
        groups.append(ScoredGroup(c.problem_id, [c], [0.0]))
    return groups


def run_sft(examples: list[tuple[str, str]], model_config: ModelConfig, params: dict | None, tokenizer: Tokenizer,
            chat: ChatFormat, config: SFTConfig = SFTConfig(),
            optimizer: opt_lib.OptimizerConfig = opt_lib.OptimizerConfig(learning_rate=3e-3, warmup_steps=10),
            packing: batching.PackingConfig = batching.PackingConfig(rows=8, row_len=256),
            metrics: MetricsWriter | None = None) -> tuple[dict, list[float]]:
    """Trains ``config.steps`` steps on shuffled ``examples``; returns (params, losses)."""
    check_vocab(tokenizer, model_config.vocab_size)
    mesh = make_mesh(config.mesh, sft_devices(config.devices_per_process))
    packing = packing.for_mesh(mesh.shape["data"] * mesh.shape["fsdp"])  # a token budget's rows
    loss = LossConfig(kind="sft")
    trainer = Trainer(model_config, loss, optimizer, mesh, params=params, seed=config.seed)
    groups = examples_to_groups(examples, tokenizer, chat)
    rng = np.random.default_rng(config.seed)
    order, cursor, losses = rng.permutation(len(groups)), 0, []
    for step in range(1, config.steps + 1):
        if cursor + config.batch_size > len(order):
            order, cursor = rng.permutation(len(groups)), 0
        chosen = [groups[i] for i in order[cursor : cursor + config.batch_size]]
        cursor += config.batch_size
        (batch,), stats = batching.minibatches(chosen, batching.SFT, packing)  # nothing to filter in SFT
        m = trainer.step(batch)
        losses.append(m["train/loss"])
        if metrics is not None:
            metrics.write(step, m | {"pipeline/padding_fraction": stats["padding_fraction"]})
    return trainer.host_params(), losses
