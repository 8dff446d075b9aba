"""One decode step's cache write and attention through the native kernel
(``decode_attention.cc``), on a paged cache or a dense one.

Each slot writes its new key and value at position ``at_b`` (nothing when out of range),
then attends with its query heads to positions ``[lo_b, hi_b)`` only, read through its row
of the page table: the causal limit and any sliding window become a range, so the kernel
reads exactly the valid rows once instead of the whole masked cache or whole pages.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def supports(head_dim: int) -> bool:
    return head_dim % 16 == 0  # the kernel works in whole 16-float vectors of the head dim


def write_and_attend(q_bkge, k_new_bke, v_new_bke, k_pkes, v_pkse, lo_b, hi_b, at_b, table_bn=None):
    """Writes each slot's new key and value at position ``at_b``, then returns
    ``softmax(q·k / sqrt(e)) · v`` over positions [lo_b, hi_b) and the updated pools.

    Pools: keys [pages, kv, e, s] and values [pages, kv, s, e], s positions per page;
    ``table_bn`` names the pool page of each s positions of a slot (entries outside the
    pool: no page, neither written nor read). Without a table the pools are a dense cache,
    keys [b, kv, e, s] and values [b, kv, s, e]: one page of s positions per slot. A
    position ``at_b`` that is negative, past the table or on no page is not written.

    float32 throughout; a slot with an empty range gets zeros. The pools are updated in
    place where XLA can alias them (a donated cache in the decode loop).
    """
    e = q_bkge.shape[-1]
    if not supports(e):
        raise ValueError(f"decode attention needs a head dim that is a multiple of 16, got {e}")
    if table_bn is None:  # dense: slot b owns page b
        table_bn = jnp.arange(q_bkge.shape[0], dtype=jnp.int32)[:, None]
    f32 = jnp.float32
    out_shapes = (jax.ShapeDtypeStruct(q_bkge.shape, f32), jax.ShapeDtypeStruct(k_pkes.shape, f32),
                  jax.ShapeDtypeStruct(v_pkse.shape, f32))
    call = jax.ffi.ffi_call("magjax_decode_attention", out_shapes, input_output_aliases={3: 1, 4: 2})
    return call(q_bkge.astype(f32), k_new_bke.astype(f32), v_new_bke.astype(f32), k_pkes.astype(f32),
                v_pkse.astype(f32), lo_b.astype(jnp.int32), hi_b.astype(jnp.int32), at_b.astype(jnp.int32),
                table_bn.astype(jnp.int32), scale=np.float32(1 / math.sqrt(e)))
