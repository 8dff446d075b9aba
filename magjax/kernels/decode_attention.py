"""One decode step's cache write and attention through the native kernel
(``decode_attention.cc``).

Each slot writes its new key and value at position ``at_b`` (nothing when out of range),
then attends with its query heads to cache positions ``[lo_b, hi_b)`` only: the
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


def write_and_attend(q_bkge, k_new_bke, v_new_bke, k_bkes, v_bkse, lo_b, hi_b, at_b):
    """Writes each slot's new key and value into the caches at ``at_b``, then returns
    ``softmax(q·k / sqrt(e)) · v`` over positions [lo_b, hi_b) and the updated caches.

    float32 throughout; a slot with an empty range gets zeros. The caches are updated in
    place where XLA can alias them (a donated cache in the decode loop).
    """
    e = q_bkge.shape[-1]
    if not supports(e):
        raise ValueError(f"decode attention needs a head dim that is a multiple of 16, got {e}")
    f32 = jnp.float32
    out_shapes = (jax.ShapeDtypeStruct(q_bkge.shape, f32), jax.ShapeDtypeStruct(k_bkes.shape, f32),
                  jax.ShapeDtypeStruct(v_bkse.shape, f32))
    call = jax.ffi.ffi_call("magjax_decode_attention", out_shapes, input_output_aliases={3: 1, 4: 2})
    return call(q_bkge.astype(f32), k_new_bke.astype(f32), v_new_bke.astype(f32), k_bkes.astype(f32),
                v_bkse.astype(f32), lo_b.astype(jnp.int32), hi_b.astype(jnp.int32), at_b.astype(jnp.int32),
                scale=np.float32(1 / math.sqrt(e)))
