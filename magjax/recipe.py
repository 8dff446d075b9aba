"""The recipe: every setting a job reads, in one record.

Each setting has one home, the frozen dataclass beside the code it configures
(``EngineConfig`` in sampling/engine.py, ``LossConfig`` in rl/losses.py, ...), and one
default, that dataclass's own. ``Recipe`` gathers them; gin binds it once
(gin/base.gin: ``Recipe.run = @RunConfig()`` ...), and every job (magjax/jobs/) takes it
whole: ``RunConfig`` (the RL pipeline's shape, loop.py), ``DataConfig`` (where problems come
from, data/sources.py), and the model, tokenizer and initial weights.
"""

from __future__ import annotations

import dataclasses

from magjax.data.sources import DataConfig
from magjax.evaluate import EvalConfig
from magjax.loop import RunConfig
from magjax.models.config import ModelConfig, preset
from magjax.models.tokenizer import ChatFormat
from magjax.rewards.pool import PoolConfig
from magjax.rewards.reward import RewardConfig
from magjax.rl.batching import AdvantageConfig, PackingConfig
from magjax.rl.losses import LossConfig
from magjax.rl.optimizer import OptimizerConfig
from magjax.sampling.engine import EngineConfig, SamplingConfig
from magjax.sft import SFTConfig


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything a job reads. ``model``, ``tokenizer`` and ``init_from`` are what gin's
    ``MODEL``, ``TOKENIZER`` and ``INIT_FROM`` macros set."""

    model: str | ModelConfig = "demo"  # a preset name or a ModelConfig
    tokenizer: str = "byte"  # "byte", or a tokenizer.json or tekken.json (or its folder)
    init_from: str | None = None  # a Hugging Face directory or a magjax run/checkpoint directory
    # The trainer's rematerialisation (ModelConfig.remat: "none", "layer", "save_matmuls",
    # "offload"), set by a recipe for its row length and slice; None keeps the model's own
    # (a checkpoint's config.json says nothing about memory).
    remat: bool | str | None = None
    chat: ChatFormat = ChatFormat()
    data: DataConfig = DataConfig()
    run: RunConfig = RunConfig()
    sampling: SamplingConfig = SamplingConfig()
    engine: EngineConfig = EngineConfig()
    loss: LossConfig = LossConfig()  # the objective on device
    advantage: AdvantageConfig = AdvantageConfig()  # advantages, token weights, zero-variance filter (host)
    optimizer: OptimizerConfig = OptimizerConfig()  # RL
    packing: PackingConfig = PackingConfig()
    reward: RewardConfig = RewardConfig()
    pool: PoolConfig = PoolConfig()
    evaluation: EvalConfig = EvalConfig()
    sft: SFTConfig = SFTConfig()
    # SFT (the cold start and `magjax sft`) takes a larger step than RL, with a warm-up.
    sft_optimizer: OptimizerConfig = OptimizerConfig(learning_rate=3e-3, warmup_steps=10)

    @property
    def model_config(self) -> ModelConfig:
        return self.with_remat(preset(self.model) if isinstance(self.model, str) else self.model)

    def with_remat(self, model: ModelConfig) -> ModelConfig:
        """``model`` with the recipe's rematerialisation, if it sets one."""
        return model if self.remat is None else model.replace(remat=self.remat)
