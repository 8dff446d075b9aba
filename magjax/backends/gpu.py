"""Whole-sequence attention on GPUs, never a [t, t] array for packed rows.

* Models without a sliding window: the Pallas Triton flash attention shipped with JAX
  (``jax.experimental.pallas.ops.gpu.attention.mha``), whose blocks compare segment ids
  themselves, forward and backward, so packed rows cost O(t) memory however long they
  are. It runs per device under ``shard_map`` (rows over the batch axes, heads over the
  head axis where the key/value heads divide evenly); grouped key/value heads are
  repeated to one per query head, which costs O(t) too.
* Windowed models: the portable blockwise attention (``xla.attention``), which applies the
  window by position.
* ``fused``: ``jax.nn.dot_product_attention`` with the reference's mask as a boolean
  [b, 1, t, t] (cuDNN's kernel takes a packed row's segments no other way through that
  API): kept for short rows, where the mask is small, of a model the flash kernel cannot
  take, and checked on CPU with XLA's implementation.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from magjax import sharding as shd
from magjax.backends import xla
from magjax.backends.xla import Attention

FLASH_BLOCKS = (128, 64, 32, 16)  # the kernel's default block, then what else tiles a row (Triton's least is 16)
FUSED_MAX_T = 1024  # the masked cuDNN call only up to rows this long: its mask is t * t bytes per row


def cudnn_applies(config) -> bool:
    return config.dtype in ("bfloat16", "float16") and config.head_dim % 8 == 0 and config.head_dim <= 128


def flash_applies(config) -> bool:
    """The Triton kernel masks causally and by segment, not by window; its head dim is
    padded to a power of two up to 256."""
    return config.sliding_window is None and config.head_dim <= 256


def block_sizes(t: int):
    """The kernel's blocks for rows of ``t`` (a multiple of 16): the largest default-sized
    block that tiles them, forward; the backward kernels' default of 32 (or the row's)."""
    from jax.experimental.pallas.ops.gpu import attention as triton

    forward = next(b for b in FLASH_BLOCKS if t % b == 0)
    backward = min(32, forward)
    return triton.BlockSizes(block_q=forward, block_k=forward, block_q_dkv=backward, block_kv_dkv=backward,
                             block_q_dq=backward, block_kv_dq=backward)


def flash(config, segment_ids_bt, mesh=None, *, interpret: bool = False) -> Attention:
    """The Triton flash attention on packed rows (``interpret``: Pallas's interpreter, how
    the CPU suite checks it against the reference)."""
    from jax.experimental.pallas.ops.gpu import attention as triton

    kv, e = config.num_kv_heads, config.head_dim

    def attend(q_bthe, k_btke, v_btke):
        t_real = q_bthe.shape[1]
        pad = -t_real % FLASH_BLOCKS[-1]
        # Padding tiles the row; its segment (0, as packing pads) is sliced off the output.
        widen = lambda x: jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2))  # noqa: E731
        seg_bt = widen(segment_ids_bt.astype(jnp.int32))
        q_bthe, k_btke, v_btke = widen(q_bthe), widen(k_btke), widen(v_btke)
        blocks = block_sizes(q_bthe.shape[1])

        def local(q_bthe, k_btke, v_btke, seg_bt):
            # One key/value head per query head: the kernel has no grouped-query form.
            k_bthe, v_bthe = (jnp.repeat(x, q_bthe.shape[2] // x.shape[2], axis=2) for x in (k_btke, v_btke))
            return triton.mha(q_bthe, k_bthe, v_bthe, seg_bt, sm_scale=1 / math.sqrt(e), causal=True,
                              block_sizes=blocks, interpret=interpret)

        if mesh is None:
            o_bthe = local(q_bthe, k_btke, v_btke, seg_bt)
        else:
            b, t = seg_bt.shape
            kv_spec = shd.full_spec((shd.BATCH, None, shd.KV_HEADS, None), (b, t, kv, e), mesh)
            o_bthe = jax.shard_map(local, mesh=mesh, in_specs=(kv_spec, kv_spec, kv_spec, PartitionSpec(kv_spec[0])),
                                   out_specs=kv_spec, check_vma=False)(q_bthe, k_btke, v_btke, seg_bt)
        return o_bthe[:, :t_real]

    return Attention(attend, rotates=False)


def fused(config, segment_ids_bt, implementation: str | None) -> Attention:
    """``jax.nn.dot_product_attention`` with the reference's mask (``implementation``:
    "cudnn", or "xla", which the CPU suite checks against the reference)."""
    window = config.sliding_window

    def attend(q_bthe, k_btke, v_btke):
        mask_b1ts = (segment_ids_bt[:, :, None] == segment_ids_bt[:, None, :])[:, None]
        return jax.nn.dot_product_attention(
            q_bthe, k_btke, v_btke, mask=mask_b1ts, is_causal=True,
            local_window_size=None if window is None else (window - 1, 0), implementation=implementation)

    return Attention(attend, rotates=False)


def attention(config, positions_bt, segment_ids_bt, mesh=None) -> Attention:
    if flash_applies(config):
        return flash(config, segment_ids_bt, mesh)
    if cudnn_applies(config) and positions_bt.shape[1] <= FUSED_MAX_T:
        return fused(config, segment_ids_bt.astype(jnp.int32), "cudnn")
    return xla.attention(config, positions_bt, segment_ids_bt)
