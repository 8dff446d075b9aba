"""magjax's native CPU kernels as one implementation behind ``magjax.backends``.

Registered there by a single line; the seam imports this module on first use and races
each function here against XLA's at the real shapes (``magjax.backends.race``). Provides:

* ``attention``: whole-sequence attention (``causal_attention.cc``), which applies the
  rotary embedding itself;
* ``PROJECTIONS``: the sampler's few-row products on weights packed into panels
  (``panel_matmul.cc``; q|k|v and gate|up packed together, so a layer is four calls);
* ``CACHE``: the decode step's cache write and attention (``decode_attention.cc``) on the
  CPU cache layout;
* ``PAGED_CACHE``: the same kernel on a paged cache (pools of pages laid out as the CPU
  cache layout, read through the page table).
"""

from __future__ import annotations

import hashlib
import os

import jax.numpy as jnp

from magjax import sharding as shd
from magjax.backends import xla
from magjax.kernels import causal_attention, decode_attention, native, panels


def available() -> bool:
    """Whether the kernels are built and registered (they build on the first call)."""
    return native.load()


def version() -> str:
    """What the kernels' speed depends on in this package: their sources and flags."""
    digest = hashlib.sha256(" ".join(native.flags()).encode())
    here = os.path.dirname(__file__)
    for name in (*native.SOURCES, *native.HEADERS):
        with open(os.path.join(here, name), "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:16]


def attention_applies(config) -> bool:
    return config.dtype == "float32" and causal_attention.supports(config.head_dim)


def attention(config, positions_bt, segment_ids_bt) -> xla.Attention:
    from magjax.models import decoder

    window = config.sliding_window or 0
    cos_bte2, sin_bte2 = decoder.rotary_tables(positions_bt, decoder.rope_inv_freq(config))
    return xla.Attention(lambda q, k, v: causal_attention.attend(q, k, v, segment_ids_bt, positions_bt, cos_bte2,
                                                                 sin_bte2, window), rotates=True)


def projections_apply(config) -> bool:
    return config.param_dtype == "float32" and config.dtype == "float32"


class PanelProjections(xla.Projections):
    """Products on weights packed once per version (``panels.pack``): a decode step's
    products have one row per slot, and the packed layout streams each weight once.
    Products that read the same input are one (q|k|v as ``wqkv``, gate|up as
    ``w_gate_up``): fewer, larger calls, which matters where a step is mostly per-call
    overhead."""

    name = "native"
    reads_trainer_layout = False
    _PACKED = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")

    def prepare_layer(self, config, layer: dict) -> dict:
        d = config.hidden_size
        flat = lambda w: w.reshape(d, -1)  # noqa: E731
        packed = {k: w for k, w in layer.items() if k not in self._PACKED}
        packed["wqkv"] = panels.pack(jnp.concatenate([flat(layer["wq"]), flat(layer["wk"]), flat(layer["wv"])], 1))
        packed["wo"] = panels.pack(layer["wo"], in_dims=2)
        packed["w_gate_up"] = panels.pack(jnp.concatenate([layer["w_gate"], layer["w_up"]], 1))
        packed["w_down"] = panels.pack(layer["w_down"])
        return packed

    def prepare_head(self, config, params: dict) -> dict:
        """The output matrix, tied or not, packed as ``lm_head``."""
        head = {k: v for k, v in params.items() if k != "lm_head"}
        head["lm_head"] = panels.pack(params["embed"].T if config.tie_embeddings else params["lm_head"])
        return head

    def qkv(self, config, layer: dict, x_btd):
        h, kv, e = config.num_heads, config.num_kv_heads, config.head_dim
        q, k, v = jnp.split(panels.dense(x_btd, layer["wqkv"]), [h * e, (h + kv) * e], axis=-1)
        lead = x_btd.shape[:-1]
        return q.reshape(*lead, h, e), k.reshape(*lead, kv, e), v.reshape(*lead, kv, e)

    def attn_out(self, layer: dict, o_bthe):
        return panels.dense(o_bthe, layer["wo"])

    def gate_up(self, layer: dict, x_btd):
        return jnp.split(panels.dense(x_btd, layer["w_gate_up"]), 2, axis=-1)

    def down(self, layer: dict, h_btf):
        return panels.dense(h_btf, layer["w_down"])

    def logits(self, config, params: dict, h_btd):
        return panels.dense(h_btd, params["lm_head"])


PROJECTIONS = PanelProjections()


def decode_applies(config) -> bool:
    return config.dtype == "float32" and decode_attention.supports(config.head_dim)


class NativeCache(xla.KeysTransposed):
    """The CPU cache layout, written and read by the native decode attention: it reads each
    slot's positions [lo, hi) once instead of the whole masked cache."""

    name = "native"

    def write_and_attend(self, q_b1he, k_b1ke, v_b1ke, k_cache, v_cache, lo_b, hi_b, at_b):
        return _write_and_attend(q_b1he, k_b1ke, v_b1ke, k_cache, v_cache, lo_b, hi_b, at_b)


CACHE = NativeCache()


def _write_and_attend(q_b1he, k_b1ke, v_b1ke, k_pool, v_pool, lo_b, hi_b, at_b, table_bn=None):
    b, _, h, e = q_b1he.shape
    kv = k_pool.shape[1]
    o_bkge, k_pool, v_pool = decode_attention.write_and_attend(
        q_b1he.reshape(b, kv, h // kv, e), k_b1ke[:, 0], v_b1ke[:, 0], k_pool, v_pool, lo_b, hi_b, at_b, table_bn)
    return o_bkge.reshape(b, 1, h, e).astype(q_b1he.dtype), k_pool, v_pool


class NativePaged:
    """The paged cache in the CPU cache layout, written and read by the native decode
    attention: keys [pages, kv_heads, head_dim, page_size] (a page's positions last, so a
    score block sweeps a row) and values [pages, kv_heads, page_size, head_dim]. The
    interface of ``backends.paged.Paged``: a slot's positions [lo, hi) are read through its
    page table row, each once, and nothing past them."""

    name = "native-paged"
    paged = True
    page_axis = 0
    k_axes = (shd.BATCH, shd.KV_HEADS, shd.HEAD_DIM, None)
    v_axes = (shd.BATCH, shd.KV_HEADS, None, shd.HEAD_DIM)

    def shapes(self, pages: int, page_size: int, kv: int, e: int):
        return (pages, kv, e, page_size), (pages, kv, page_size, e)

    def write_prompt(self, k_pool, v_pool, table_gn, k_1pke, v_1pke, prompt_len):
        """Positions [0, prompt_len) of the prompt's keys and values [1, p, k, e] into the
        pages of each of the G table rows (shared pages receive the same values G times).

        Whole pages at a time: each of the n pages of a table row the bucket spans is read,
        the prompt's positions merged in (the rest of a partly filled page kept) and
        written back; a per-position scatter into this layout is an element-wise loop on
        XLA:CPU."""
        pages, page = k_pool.shape[0], k_pool.shape[-1]
        p, kv, e = k_1pke.shape[1:]
        n = min(-(-p // page), table_gn.shape[1])
        page_gn = table_gn[:, :n]  # entries past the pool: their pages are dropped
        pad = ((0, 0), (0, max(0, n * page - p)), (0, 0), (0, 0))
        k_nske = jnp.pad(k_1pke, pad)[0, : n * page].reshape(n, page, kv, e)
        v_nske = jnp.pad(v_1pke, pad)[0, : n * page].reshape(n, page, kv, e)
        keep_ns = (jnp.arange(n * page) < prompt_len).reshape(n, page)  # the bucket's padding is not written

        def put(pool, new, keep):  # new, keep: [n, ...] pages in the pool's layout
            old = pool[jnp.clip(page_gn, 0, pages - 1)]
            return pool.at[page_gn].set(jnp.where(keep[None], new[None].astype(pool.dtype), old), mode="drop")

        return (put(k_pool, jnp.transpose(k_nske, (0, 2, 3, 1)), keep_ns[:, None, None, :]),
                put(v_pool, jnp.transpose(v_nske, (0, 2, 1, 3)), keep_ns[:, None, :, None]))

    def write_and_attend(self, q_b1he, k_b1ke, v_b1ke, k_pool, v_pool, lo_b, hi_b, at_b, table_bn):
        """Writes each slot's new key and value at position ``at_b`` (nowhere when negative
        or on no page), then attends each slot's query to its positions [lo_b, hi_b); a
        slot that writes nothing is idle and reads nothing (zeros)."""
        hi_b = jnp.where(at_b >= 0, hi_b, lo_b)
        return _write_and_attend(q_b1he, k_b1ke, v_b1ke, k_pool, v_pool, lo_b, hi_b, at_b, table_bn)


PAGED_CACHE = NativePaged()
