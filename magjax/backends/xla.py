"""The portable implementations: XLA's own ops, on any backend.

* Whole-sequence attention: the masked reference (``reference.py``) for short rows, the
  blockwise attention (``flash.py``) from ``FLASH_MIN_T`` tokens on. Measured on 2 CPU
  cores (forward + backward, 4 heads over 2 kv heads of 64): 16 rows x 256 tokens 47 ms
  masked, 51 blockwise; 4 x 1,024 234 against 131; 1 x 2,048 351 against 102; 1 x 4,096
  1,575 against 453 (blocks of 256, 512 at 4,096). Past a few thousand tokens the masked
  form's [t, t] scores would not fit an accelerator at all.
* Projections: every product as one 2-D matmul on flattened [tokens, in] operands.
* The decode step's cache, in two layouts: ``KeysTransposed`` for CPUs (keys [b, k, e, s],
  values [b, k, s, e]: each puts the dimension its product sweeps last, so XLA:CPU's
  fused elementwise products stream the cache once) and ``HeadMinor`` for accelerators
  (keys and values [b, k, s, e]: the head dim minor, as TPU tiles and GPU kernels want).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from magjax import sharding as shd
from magjax.backends import flash, reference

FLASH_MIN_T = 1024  # rows at least this long attend blockwise (see the module docstring)
FLASH_BLOCK = 256


class Attention(NamedTuple):
    """How the layers of one forward pass attend over its whole packed sequences."""

    attend: Callable  # (q [b,t,h,e], k [b,t,k,e], v [b,t,k,e]) -> [b,t,h,e]
    rotates: bool  # attend applies the rotary embedding itself: q and k come unrotated


def attention(config, positions_bt, segment_ids_bt) -> Attention:
    """XLA's attention on rotated inputs: masked for short rows, blockwise for long ones."""
    t = positions_bt.shape[1]
    if t >= FLASH_MIN_T:
        return Attention(lambda q, k, v: flash.attend(q, k, v, segment_ids_bt, positions_bt, config.sliding_window,
                                                      FLASH_BLOCK), rotates=False)
    mask_bts = reference.attention_mask(positions_bt, segment_ids_bt, config.sliding_window)
    return Attention(lambda q, k, v: reference.attend(q, k, v, mask_bts), rotates=False)


def dense(x, w, in_dims: int = 1):
    """x[..., in] @ w[in..., out...] as one 2-D matmul.

    XLA:CPU runs the backward pass of a many-dimensional einsum (contracting batch and
    time together) several times slower than the same product on flattened [tokens, in]
    operands, so every projection goes through here.
    """
    lead = x.shape[: x.ndim - in_dims]
    in_shape, out_shape = w.shape[:in_dims], w.shape[in_dims:]
    x2 = x.reshape(math.prod(lead), math.prod(in_shape))
    y2 = x2 @ w.astype(x.dtype).reshape(math.prod(in_shape), math.prod(out_shape))
    return y2.reshape(*lead, *out_shape)


class Projections:
    """A layer's products on the weights as ``decoder.init_params`` lays them out. A
    backend with its own weight layout (the sampler's copy) overrides ``prepare_layer``,
    ``prepare_head`` and the products; the decoder only ever calls these methods."""

    name = "xla"
    reads_trainer_layout = True  # prepare_layer and prepare_head return their input

    def prepare_layer(self, config, layer: dict) -> dict:
        """One layer's weights in this implementation's layout (the sampler's copy)."""
        return layer

    def prepare_head(self, config, params: dict) -> dict:
        """The non-layer weights in this implementation's layout."""
        return params

    def qkv(self, config, layer: dict, x_btd):
        """Query [.., h, e], key and value [.., k, e] (no bias, no rotation)."""
        return dense(x_btd, layer["wq"]), dense(x_btd, layer["wk"]), dense(x_btd, layer["wv"])

    def attn_out(self, layer: dict, o_bthe):
        return dense(o_bthe, layer["wo"], in_dims=2)

    def gate_up(self, layer: dict, x_btd):
        return dense(x_btd, layer["w_gate"]), dense(x_btd, layer["w_up"])

    def down(self, layer: dict, h_btf):
        return dense(h_btf, layer["w_down"])

    def logits(self, config, params: dict, h_btd):
        if config.tie_embeddings:
            return dense(h_btd, params["embed"].T)
        return dense(h_btd, params["lm_head"])


PROJECTIONS = Projections()


def range_mask(lo_b, hi_b, max_len: int):
    """[b, s]: cache positions in [lo_b, hi_b)."""
    s_idx = jnp.arange(max_len)
    return (s_idx[None] >= lo_b[:, None]) & (s_idx[None] < hi_b[:, None])


