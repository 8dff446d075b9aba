"""The portable paged KV cache: pages of positions, attended through a work list.

Keys and values live in a pool of pages per layer, [pages, page_size, kv_heads,
head_dim] (token-major within a page, head dim minor); a slot's row of the page table
(``sampling/pages.py`` keeps it) names the pool page of each ``page_size`` positions of
its sequence. Table entries past a slot's pages point outside the pool (``pages``):
writes there are dropped and reads never reach them.

Decode attention reads only live pages: each step lists the (slot, page) pairs whose
positions meet a slot's range [lo, hi) (the causal limit, and the sliding window's start),
and walks that list in blocks of ``block_pages`` pages with an online softmax gathered
per slot (segment max and sums). A short sequence costs its own pages, not the longest
sequence's, and nothing is ever [slots, max_len]-sized.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from magjax import sharding as shd

BLOCK_POSITIONS = 512  # cache positions per attention block (block_pages x page_size)


class Paged:
    """Keys and values [pages, page_size, kv_heads, head_dim]; work-list decode attention.

    On a mesh of several devices each device holds its data shard's pages (the page axis
    splits like the slots) and its kv heads, and the writes and the attention run per
    device under ``shard_map``: a slot's pages are always in its own shard (the host's
    page book keeps them there), so nothing crosses devices. Table entries are global
    page numbers; each shard subtracts its first page."""

    name = "xla-paged"
    paged = True
    page_axis = 0
    # The page axis splits like the slots (each data shard holds its slots' pages).
    k_axes = v_axes = (shd.BATCH, None, shd.KV_HEADS, shd.HEAD_DIM)

    def __init__(self, mesh=None):
        self.mesh = mesh if mesh is not None and mesh.devices.size > 1 else None

    def shapes(self, pages: int, page_size: int, kv: int, e: int):
        return (pages, page_size, kv, e), (pages, page_size, kv, e)

    def write_prompt(self, k_pool, v_pool, table_gn, k_1pke, v_1pke, prompt_len):
        """Positions [0, prompt_len) of the prompt's keys and values [1, p, k, e] into the
        pages of each of the G table rows (shared pages receive the same values G times).
        The group's slots are in one shard: on a mesh every shard writes what falls in its
        own pages (the rest is out of its range, dropped)."""
        def write(k_pool, v_pool, table_gn, k_1pke, v_1pke, prompt_len):
            pages, page_size = k_pool.shape[:2]
            positions_gp = jnp.broadcast_to(jnp.arange(k_1pke.shape[1]), (table_gn.shape[0], k_1pke.shape[1]))
            at_gp = position_index(table_gn, positions_gp, page_size, pages)
            at_gp = jnp.where(positions_gp < prompt_len, at_gp, pages * page_size)  # the bucket's padding: nowhere
            return scatter_rows(k_pool, at_gp, k_1pke), scatter_rows(v_pool, at_gp, v_1pke)

        if self.mesh is None:
            return write(k_pool, v_pool, table_gn, k_1pke, v_1pke, prompt_len)
        pool, kv_new = self._specs(k_pool.shape)

        def local(k, v, table, kn, vn, n):
            return write(k, v, localise(table, k.shape[0], pool[0]), kn, vn, n)

        rep = PartitionSpec()
        new = PartitionSpec(None, None, *kv_new[2:])
        return jax.shard_map(local, mesh=self.mesh, in_specs=(pool, pool, rep, new, new, rep), out_specs=(pool, pool),
                             check_vma=False)(k_pool, v_pool, table_gn, k_1pke, v_1pke, prompt_len)

    def write_and_attend(self, q_b1he, k_b1ke, v_b1ke, k_pool, v_pool, lo_b, hi_b, at_b, table_bn):
        """Writes each slot's new key and value at position ``at_b`` (nowhere when out of
        range), then attends each slot's query to its positions [lo_b, hi_b)."""
        if self.mesh is None:
            return _write_and_attend(q_b1he, k_b1ke, v_b1ke, k_pool, v_pool, lo_b, hi_b, at_b, table_bn)
        pool, kv_new = self._specs(k_pool.shape)
        q = kv_new  # query heads split as the kv heads are: each device's queries read its kv heads
        slots, table = PartitionSpec(pool[0]), PartitionSpec(pool[0], None)

        def local(q, kn, vn, k, v, lo, hi, at, table_bn):
            table_bn = localise(table_bn, k.shape[0], pool[0])
            return _write_and_attend(q, kn, vn, k, v, lo, hi, at, table_bn)

        return jax.shard_map(local, mesh=self.mesh, in_specs=(q, kv_new, kv_new, pool, pool, slots, slots, slots, table),
                             out_specs=(q, pool, pool), check_vma=False)(
            q_b1he, k_b1ke, v_b1ke, k_pool, v_pool, lo_b, hi_b, at_b, table_bn)

    def _specs(self, pool_shape):
        """PartitionSpecs of the pool and of a step's new keys [b, 1, k, e] (slots split
        as the pages are, heads as the kv heads are)."""
        spec = shd.full_spec(self.k_axes, pool_shape, self.mesh)
        return spec, PartitionSpec(spec[0], None, spec[2], None)


