"""One decode step's attention through the native kernel (``decode_attention.cc``).

Each slot attends with its query heads to cache positions ``[lo_b, hi_b)`` only: the
causal limit and any sliding window become a range, so the kernel reads exactly the
valid rows once instead of the whole masked cache.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def supports(head_dim: int) -> bool:
    return head_dim % 16 == 0  # the kernel works in whole 16-float vectors of the head dim


def attend(q_bkge, k_bkes, v_bkse, lo_b, hi_b):
    """``softmax(q·k / sqrt(e)) · v`` over positions [lo_b, hi_b) of each slot: [b, kv, g, e].

    float32 throughout; a slot with an empty range gets zeros.
    """
    e = q_bkge.shape[-1]
    if not supports(e):
        raise ValueError(f"decode attention needs a head dim that is a multiple of 16, got {e}")
    return jax.ffi.ffi_call("magjax_decode_attention", jax.ShapeDtypeStruct(q_bkge.shape, jnp.float32))(
        q_bkge.astype(jnp.float32), k_bkes.astype(jnp.float32), v_bkse.astype(jnp.float32),
        lo_b.astype(jnp.int32), hi_b.astype(jnp.int32), scale=np.float32(1 / math.sqrt(e)))
