"""Whole-sequence attention on TPUs: the Pallas splash attention kernel shipped with JAX.

Causal, packed segments (segment ids) and the sliding window (a local mask) are the
kernel's own block-sparse masks, so it skips blocks nothing sees and never builds a
[t, t] array. It runs per device under ``shard_map``: rows split over the batch axes,
heads over the head axis where the key/value heads divide evenly, whole rows per device.

Splash masks are by index. The reference's window is by position; the two agree for the
rows magjax packs (positions count up by one within a segment, from where it starts).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from magjax import sharding as shd
from magjax.backends.xla import Attention


BLOCK = 128  # the kernel's default query and key block


def _kernel(t: int, heads: int, window: int | None):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    if window is None:
        mask = sm.CausalMask((t, t))
    else:
        mask = sm.LocalMask((t, t), window_size=(window - 1, 0), offset=0)
    return sk, sk.make_splash_mha(sm.MultiHeadMask([mask] * heads), head_shards=1, q_seq_shards=1)


def attention(config, positions_bt, segment_ids_bt, mesh) -> Attention:
    def attend(q_bthe, k_btke, v_btke):
        t_real = q_bthe.shape[1]
        pad = -t_real % BLOCK
        if pad:  # the kernel's blocks tile the row: pad it with positions of segment 0 (padding)
            widen = lambda x: jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0)))  # noqa: E731
            q_bthe, k_btke, v_btke = widen(q_bthe), widen(k_btke), widen(v_btke)
        seg_bt = jnp.pad(segment_ids_bt, ((0, 0), (0, pad)))
        b, t, h, e = q_bthe.shape
        kv = k_btke.shape[2]
        dt = q_bthe.dtype
        # The kernel does not scale its scores: scale the queries once.
        q_bhte = jnp.transpose(q_bthe * jnp.asarray(1 / math.sqrt(e), dt), (0, 2, 1, 3))
        k_bkte, v_bkte = jnp.transpose(k_btke, (0, 2, 1, 3)), jnp.transpose(v_btke, (0, 2, 1, 3))
        seg_bt = seg_bt.astype(jnp.int32)

        def local(q_bhte, k_bkte, v_bkte, seg_bt):
            sk, kernel = _kernel(t, q_bhte.shape[1], config.sliding_window)
            one = lambda q, k, v, s: kernel(q, k, v, segment_ids=sk.SegmentIds(q=s, kv=s))  # noqa: E731
            return jax.vmap(one)(q_bhte, k_bkte, v_bkte, seg_bt)

        if mesh is None:
            o_bhte = local(q_bhte, k_bkte, v_bkte, seg_bt)
        else:
            kv_spec = shd.full_spec((shd.BATCH, shd.KV_HEADS, None, None), (b, kv, t, e), mesh)
            q_spec = PartitionSpec(kv_spec[0], kv_spec[1], None, None)  # heads split as the kv heads are
            seg_spec = PartitionSpec(kv_spec[0], None)
            o_bhte = jax.shard_map(local, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, seg_spec),
                                   out_specs=q_spec, check_vma=False)(q_bhte, k_bkte, v_bkte, seg_bt)
        return jnp.transpose(o_bhte, (0, 2, 1, 3))[:, :t_real].astype(dt)

    return Attention(attend, rotates=False)