class KeysTransposed:
    """The CPU cache layout: keys [slots, kv_heads, head_dim, max_len], values [slots,
    kv_heads, max_len, head_dim]."""

    name = "xla"
    k_axes = (shd.BATCH, shd.KV_HEADS, shd.HEAD_DIM, shd.SEQUENCE)
    v_axes = (shd.BATCH, shd.KV_HEADS, shd.SEQUENCE, shd.HEAD_DIM)

    def shapes(self, slots: int, kv: int, e: int, max_len: int):
        return (slots, kv, e, max_len), (slots, kv, max_len, e)

    def write_prompt(self, k_cache, v_cache, slots_g, k_1pke, v_1pke):
        """The prompt's keys and values [1, p, k, e] into positions [0, p) of slots ``slots_g``."""
        g, p = slots_g.shape[0], k_1pke.shape[1]
        k_gkep = jnp.broadcast_to(jnp.transpose(k_1pke, (0, 2, 3, 1)), (g, *k_1pke.shape[2:], p))
        v_gkpe = jnp.broadcast_to(jnp.transpose(v_1pke, (0, 2, 1, 3)), (g, k_1pke.shape[2], p, k_1pke.shape[3]))
        return (k_cache.at[slots_g, :, :, :p].set(k_gkep.astype(k_cache.dtype)),
                v_cache.at[slots_g, :, :p].set(v_gkpe.astype(v_cache.dtype)))

    def write_and_attend(self, q_b1he, k_b1ke, v_b1ke, k_cache, v_cache, lo_b, hi_b, at_b):
        """Writes each slot's new key and value at ``at_b`` (nowhere when out of range), then
        attends each slot's query to its positions [lo_b, hi_b): [b, 1, h, e] and the caches."""
        slot_idx = jnp.arange(q_b1he.shape[0])
        k_cache = k_cache.at[slot_idx, :, :, at_b].set(k_b1ke[:, 0].astype(k_cache.dtype), mode="drop")
        v_cache = v_cache.at[slot_idx, :, at_b].set(v_b1ke[:, 0].astype(v_cache.dtype), mode="drop")
        mask_bs = range_mask(lo_b, hi_b, k_cache.shape[-1])
        return attend_keys_transposed(q_b1he, k_cache, v_cache, mask_bs), k_cache, v_cache


def attend_keys_transposed(q_b1he, k_bkes, v_bkse, mask_bs):
    """One new query per slot against that slot's cache: [b, 1, h, e].

    Written as broadcast products and sums rather than einsums: with one query row per
    head group, XLA:CPU would run an einsum as b·k tiny matrix products; the fused
    elementwise form streams the cache once. Scores and softmax in float32.
    """
    b, _, h, e = q_b1he.shape
    kv = k_bkes.shape[1]
    q_bkge = q_b1he.reshape(b, kv, h // kv, e).astype(jnp.float32)
    scores_bkgs = jnp.sum(q_bkge[..., None] * k_bkes[:, :, None].astype(jnp.float32), axis=3) / math.sqrt(e)
    scores_bkgs = jnp.where(mask_bs[:, None, None], scores_bkgs, -1e30)
    probs_bkgs = jax.nn.softmax(scores_bkgs, axis=-1)
    out_bkge = jnp.sum(probs_bkgs[..., None] * v_bkse[:, :, None].astype(jnp.float32), axis=3)
    return out_bkge.reshape(b, 1, h, e).astype(q_b1he.dtype)


class HeadMinor:
    """The accelerator cache layout: keys and values [slots, kv_heads, max_len, head_dim]."""

    name = "xla-head-minor"
    k_axes = v_axes = (shd.BATCH, shd.KV_HEADS, shd.SEQUENCE, shd.HEAD_DIM)

    def shapes(self, slots: int, kv: int, e: int, max_len: int):
        return (slots, kv, max_len, e), (slots, kv, max_len, e)

    def write_prompt(self, k_cache, v_cache, slots_g, k_1pke, v_1pke):
        g, p = slots_g.shape[0], k_1pke.shape[1]
        put = lambda x: jnp.broadcast_to(jnp.transpose(x, (0, 2, 1, 3)), (g, x.shape[2], p, x.shape[3]))  # noqa: E731
        return (k_cache.at[slots_g, :, :p].set(put(k_1pke).astype(k_cache.dtype)),
                v_cache.at[slots_g, :, :p].set(put(v_1pke).astype(v_cache.dtype)))

    def write_and_attend(self, q_b1he, k_b1ke, v_b1ke, k_cache, v_cache, lo_b, hi_b, at_b):
        slot_idx = jnp.arange(q_b1he.shape[0])
        k_cache = k_cache.at[slot_idx, :, at_b].set(k_b1ke[:, 0].astype(k_cache.dtype), mode="drop")
        v_cache = v_cache.at[slot_idx, :, at_b].set(v_b1ke[:, 0].astype(v_cache.dtype), mode="drop")
        b, _, h, e = q_b1he.shape
        kv = k_cache.shape[1]
        q_bkge = q_b1he.reshape(b, kv, h // kv, e)
        scores_bkgs = jnp.einsum("bkge,bkse->bkgs", q_bkge, k_cache, preferred_element_type=jnp.float32) / math.sqrt(e)
        mask_bs = range_mask(lo_b, hi_b, k_cache.shape[2])
        probs_bkgs = jax.nn.softmax(jnp.where(mask_bs[:, None, None], scores_bkgs, -1e30), axis=-1)
        out_bkge = jnp.einsum("bkgs,bkse->bkge", probs_bkgs.astype(v_cache.dtype), v_cache,
                              preferred_element_type=jnp.float32)
        return out_bkge.reshape(b, 1, h, e).astype(q_b1he.dtype), k_cache, v_cache
