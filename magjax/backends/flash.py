"""Blockwise (flash-style) attention in plain JAX, with its own gradient.

The portable attention for long rows: it never builds a [t, t] array. Rows are cut into
blocks; for each query block a loop runs over the key blocks up to the causal limit
(blocks past it are never read), keeping a running maximum, normaliser and output
(online softmax). The forward pass keeps one log-sum-exp per query row; the backward
pass (``jax.custom_vjp``) recomputes the probabilities block by block, once for the
query gradient and once for the key and value gradients (FlashAttention-2's scheme,
without atomics). Memory: O(t · e) per head plus one [block, block] tile per group.

The mask is ``reference.attention_mask``'s exactly: causal by index, equal segment ids
(wherever they recur), and an optional sliding window by position. Grouped-query heads
share each key block: the g query heads of a key/value head are one [g, block] tile.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

NEG = -1e30  # the reference's fill for masked scores


def _tile_mask(i, j, block, seg_q, seg_k, pos_q, pos_k, window):
    """[block, block] mask of query block i against key block j."""
    idx_q = i * block + jnp.arange(block)
    idx_k = j * block + jnp.arange(block)
    mask = (idx_q[:, None] >= idx_k[None, :]) & (seg_q[:, None] == seg_k[None, :])
    if window is not None:
        mask &= pos_q[:, None] - pos_k[None, :] < window
    return mask


def _forward_one(q_gte, k_te, v_te, seg_t, pos_t, *, window, block, scale):
    """One (row, kv head): output [g, t, e] float32 and log-sum-exp [g, t]."""
    g, t, e = q_gte.shape
    n = t // block
    q_ngbe = q_gte.reshape(g, n, block, e).swapaxes(0, 1).astype(jnp.float32) * scale
    k_nbe = k_te.reshape(n, block, e).astype(jnp.float32)
    v_nbe = v_te.reshape(n, block, e).astype(jnp.float32)
    seg_nb, pos_nb = seg_t.reshape(n, block), pos_t.reshape(n, block)

    def query_block(_, i):
        q_gbe = q_ngbe[i]

        def key_block(j, carry):
            m_gb, l_gb, acc_gbe = carry
            s_gbk = jnp.einsum("gqe,ke->gqk", q_gbe, k_nbe[j])
            mask = _tile_mask(i, j, block, seg_nb[i], seg_nb[j], pos_nb[i], pos_nb[j], window)
            m_new = jnp.maximum(m_gb, jnp.max(jnp.where(mask, s_gbk, NEG), axis=-1))
            p_gbk = jnp.where(mask, jnp.exp(s_gbk - m_new[..., None]), 0.0)
            corr = jnp.exp(m_gb - m_new)
            return (m_new, l_gb * corr + jnp.sum(p_gbk, -1),
                    acc_gbe * corr[..., None] + jnp.einsum("gqk,ke->gqe", p_gbk, v_nbe[j]))

        init = (jnp.full((g, block), NEG, jnp.float32), jnp.zeros((g, block), jnp.float32),
                jnp.zeros((g, block, e), jnp.float32))
        m_gb, l_gb, acc_gbe = jax.lax.fori_loop(0, i + 1, key_block, init)  # causal: blocks 0..i
        return None, (acc_gbe / l_gb[..., None], m_gb + jnp.log(l_gb))

    _, (o_ngbe, lse_ngb) = jax.lax.scan(query_block, None, jnp.arange(n))
    return o_ngbe.swapaxes(0, 1).reshape(g, t, e), lse_ngb.swapaxes(0, 1).reshape(g, t)


def _backward_one(q_gte, k_te, v_te, seg_t, pos_t, o_gte, lse_gt, do_gte, *, window, block, scale):
    """One (row, kv head): gradients of q [g, t, e], k and v [t, e], float32."""
    g, t, e = q_gte.shape
    n = t // block
    f32 = jnp.float32
    split_q = lambda x: x.reshape(g, n, block, *x.shape[2:]).swapaxes(0, 1).astype(f32)  # noqa: E731
    q_ngbe, do_ngbe = split_q(q_gte), split_q(do_gte)
    lse_ngb = split_q(lse_gt)
    delta_ngb = split_q(jnp.sum(do_gte.astype(f32) * o_gte.astype(f32), -1))
    k_nbe, v_nbe = k_te.reshape(n, block, e).astype(f32), v_te.reshape(n, block, e).astype(f32)
    seg_nb, pos_nb = seg_t.reshape(n, block), pos_t.reshape(n, block)

    def tile(i, j):
        """Probabilities and score gradients of query block i against key block j."""
        s_gbk = jnp.einsum("gqe,ke->gqk", q_ngbe[i], k_nbe[j]) * scale
        mask = _tile_mask(i, j, block, seg_nb[i], seg_nb[j], pos_nb[i], pos_nb[j], window)
        p_gbk = jnp.where(mask, jnp.exp(s_gbk - lse_ngb[i][..., None]), 0.0)
        dp_gbk = jnp.einsum("gqe,ke->gqk", do_ngbe[i], v_nbe[j])
        return p_gbk, p_gbk * (dp_gbk - delta_ngb[i][..., None])

    def dq_block(_, i):
        def body(j, dq_gbe):
            _, ds_gbk = tile(i, j)
            return dq_gbe + jnp.einsum("gqk,ke->gqe", ds_gbk, k_nbe[j])
        return None, jax.lax.fori_loop(0, i + 1, body, jnp.zeros((g, block, e), f32)) * scale

    def dkv_block(_, j):
        def body(i, carry):
            dk_be, dv_be = carry
            p_gbk, ds_gbk = tile(i, j)
            return (dk_be + jnp.einsum("gqk,gqe->ke", ds_gbk, q_ngbe[i]),
                    dv_be + jnp.einsum("gqk,gqe->ke", p_gbk, do_ngbe[i]))
        zeros = jnp.zeros((block, e), f32)
        dk_be, dv_be = jax.lax.fori_loop(j, n, body, (zeros, zeros))  # causal: query blocks j..n-1
        return None, (dk_be * scale, dv_be)

    _, dq_ngbe = jax.lax.scan(dq_block, None, jnp.arange(n))
    _, (dk_nbe, dv_nbe) = jax.lax.scan(dkv_block, None, jnp.arange(n))
    return dq_ngbe.swapaxes(0, 1).reshape(g, t, e), dk_nbe.reshape(t, e), dv_nbe.reshape(t, e)


def _vmapped(fn, n_head_args: int, **kw):
    """``fn`` over rows (b) and key/value heads (k): q [b, k, g, t, e], k and v [b, k, t,
    e], segment ids and positions [b, t] (shared by the heads), then ``n_head_args`` more
    per-(row, head) arrays."""
    one = functools.partial(fn, **kw)
    heads = jax.vmap(one, in_axes=(0, 0, 0, None, None) + (0,) * n_head_args)
    return jax.vmap(heads, in_axes=(0, 0, 0, 0, 0) + (0,) * n_head_args)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _flash(q_bkgte, k_bkte, v_bkte, seg_bt, pos_bt, window, block):
    scale = 1 / math.sqrt(q_bkgte.shape[-1])
    o, _ = _vmapped(_forward_one, 0, window=window, block=block, scale=scale)(q_bkgte, k_bkte, v_bkte, seg_bt, pos_bt)
    return o


def _flash_fwd(q_bkgte, k_bkte, v_bkte, seg_bt, pos_bt, window, block):
    scale = 1 / math.sqrt(q_bkgte.shape[-1])
    o, lse = _vmapped(_forward_one, 0, window=window, block=block, scale=scale)(
        q_bkgte, k_bkte, v_bkte, seg_bt, pos_bt)
    return o, (q_bkgte, k_bkte, v_bkte, seg_bt, pos_bt, o, lse)


def _flash_bwd(window, block, residuals, do_bkgte):
    q, k, v, seg, pos, o, lse = residuals
    scale = 1 / math.sqrt(q.shape[-1])
    dq, dk, dv = _vmapped(_backward_one, 3, window=window, block=block, scale=scale)(
        q, k, v, seg, pos, o, lse, do_bkgte)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def attend(q_bthe, k_btke, v_btke, segment_ids_bt, positions_bt, window: int | None = None, block: int = 512):
    """softmax(q k^T / sqrt(e)) v under ``reference.attention_mask``: [b, t, h, e] in q's dtype.

    q [b, t, h, e], k and v [b, t, kv, e] (h a multiple of kv); segment ids and positions
    [b, t]; ``window``: keys at most this far back by position (None: no limit). Rows are
    padded to a whole number of blocks at the end, where causality hides the padding.
    """
    b, t, h, e = q_bthe.shape
    kv = k_btke.shape[2]
    block = min(block, t)
    pad = -t % block
    if pad:
        widen = lambda x: jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2))  # noqa: E731
        q_bthe, k_btke, v_btke, segment_ids_bt, positions_bt = map(
            widen, (q_bthe, k_btke, v_btke, segment_ids_bt, positions_bt))
    tp = t + pad
    q_bkgte = q_bthe.reshape(b, tp, kv, h // kv, e).transpose(0, 2, 3, 1, 4)
    k_bkte, v_bkte = k_btke.transpose(0, 2, 1, 3), v_btke.transpose(0, 2, 1, 3)
    o_bkgte = _flash(q_bkgte, k_bkte, v_bkte, segment_ids_bt.astype(jnp.int32), positions_bt.astype(jnp.int32),
                     window, block)
    return o_bkgte.transpose(0, 3, 1, 2, 4).reshape(b, tp, h, e)[:, :t].astype(q_bthe.dtype)
