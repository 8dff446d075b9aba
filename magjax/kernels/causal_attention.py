"""Causal self-attention over packed sequences through the native kernel
(``causal_attention.cc``), with its gradient.

The same function as ``decoder.apply_rope`` on queries and keys followed by
``decoder.attend`` under ``decoder.attention_mask`` (causal by index, same segment,
optional sliding window by position), for the train step and the sampler's prefill on one
CPU device (where ``magjax.backends`` picks it). The kernel rotates rows as it reads them (so the step makes no separate
rotary passes), keeps one log-sum-exp per query row instead of the [t, t] probabilities,
and recomputes those block by block in the backward pass.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from magjax.kernels import native


def supports(head_dim: int) -> bool:
    return head_dim % 16 == 0  # the kernel works in whole 16-float vectors of the head dim


def _call(name, out_shapes, *args, window):
    if not native.load():
        raise RuntimeError("magjax's native kernels are unavailable here; use XLA's attention (magjax.backends.xla)")
    e = args[0].shape[-1]
    return jax.ffi.ffi_call(name, out_shapes)(*args, scale=np.float32(1 / math.sqrt(e)), window=np.int64(window))


def _forward(q_bthe, k_btke, v_btke, segment_ids_bt, positions_bt, cos_bte2, sin_bte2, window):
    b, t, h, e = q_bthe.shape
    out_shapes = (jax.ShapeDtypeStruct((b, t, h, e), jnp.float32), jax.ShapeDtypeStruct((b, t, h), jnp.float32))
    return _call("magjax_attention_forward", out_shapes, q_bthe, k_btke, v_btke, segment_ids_bt, positions_bt,
                 cos_bte2, sin_bte2, window=window)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def attend(q_bthe, k_btke, v_btke, segment_ids_bt, positions_bt, cos_bte2, sin_bte2, window: int = 0):
    """softmax(rot(q) rot(k)^T / sqrt(e)) v over the visible keys: [b, t, h, e], float32.

    q [b, t, h, e] and k [b, t, kv, e] unrotated (h a multiple of kv: grouped-query), v
    [b, t, kv, e]; segment ids and positions [b, t] int32; the rotary tables cos and sin
    [b, t, e/2] (``decoder.rotary_tables``); ``window`` > 0 limits keys to positions less
    than ``window`` behind the query (0: no limit).
    """
    return _forward(*_operands(q_bthe, k_btke, v_btke, segment_ids_bt, positions_bt, cos_bte2, sin_bte2), window)[0]


def _operands(q, k, v, segment_ids, positions, cos, sin):
    e = q.shape[-1]
    if not supports(e):
        raise ValueError(f"native attention needs a head dim that is a multiple of 16, got {e}")
    f32, i32 = jnp.float32, jnp.int32
    return (q.astype(f32), k.astype(f32), v.astype(f32), segment_ids.astype(i32), positions.astype(i32),
            cos.astype(f32), sin.astype(f32))


def _attend_fwd(q_bthe, k_btke, v_btke, segment_ids_bt, positions_bt, cos_bte2, sin_bte2, window):
    operands = _operands(q_bthe, k_btke, v_btke, segment_ids_bt, positions_bt, cos_bte2, sin_bte2)
    o_bthe, lse_bth = _forward(*operands, window)
    return o_bthe, (*operands, o_bthe, lse_bth)


def _attend_bwd(window, residuals, do_bthe):
    q, k, v = residuals[:3]
    out_shapes = tuple(jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in (q, k, v))
    dq, dk, dv = _call("magjax_attention_backward", out_shapes, *residuals, do_bthe.astype(jnp.float32),
                       window=window)
    return dq, dk, dv, None, None, None, None  # nothing flows to positions or the rotary tables


attend.defvjp(_attend_fwd, _attend_bwd)
