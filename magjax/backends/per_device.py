"""Native CPU kernels on a mesh of CPU devices: each kernel call placed on every device
over that device's own share, under ``shard_map``.

A kernel is an FFI call, which XLA's partitioner cannot split: left to it, the call's
operands would be gathered whole onto every device and each device would do all of the
work. Placed per device, each runs the kernel on its rows (the batch axes) and, for
attention, its heads (the model axis, where the kv heads divide evenly).

* ``attention``: whole-sequence attention (train step, prefill) on rows and heads;
* ``Projections``: the sampler's products on its slots' rows, the packed weights
  replicated (the sampler's mesh splits only its slots: see ``applies``);
* ``Cache``: the decode step's cache write and attention on each device's slots;
* ``PagedCache``: the same for a paged cache, on each device's slots and its own pages
  (each shard of the pool serves its own slots: ``sampling/pages.py``).
"""

from __future__ import annotations

import jax
from jax.sharding import PartitionSpec

from magjax import sharding as shd
from magjax.backends.paged import localise
from magjax.backends.xla import Attention, KeysTransposed, Projections as XlaProjections


def batch_spec(b: int, mesh) -> PartitionSpec:
    """How ``b`` rows split over the batch axes (whole, where they do not divide)."""
    return shd.logical_to_spec((shd.BATCH,), (b,), mesh)


def rows_per_device(b: int, mesh) -> int:
    return b // shd.shard_count(mesh, shd.full_spec((shd.BATCH,), (b,), mesh)[0])


def applies(mesh) -> bool:
    """Whether the sampler's kernels can run per device here: a mesh that splits only the
    sampler's slots (weights are then whole on every device, as the packed layout needs)."""
    return mesh.shape.get("model", 1) == 1


# ---------------------------------------------------------------------- attention

def _attention_specs(config, b: int, mesh):
    """(q, k/v, [b, t]) PartitionSpecs: rows over the batch axes, heads over the head axis
    where the key/value heads divide evenly."""
    spec = shd.full_spec((shd.BATCH, None, shd.KV_HEADS, None), (b, 1, config.num_kv_heads, 1), mesh)
    heads = PartitionSpec(spec[0], None, spec[2], None)
    return heads, heads, PartitionSpec(spec[0], None)


def attention_share(config, b: int, mesh) -> tuple[int, int, int]:
    """(rows, query heads, key/value heads) of one device's share of attention over ``b`` rows."""
    if mesh is None or mesh.devices.size == 1:
        return b, config.num_heads, config.num_kv_heads
    q_spec, _, _ = _attention_specs(config, b, mesh)
    heads = shd.shard_count(mesh, q_spec[2])
    return b // shd.shard_count(mesh, q_spec[0]), config.num_heads // heads, config.num_kv_heads // heads


def attention(make, config, positions_bt, segment_ids_bt, mesh) -> Attention:
    """``make(config, positions, segments)``'s attention run on each device of ``mesh``
    over its own rows and heads."""
    q_spec, kv_spec, row_spec = _attention_specs(config, positions_bt.shape[0], mesh)
    rotates = make(config, positions_bt, segment_ids_bt).rotates  # builds no kernel call: a closure

    def local(q_bthe, k_btke, v_btke, positions_bt, segment_ids_bt):
        local_config = config.replace(num_heads=q_bthe.shape[2], num_kv_heads=k_btke.shape[2])
        return make(local_config, positions_bt, segment_ids_bt).attend(q_bthe, k_btke, v_btke)

    def attend(q_bthe, k_btke, v_btke):
        return jax.shard_map(local, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, row_spec, row_spec),
                             out_specs=q_spec, check_vma=False)(q_bthe, k_btke, v_btke, positions_bt, segment_ids_bt)

    return Attention(attend, rotates=rotates)


# ---------------------------------------------------------------------- the sampler

class Projections(XlaProjections):
    """``inner``'s products on each device's rows; its weights (laid out as ``inner``
    prepares them) whole on every device."""

    def __init__(self, inner: XlaProjections, mesh):
        self.inner, self.mesh = inner, mesh
        self.name, self.reads_trainer_layout = inner.name, inner.reads_trainer_layout

    def prepare_layer(self, config, layer: dict) -> dict:
        return self.inner.prepare_layer(config, layer)

    def prepare_head(self, config, params: dict) -> dict:
        return self.inner.prepare_head(config, params)

    def _run(self, product, weights, x):
        rows = batch_spec(x.shape[0], self.mesh)
        return jax.shard_map(product, mesh=self.mesh, in_specs=(PartitionSpec(), rows), out_specs=rows,
                             check_vma=False)(weights, x)

    def qkv(self, config, layer: dict, x_btd):
        return self._run(lambda layer, x: self.inner.qkv(config, layer, x), layer, x_btd)

    def attn_out(self, layer: dict, o_bthe):
        return self._run(self.inner.attn_out, layer, o_bthe)

    def gate_up(self, layer: dict, x_btd):
        return self._run(self.inner.gate_up, layer, x_btd)

    def down(self, layer: dict, h_btf):
        return self._run(self.inner.down, layer, h_btf)

    def logits(self, config, params: dict, h_btd):
        return self._run(lambda params, h: self.inner.logits(config, params, h), params, h_btd)


