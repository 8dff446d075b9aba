"""The accelerators' decode cache: token-major, head dim minor, attended block by block.

Keys and values are [slots, max_len, kv_heads, head_dim]: each decode step writes one
[kv_heads, head_dim] row per slot, a contiguous piece of this layout. (In the
[slots, kv_heads, max_len, head_dim] layout TPU's scatter wants the written window minor,
so XLA kept a transposed copy of every layer's cache alive beside it: a whole cache of
temporaries, 40 GiB per chip for Magistral Small at 32 slots x 32,768 tokens.)

Attention walks the cache in blocks of ``block`` positions with an online softmax
(running maximum, normaliser and float32 output), only as far as the furthest slot's
range reaches: temporaries are [slots, kv_heads, group, block] whatever ``max_len``, and
a step reads the cache up to the longest sequence in flight rather than all of it.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from magjax import sharding as shd

BLOCK = 512  # cache positions per attention block


class TokenMajor:
    """Keys and values [slots, max_len, kv_heads, head_dim]; blockwise decode attention."""

    name = "xla-blockwise"
    k_axes = v_axes = (shd.BATCH, shd.SEQUENCE, shd.KV_HEADS, shd.HEAD_DIM)

    def __init__(self, block: int = BLOCK):
        self.block = block

    def shapes(self, slots: int, kv: int, e: int, max_len: int):
        return (slots, max_len, kv, e), (slots, max_len, kv, e)

    def write_prompt(self, k_cache, v_cache, slots_g, k_1pke, v_1pke):
        """The prompt's keys and values [1, p, k, e] into positions [0, p) of slots ``slots_g``."""
        g, p = slots_g.shape[0], k_1pke.shape[1]
        put = lambda x, cache: jnp.broadcast_to(x, (g, *x.shape[1:])).astype(cache.dtype)  # noqa: E731
        return k_cache.at[slots_g, :p].set(put(k_1pke, k_cache)), v_cache.at[slots_g, :p].set(put(v_1pke, v_cache))

    def write_and_attend(self, q_b1he, k_b1ke, v_b1ke, k_cache, v_cache, lo_b, hi_b, at_b):
        """Writes each slot's new key and value at ``at_b`` (nowhere when out of range), then
        attends each slot's query to its positions [lo_b, hi_b): [b, 1, h, e] and the caches."""
        slot_idx = jnp.arange(q_b1he.shape[0])
        k_cache = k_cache.at[slot_idx, at_b].set(k_b1ke[:, 0].astype(k_cache.dtype), mode="drop")
        v_cache = v_cache.at[slot_idx, at_b].set(v_b1ke[:, 0].astype(v_cache.dtype), mode="drop")
        return attend(q_b1he, k_cache, v_cache, lo_b, hi_b, self.block), k_cache, v_cache


def attend(q_b1he, k_bske, v_bske, lo_b, hi_b, block: int = BLOCK):
    """One query per slot against its cache positions [lo_b, hi_b): [b, 1, h, e].

    Scores, softmax and the running output in float32; blocks past every slot's ``hi_b``
    are never read. ``max_len`` need not be a multiple of ``block`` (the last block is
    read from ``max_len - block`` and its repeated positions masked)."""
    b, _, h, e = q_b1he.shape
    s, kv = k_bske.shape[1], k_bske.shape[2]
    block = min(block, s)
    q_bkge = q_b1he.reshape(b, kv, h // kv, e).astype(k_bske.dtype)
    n_blocks = (jnp.max(hi_b) + block - 1) // block

    def body(i, carry):
        m_bkg, l_bkg, o_bkge = carry
        start = jnp.minimum(i * block, s - block)
        k_bcke = jax.lax.dynamic_slice_in_dim(k_bske, start, block, axis=1)
        v_bcke = jax.lax.dynamic_slice_in_dim(v_bske, start, block, axis=1)
        pos_c = start + jnp.arange(block)
        # A clamped last block re-reads positions an earlier block had: only [i * block, ...) counts.
        valid_bc = (pos_c[None] >= jnp.maximum(lo_b[:, None], i * block)) & (pos_c[None] < hi_b[:, None])
        scores_bkgc = jnp.einsum("bkge,bcke->bkgc", q_bkge, k_bcke, preferred_element_type=jnp.float32) / math.sqrt(e)
        scores_bkgc = jnp.where(valid_bc[:, None, None], scores_bkgc, -jnp.inf)
        m_new = jnp.maximum(m_bkg, jnp.max(scores_bkgc, axis=-1))
        m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # no valid position yet: nothing to rescale
        p_bkgc = jnp.exp(scores_bkgc - m_safe[..., None])
        scale_bkg = jnp.exp(m_bkg - m_safe)
        l_bkg = l_bkg * scale_bkg + jnp.sum(p_bkgc, axis=-1)
        o_bkge = o_bkge * scale_bkg[..., None] + jnp.einsum("bkgc,bcke->bkge", p_bkgc.astype(v_bcke.dtype), v_bcke,
                                                            preferred_element_type=jnp.float32)
        return m_new, l_bkg, o_bkge

    g = h // kv
    init = (jnp.full((b, kv, g), -jnp.inf, jnp.float32), jnp.zeros((b, kv, g), jnp.float32),
            jnp.zeros((b, kv, g, e), jnp.float32))
    _, l_bkg, o_bkge = jax.lax.fori_loop(0, n_blocks, body, init)
    out_bkge = o_bkge / jnp.maximum(l_bkg, 1e-30)[..., None]  # an empty range gives zeros
    return out_bkge.reshape(b, 1, h, e).astype(q_b1he.dtype)