def localise(table_bn, local_pages: int, page_axes):
    """Inside ``shard_map``: global page numbers to this shard's (out-of-shard and empty
    entries: ``local_pages``, no page); ``page_axes``: the mesh axes the pool's page axis
    splits over (its PartitionSpec entry), each shard holding ``local_pages`` in order."""
    shard = 0 if page_axes is None else jax.lax.axis_index(page_axes)  # row-major over a tuple of axes
    local = table_bn - shard * local_pages
    return jnp.where((local >= 0) & (local < local_pages), local, local_pages)


def _write_and_attend(q_b1he, k_b1ke, v_b1ke, k_pool, v_pool, lo_b, hi_b, at_b, table_bn):
    pages, page_size = k_pool.shape[:2]
    at_b1 = position_index(table_bn, at_b[:, None], page_size, pages)
    at_b1 = jnp.where((at_b >= 0)[:, None], at_b1, pages * page_size)
    k_pool, v_pool = scatter_rows(k_pool, at_b1, k_b1ke), scatter_rows(v_pool, at_b1, v_b1ke)
    hi_b = jnp.where(at_b >= 0, hi_b, lo_b)  # a slot that writes nothing is idle: it reads nothing
    return attend(q_b1he, k_pool, v_pool, table_bn, lo_b, hi_b), k_pool, v_pool


def position_index(table_bn, positions_bt, page_size: int, pages: int):
    """Flat pool row (page * page_size + offset) of each position [b, t]; out of range
    (pages * page_size) past the table or where the table row has no page."""
    n = table_bn.shape[1]
    logical_bt = positions_bt // page_size
    page_bt = jnp.take_along_axis(table_bn, jnp.clip(logical_bt, 0, n - 1), axis=1)
    inside_bt = (logical_bt >= 0) & (logical_bt < n) & (page_bt < pages)
    return jnp.where(inside_bt, page_bt * page_size + positions_bt % page_size, pages * page_size)


def scatter_rows(pool_pske, at_bt, x_btke):
    """pool rows at flat indices ``at_bt`` set to ``x`` (out-of-range rows dropped)."""
    p, s, k, e = pool_pske.shape
    flat = pool_pske.reshape(p * s, k, e)
    x = jnp.broadcast_to(x_btke, (*at_bt.shape, k, e)).astype(pool_pske.dtype)
    return flat.at[at_bt.reshape(-1)].set(x.reshape(-1, k, e), mode="drop").reshape(p, s, k, e)


