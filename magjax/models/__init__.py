"""Decoder-only transformers (Mistral, Llama, Qwen2/Qwen3 families), presets, checkpoints
from the Hugging Face ecosystem, and tokenizers."""

from magjax.models.config import PRESETS, ModelConfig, preset
from magjax.models.decoder import Decoder, forward, param_axes

__all__ = ["PRESETS", "ModelConfig", "preset", "Decoder", "forward", "param_axes"]
