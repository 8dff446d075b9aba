"""ModelConfig, one frozen dataclass for every supported family, and the named presets."""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
REMAT = (False, True, "none", "layer", "save_matmuls", "offload")  # see ModelConfig.remat


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama-3 style frequency scaling (``rope_type: llama3`` in Hugging Face configs)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a decoder. Field names follow Hugging Face's where they exist."""

    family: Literal["mistral", "llama", "qwen2", "qwen3"] = "llama"
    vocab_size: int = 256
    hidden_size: int = 64  # d
    num_layers: int = 2  # l
    num_heads: int = 4  # h
    num_kv_heads: int = 2  # k; h must be a multiple
    head_dim: int = 16  # e
    intermediate_size: int = 128  # f (SwiGLU hidden width)
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-6
    qkv_bias: bool = False  # Qwen2
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k before rotary
    tie_embeddings: bool = False
    sliding_window: int | None = None  # Mistral v0.1: keys at most this far back
    max_position_embeddings: int = 4096
    param_dtype: str = "float32"  # storage dtype of the weights
    dtype: str = "float32"  # compute dtype of activations and matmuls
    # Rematerialisation of each layer in the backward pass: False (none: keep every
    # activation), True or "layer" (keep only each layer's input, recompute the rest),
    # "save_matmuls" (keep the projections' outputs, recompute the cheap elementwise work
    # and the attention), "offload" (as save_matmuls, but the kept outputs wait in host
    # memory: device memory of "layer" at the cost of transfers).
    remat: bool | str = False
    # Layers per lax.scan iteration; num_layers (or more): no scan, a plain loop over the
    # layers. A scan stacks every layer's saved activations (and its weight slice) into
    # [layers, ...] buffers and slices them back out in the backward pass; the loop reads
    # them where they were written (measured on 2 CPU cores: the tiny preset's train step
    # 1.03 -> 0.91 s when unrolling; small's as a loop, 20.3 -> 19.4 s). Compile time
    # grows with depth, so deep models keep the scan.
    scan_unroll: int = 1

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                     "head_dim", "intermediate_size", "scan_unroll"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"ModelConfig.num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads})"
            )
        for name in ("param_dtype", "dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"ModelConfig.{name} must be one of {list(DTYPES)}, got {getattr(self, name)!r}")
        if self.remat not in REMAT:
            raise ValueError(f"ModelConfig.remat must be one of {list(REMAT)}, got {self.remat!r}")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"ModelConfig.sliding_window must be positive or None, got {self.sliding_window}")

    @property
    def jnp_param_dtype(self):
        return DTYPES[self.param_dtype]

    @property
    def jnp_dtype(self):
        return DTYPES[self.dtype]

    def num_params(self) -> int:
        """Parameter count, by formula (tests check it against ``jax.eval_shape``)."""
        d, e, f = self.hidden_size, self.head_dim, self.intermediate_size
        attn = d * e * (2 * self.num_heads + 2 * self.num_kv_heads)
        if self.qkv_bias:
            attn += e * (self.num_heads + 2 * self.num_kv_heads)
        if self.qk_norm:
            attn += 2 * e
        layer = attn + 3 * d * f + 2 * d
        embed = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return self.num_layers * layer + embed + d

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, ModelConfig] = {
    # Unit tests: compiles in a second, every optional feature off.
    "test": ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                        head_dim=8, intermediate_size=64),
    # The CPU demo: a forward+backward of 64 x 128 tokens well under a second on 2 cores.
    # Its vocabulary is the built-in tokenizer's (magjax.models.tokenizer.ByteTokenizer).
    "demo": ModelConfig(vocab_size=272, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                        head_dim=32, intermediate_size=384, tie_embeddings=True),
    # Benchmark shapes shared with the peers' scripts (fp32 Mistral layout, rope theta 1e6).
    # Both run their layers as a plain loop (see scan_unroll): tiny's train step 12%
    # faster, small's 5%, and at these depths no slower to compile. (The demo keeps the
    # scan: its step gains only 7%, and its recipe was tuned, and its results measured,
    # with the scanned numerics.)
    "tiny": ModelConfig(family="mistral", vocab_size=256, hidden_size=256, num_layers=4, num_heads=4,
                        num_kv_heads=2, head_dim=64, intermediate_size=1024, rope_theta=1e6,
                        rms_norm_eps=1e-5, scan_unroll=4),
    "small": ModelConfig(family="mistral", vocab_size=32000, hidden_size=1024, num_layers=8,
                         num_heads=16, num_kv_heads=4, head_dim=64, intermediate_size=4096,
                         rope_theta=1e6, rms_norm_eps=1e-5, scan_unroll=8),
    # Published open-weight models (shapes from their Hugging Face config.json).
    "mistral-7b": ModelConfig(family="mistral", vocab_size=32768, hidden_size=4096, num_layers=32,
                              num_heads=32, num_kv_heads=8, head_dim=128, intermediate_size=14336,
                              rope_theta=1e6, rms_norm_eps=1e-5, max_position_embeddings=32768,
                              param_dtype="bfloat16", dtype="bfloat16"),
    "mistral-small-3.1-24b": ModelConfig(family="mistral", vocab_size=131072, hidden_size=5120,
                                         num_layers=40, num_heads=32, num_kv_heads=8, head_dim=128,
                                         intermediate_size=32768, rope_theta=1e9, rms_norm_eps=1e-5,
                                         max_position_embeddings=131072, param_dtype="bfloat16",
                                         dtype="bfloat16"),
    "llama-3.1-8b": ModelConfig(family="llama", vocab_size=128256, hidden_size=4096, num_layers=32,
                                num_heads=32, num_kv_heads=8, head_dim=128, intermediate_size=14336,
                                rope_theta=500000.0, rope_scaling=RopeScaling(), rms_norm_eps=1e-5,
                                max_position_embeddings=131072, param_dtype="bfloat16",
                                dtype="bfloat16"),
    "qwen2.5-7b": ModelConfig(family="qwen2", vocab_size=152064, hidden_size=3584, num_layers=28,
                              num_heads=28, num_kv_heads=4, head_dim=128, intermediate_size=18944,
                              rope_theta=1e6, rms_norm_eps=1e-6, qkv_bias=True,
                              max_position_embeddings=131072, param_dtype="bfloat16",
                              dtype="bfloat16"),
    "qwen3-8b": ModelConfig(family="qwen3", vocab_size=151936, hidden_size=4096, num_layers=36,
                            num_heads=32, num_kv_heads=8, head_dim=128, intermediate_size=12288,
                            rope_theta=1e6, rms_norm_eps=1e-6, qk_norm=True,
                            max_position_embeddings=40960, param_dtype="bfloat16", dtype="bfloat16"),
}
# Magistral Small 2506/2507 is Mistral Small 3.1's text decoder, RL-trained.
PRESETS["magistral-small"] = PRESETS["mistral-small-3.1-24b"]


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}") from None