def live_pages(table_bn, lo_b, hi_b, page_size: int, pages: int):
    """[b * n] flat (slot, logical page) indices whose pages meet [lo_b, hi_b), first,
    then the rest; and how many are live."""
    b, n = table_bn.shape
    idx_n = jnp.arange(n)
    live_bn = ((idx_n[None] >= (lo_b // page_size)[:, None]) & (idx_n[None] * page_size < hi_b[:, None])
               & (hi_b > lo_b)[:, None] & (table_bn < pages))
    count = jnp.sum(live_bn)
    (flat,) = jnp.nonzero(live_bn.reshape(-1), size=b * n, fill_value=0)
    return flat, count


def attend(q_b1he, k_pool, v_pool, table_bn, lo_b, hi_b, block_positions: int = BLOCK_POSITIONS):
    """One query per slot against its positions [lo_b, hi_b) held in the pages of its
    table row: [b, 1, h, e]. Scores, softmax and the running output in float32; an empty
    range gives zeros."""
    b, _, h, e = q_b1he.shape
    pages, page_size, kv = k_pool.shape[:3]
    n = table_bn.shape[1]
    g = h // kv
    c = max(1, min(b * n, block_positions // page_size))  # work items (pages) per block
    flat, count = live_pages(table_bn, lo_b, hi_b, page_size, pages)
    pad = -(-(b * n) // c) * c - b * n
    flat = jnp.pad(flat, (0, pad))
    slot_w, logical_w = flat // n, flat % n
    page_w = jnp.clip(table_bn.reshape(-1)[flat], 0, pages - 1)
    q_bkge = q_b1he.reshape(b, kv, g, e).astype(k_pool.dtype)
    offsets_s = jnp.arange(page_size)

    def body(i, carry):
        m_bkg, l_bkg, o_bkge = carry
        take = lambda x: jax.lax.dynamic_slice_in_dim(x, i * c, c)  # noqa: E731
        slot_c, logical_c, page_c = take(slot_w), take(logical_w), take(page_w)
        k_cske, v_cske = k_pool[page_c], v_pool[page_c]
        scores_ckgs = jnp.einsum("ckge,cske->ckgs", q_bkge[slot_c], k_cske,
                                 preferred_element_type=jnp.float32) / math.sqrt(e)
        pos_cs = logical_c[:, None] * page_size + offsets_s[None]
        valid_cs = ((pos_cs >= lo_b[slot_c][:, None]) & (pos_cs < hi_b[slot_c][:, None])
                    & (i * c + jnp.arange(c) < count)[:, None])
        scores_ckgs = jnp.where(valid_cs[:, None, None], scores_ckgs, -jnp.inf)
        m_blk_bkg = jax.ops.segment_max(jnp.max(scores_ckgs, axis=-1), slot_c, b, indices_are_sorted=True)
        m_new = jnp.maximum(m_bkg, m_blk_bkg)
        m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # no valid position yet: nothing to rescale
        p_ckgs = jnp.exp(scores_ckgs - m_safe[slot_c][..., None])
        scale_bkg = jnp.exp(m_bkg - m_safe)
        l_bkg = l_bkg * scale_bkg + jax.ops.segment_sum(jnp.sum(p_ckgs, axis=-1), slot_c, b, indices_are_sorted=True)
        pv_ckge = jnp.einsum("ckgs,cske->ckge", p_ckgs.astype(v_cske.dtype), v_cske,
                             preferred_element_type=jnp.float32)
        o_bkge = o_bkge * scale_bkg[..., None] + jax.ops.segment_sum(pv_ckge, slot_c, b, indices_are_sorted=True)
        return m_new, l_bkg, o_bkge

    init = (jnp.full((b, kv, g), -jnp.inf, jnp.float32), jnp.zeros((b, kv, g), jnp.float32),
            jnp.zeros((b, kv, g, e), jnp.float32))
    _, l_bkg, o_bkge = jax.lax.fori_loop(0, (count + c - 1) // c, body, init)
    out_bkge = o_bkge / jnp.maximum(l_bkg, 1e-30)[..., None]
    return out_bkge.reshape(b, 1, h, e).astype(q_b1he.dtype)
