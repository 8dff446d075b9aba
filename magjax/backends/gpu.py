"""Whole-sequence attention on GPUs: ``jax.nn.dot_product_attention`` on cuDNN's fused
kernel where cuDNN applies (half-precision compute, a head dim it supports), otherwise
the portable attention (``xla.attention``: blockwise for long rows).

cuDNN takes the causal limit and the sliding window (by index; see ``tpu.py`` on why that
equals the reference's window by position for packed rows) as its own masks; packed
segments go in as a boolean [b, 1, t, t] mask (one byte per pair per row, shared by the
heads), which is what the fused kernel needs to keep sequences apart.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from magjax.backends import xla
from magjax.backends.xla import Attention


def cudnn_applies(config) -> bool:
    return config.dtype in ("bfloat16", "float16") and config.head_dim % 8 == 0 and config.head_dim <= 128


def fused(config, segment_ids_bt, implementation: str | None) -> Attention:
    """``jax.nn.dot_product_attention`` with the reference's mask (``implementation``:
    "cudnn", or "xla", which the CPU suite checks against the reference)."""
    window = config.sliding_window

    def attend(q_bthe, k_btke, v_btke):
        mask_b1ts = (segment_ids_bt[:, :, None] == segment_ids_bt[:, None, :])[:, None]
        return jax.nn.dot_product_attention(
            q_bthe, k_btke, v_btke, mask=mask_b1ts, is_causal=True,
            local_window_size=None if window is None else (window - 1, 0), implementation=implementation)

    return Attention(attend, rotates=False)


def attention(config, positions_bt, segment_ids_bt) -> Attention:
    if cudnn_applies(config):
        return fused(config, segment_ids_bt.astype(jnp.int32), "cudnn")
    return xla.attention(config, positions_bt, segment_ids_bt)