class Cache(KeysTransposed):
    """``inner``'s decode write and attention (the CPU cache layout) on each device's
    slots; prompts are written by XLA's scatter, which the partitioner places itself."""

    def __init__(self, inner: KeysTransposed, mesh):
        self.inner, self.mesh, self.name = inner, mesh, inner.name

    def write_and_attend(self, q_b1he, k_b1ke, v_b1ke, k_cache, v_cache, lo_b, hi_b, at_b):
        k_spec = shd.full_spec(self.k_axes, k_cache.shape, self.mesh)
        v_spec = shd.full_spec(self.v_axes, v_cache.shape, self.mesh)
        slots, heads = k_spec[0], k_spec[1]
        new = PartitionSpec(slots, None, heads, None)
        per_slot = PartitionSpec(slots)
        return jax.shard_map(self.inner.write_and_attend, mesh=self.mesh,
                             in_specs=(new, new, new, k_spec, v_spec, per_slot, per_slot, per_slot),
                             out_specs=(new, k_spec, v_spec), check_vma=False)(
            q_b1he, k_b1ke, v_b1ke, k_cache, v_cache, lo_b, hi_b, at_b)


class PagedCache:
    """``inner``'s paged writes and decode attention (a pool whose page axis splits over
    the batch axes like the slots) on each device's slots and pages. Page tables hold
    global page numbers, replicated; each device takes its own as ``localise`` numbers
    them (another shard's pages, none in practice, are no page to it)."""

    paged = True

    def __init__(self, inner, mesh):
        self.inner, self.mesh, self.name = inner, mesh, inner.name
        self.page_axis, self.k_axes, self.v_axes = inner.page_axis, inner.k_axes, inner.v_axes

    def shapes(self, pages: int, page_size: int, kv: int, e: int):
        return self.inner.shapes(pages, page_size, kv, e)

    def _specs(self, k_pool, v_pool):
        """The pools' PartitionSpecs, the axes their page axis splits over, and a [b, 1, heads, e]
        array's (slots as the pages, heads as the pools' kv heads)."""
        k_spec = shd.full_spec(self.k_axes, k_pool.shape, self.mesh)
        v_spec = shd.full_spec(self.v_axes, v_pool.shape, self.mesh)
        pages, heads = k_spec[self.page_axis], k_spec[self.k_axes.index(shd.KV_HEADS)]
        return k_spec, v_spec, pages, PartitionSpec(pages, None, heads, None)

    def write_prompt(self, k_pool, v_pool, table_gn, k_1pke, v_1pke, prompt_len):
        k_spec, v_spec, pages, new = self._specs(k_pool, v_pool)

        def local(k, v, table, kn, vn, n):
            table = localise(table, k.shape[self.page_axis], pages)
            return self.inner.write_prompt(k, v, table, kn, vn, n)

        prompt, rep = PartitionSpec(None, None, *new[2:]), PartitionSpec()
        return jax.shard_map(local, mesh=self.mesh, in_specs=(k_spec, v_spec, rep, prompt, prompt, rep),
                             out_specs=(k_spec, v_spec), check_vma=False)(
            k_pool, v_pool, table_gn, k_1pke, v_1pke, prompt_len)

    def write_and_attend(self, q_b1he, k_b1ke, v_b1ke, k_pool, v_pool, lo_b, hi_b, at_b, table_bn):
        k_spec, v_spec, pages, new = self._specs(k_pool, v_pool)

        def local(q, kn, vn, k, v, lo, hi, at, table):
            table = localise(table, k.shape[self.page_axis], pages)
            return self.inner.write_and_attend(q, kn, vn, k, v, lo, hi, at, table)

        per_slot = PartitionSpec(pages)
        return jax.shard_map(local, mesh=self.mesh,
                             in_specs=(new, new, new, k_spec, v_spec, per_slot, per_slot, per_slot,
                                       PartitionSpec(pages, None)),
                             out_specs=(new, k_spec, v_spec), check_vma=False)(
            q_b1he, k_b1ke, v_b1ke, k_pool, v_pool, lo_b, hi_b, at_b, table_bn)
