"""The paged KV cache on TPUs: decode attention by the Pallas paged attention kernel
shipped with JAX (``jax.experimental.pallas.ops.tpu.paged_attention``).

Keys and values live in separate pools per layer, [kv_heads, pages, page_size, head_dim]
(the kernel's layout: each kv head's pages contiguous, head dim minor), the engine's
(k_cache, v_cache) pair. The kernel walks each slot's page table row and copies only the
pages below the slot's length into VMEM (blocks of ``block_pages`` pages, double
buffered), so a short sequence costs its own pages and an idle slot (length 0) nothing.
It attends positions [0, length): models with a sliding window take the portable
``paged.Paged`` instead (``backends.sampler`` decides).

Everything runs per device under ``shard_map``: slots and pages split over the data axes
as the pool's page axis is (``sampling/pages.py`` gives each shard's slots pages of its
own range only), kv heads (and their query heads) over the model axis. Page ids in the
table are global: each shard subtracts its first page; ids outside its range (the
table's sentinel, another shard's pages) are dropped on write and never read. A step's
new keys and values are scattered into the pool in place (the pool is a donated carry
of the decode loop): no pool-sized copy.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from magjax import sharding as shd

BLOCK_POSITIONS = 512  # cache positions per kernel block (block_pages x page_size)
# Chips whose two TensorCores one device drives as one (megacore): the kernel splits its
# kv heads (or slots) between them. Elsewhere it must not, or it may hang.
MEGACORE_KINDS = ("TPU v4", "TPU v5", "TPU v5p")


class PagedTPU:
    """Keys and values [kv_heads, pages, page_size, head_dim]; Pallas paged attention."""

    name = "tpu-paged"
    paged = True
    page_axis = 1
    k_axes = v_axes = (shd.KV_HEADS, shd.BATCH, None, shd.HEAD_DIM)

    def __init__(self, mesh=None, block_positions: int = BLOCK_POSITIONS):
        self.mesh, self.block_positions = mesh, block_positions

    def shapes(self, pages: int, page_size: int, kv: int, e: int):
        return (kv, pages, page_size, e), (kv, pages, page_size, e)

    def megacore_mode(self, kv_heads: int, slots: int) -> str | None:
        """How the kernel splits its work over a megacore chip's two cores (per device:
        ``kv_heads`` and ``slots`` are one shard's), or None on one-core chips."""
        kind = next(iter(self.mesh.devices.flat)).device_kind if self.mesh is not None else jax.devices()[0].device_kind
        if kind not in MEGACORE_KINDS:
            return None
        return "kv_head" if kv_heads % 2 == 0 else "batch" if slots % 2 == 0 else None

    def block_pages(self, page_size: int, pages_per_slot: int) -> int:
        """Pages per kernel block: about ``block_positions`` positions, no more than a slot holds."""
        return max(1, min(pages_per_slot, self.block_positions // page_size))

    # ------------------------------------------------------------------ placement

    def _specs(self, pool_shape):
        """(kv-head axes, page axes) of the pool on the mesh, as Engine.state_shardings places it."""
        spec = shd.full_spec(self.k_axes, pool_shape, self.mesh)
        return spec[0], spec[1]

    def _per_device(self, fn, pool_shape, ins: tuple[str, ...], outs: tuple[str, ...]):
        """``fn`` run per device; ``ins``/``outs`` name each argument's kind: "pool",
        "slots" (a leading slot axis, split as the pages are), "slot_heads" (slots, then
        heads split as the kv heads are), "prompt_heads" ([1, p, kv, e]: heads split) or
        "all" (replicated). ``fn`` gets the shard's first page id as its first argument."""
        if self.mesh is None:
            return lambda *args: fn(jnp.int32(0), *args)
        heads, pages = self._specs(pool_shape)
        page_axes = () if pages is None else (pages if isinstance(pages, tuple) else (pages,))
        kinds = {"pool": PartitionSpec(heads, pages, None, None), "slots": PartitionSpec(pages),
                 "slot_heads": PartitionSpec(pages, heads, None), "table": PartitionSpec(pages, None),
                 "prompt_heads": PartitionSpec(None, None, heads, None), "all": PartitionSpec()}

        def local(*args):
            local_pages = args[ins.index("pool")].shape[1]
            shard = jax.lax.axis_index(page_axes) if page_axes else 0
            return fn(jnp.int32(shard * local_pages), *args)

        return jax.shard_map(local, mesh=self.mesh, in_specs=tuple(kinds[k] for k in ins),
                             out_specs=tuple(kinds[k] for k in outs), check_vma=False)

    # ------------------------------------------------------------------ writes

    def write_prompt(self, k_pool, v_pool, table_gn, k_1pke, v_1pke, prompt_len):
        """Positions [0, prompt_len) of the prompt's keys and values [1, p, k, e] into the
        pages of each of the G table rows (shared pages receive the same values G times)."""

        def local(first, k_pool, v_pool, table_gn, k_1pke, v_1pke, prompt_len):
            g, p = table_gn.shape[0], k_1pke.shape[1]
            positions_gp = jnp.broadcast_to(jnp.arange(p), (g, p))
            page_gp, offset_gp = local_slots(table_gn - first, positions_gp, k_pool.shape[1], k_pool.shape[2])
            page_gp = jnp.where(positions_gp < prompt_len, page_gp, k_pool.shape[1])  # the bucket's padding
            return (scatter_positions(k_pool, page_gp, offset_gp, k_1pke),
                    scatter_positions(v_pool, page_gp, offset_gp, v_1pke))

        run = self._per_device(local, k_pool.shape, ("pool", "pool", "all", "prompt_heads", "prompt_heads", "all"),
                               ("pool", "pool"))
        return run(k_pool, v_pool, table_gn, k_1pke, v_1pke, prompt_len)

    # ------------------------------------------------------------------ decode

    def write_and_attend(self, q_b1he, k_b1ke, v_b1ke, k_pool, v_pool, lo_b, hi_b, at_b, table_bn):
        """Writes each slot's new key and value at position ``at_b`` (nowhere when -1),
        then attends each slot's query to its positions [0, hi_b) (idle slots: zeros).
        ``lo_b`` must be 0: windowed models use the portable paged cache."""
        del lo_b  # no window here: every slot attends from position 0
        page_size = k_pool.shape[2]
        block = self.block_pages(page_size, table_bn.shape[1])

        def local(first, q_bhe, k_bke, v_bke, k_pool, v_pool, hi_b, at_b, table_bn):
            local_pages = k_pool.shape[1]
            table_bn = table_bn - first
            page_b1, offset_b1 = local_slots(table_bn, jnp.maximum(at_b, 0)[:, None], local_pages, page_size)
            page_b1 = jnp.where((at_b >= 0)[:, None], page_b1, local_pages)  # an idle slot writes nowhere
            k_pool = scatter_positions(k_pool, page_b1, offset_b1, k_bke[:, None])
            v_pool = scatter_positions(v_pool, page_b1, offset_b1, v_bke[:, None])
            lengths_b = jnp.where(at_b >= 0, hi_b, 0).astype(jnp.int32)  # an idle slot reads nothing
            megacore = self.megacore_mode(k_pool.shape[0], q_bhe.shape[0])
            out_bhe = attend(q_bhe, k_pool, v_pool, lengths_b, table_bn, block, megacore)
            return out_bhe, k_pool, v_pool

        run = self._per_device(local, k_pool.shape,
                               ("slot_heads", "slot_heads", "slot_heads", "pool", "pool", "slots", "slots", "table"),
                               ("slot_heads", "pool", "pool"))
        out_bhe, k_pool, v_pool = run(q_b1he[:, 0], k_b1ke[:, 0], v_b1ke[:, 0], k_pool, v_pool,
                                      hi_b.astype(jnp.int32), at_b.astype(jnp.int32), table_bn)
        return out_bhe[:, None], k_pool, v_pool


def local_slots(table_bn, positions_bt, local_pages: int, page_size: int):
    """(page, offset) in this shard's pool of each position [b, t], given the table's ids
    already relative to the shard's first page; the page is ``local_pages`` (out of range:
    dropped by ``scatter_positions``) past the table, or where the id is not this shard's."""
    n = table_bn.shape[1]
    logical_bt = positions_bt // page_size
    page_bt = jnp.take_along_axis(table_bn, jnp.clip(logical_bt, 0, n - 1), axis=1)
    inside_bt = (logical_bt >= 0) & (logical_bt < n) & (page_bt >= 0) & (page_bt < local_pages)
    return jnp.where(inside_bt, page_bt, local_pages), positions_bt % page_size


def scatter_positions(pool_kpse, page_bt, offset_bt, x_btke):
    """pool[:, page, offset] set to x for each [b, t] (pages past the pool dropped); an
    in-place scatter, never a copy of the pool.

    Indexed by (kv head, page, offset), one head-dim row per index: each update is a
    contiguous row of the pool's default layout, which the paged attention kernel reads.
    (Indexed by (page, offset) with [kv, e] updates, XLA lays the pool out kv-minor for
    the scatter and transposes it back for the kernel: a pool-sized copy every step.)"""
    kv, _, _, e = pool_kpse.shape
    b, t = page_bt.shape
    x_kne = jnp.moveaxis(jnp.broadcast_to(x_btke, (b, t, kv, e)).reshape(b * t, kv, e), 1, 0)
    head_kn = jnp.broadcast_to(jnp.arange(kv)[:, None], (kv, b * t))
    page_kn = jnp.broadcast_to(page_bt.reshape(1, -1), (kv, b * t))
    offset_kn = jnp.broadcast_to(offset_bt.reshape(1, -1), (kv, b * t))
    return pool_kpse.at[head_kn.reshape(-1), page_kn.reshape(-1), offset_kn.reshape(-1)].set(
        x_kne.reshape(kv * b * t, e).astype(pool_kpse.dtype), mode="drop")


def attend(q_bhe, k_pool, v_pool, lengths_b, table_bn, block_pages: int, megacore_mode: str | None = None):
    """The kernel on this device's slots and pool: each slot's query against its
    positions [0, length) held in the pages of its (shard-relative) table row. Table
    entries past a slot's pages are clamped into the pool: only blocks below the length
    are read, and positions past it are masked. Zeros for a slot of length 0."""
    from jax.experimental.pallas.ops.tpu.paged_attention import paged_attention

    local_pages = k_pool.shape[1]
    n = table_bn.shape[1]
    table_bn = jnp.clip(table_bn, 0, local_pages - 1)
    pad = -n % block_pages  # the kernel walks whole blocks of the table
    table_bn = jnp.pad(table_bn, ((0, 0), (0, pad)))
    dtype, e = q_bhe.dtype, q_bhe.shape[-1]
    q_bhe = (q_bhe * jnp.asarray(1 / math.sqrt(e), dtype)).astype(k_pool.dtype)  # the kernel does not scale
    out_bhe = paged_attention(q_bhe, k_pool, v_pool, lengths_b, table_bn.astype(jnp.int32),
                              pages_per_compute_block=block_pages, megacore_mode=megacore_mode)
    # The kernel leaves an empty slot's output unwritten.
    return jnp.where((lengths_b > 0)[:, None, None], out_bhe, 0).astype(dtype)

