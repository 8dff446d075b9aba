"""Causal self-attention over packed sequences through the native kernel
(``causal_attention.cc``), with its gradient.

The same function as ``decoder.attend`` under ``decoder.attention_mask`` (causal by index,
same segment, optional sliding window by position), for the train step and the sampler's
prefill on one CPU device. The forward pass keeps one log-sum-exp per query row instead
of the [t, t] probabilities; the backward pass recomputes them block by block.
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


def applies(config, mesh) -> bool:
    """Whether a model's whole-sequence attention runs natively here: float32 compute, a
    head dim the kernel supports, one CPU device (sharded work stays XLA's), kernels built."""
    return (config.dtype == "float32" and supports(config.head_dim) and native.on_one_cpu(mesh)
            and native.load())


def _call(name, out_shapes, *args, window):
    if not native.load():
        raise RuntimeError("magjax's native kernels are unavailable here; use XLA's attention (decoder.attend)")
    e = args[0].shape[-1]
    return jax.ffi.ffi_call(name, out_shapes)(*args, scale=np.float32(1 / math.sqrt(e)), window=np.int64(window))


def _forward(q_bthe, k_btke, v_btke, segment_ids_bt, positions_bt, window):
    b, t, h, e = q_bthe.shape
    out_shapes = (jax.ShapeDtypeStruct((b, t, h, e), jnp.float32), jax.ShapeDtypeStruct((b, t, h), jnp.float32))
    return _call("magjax_attention_forward", out_shapes, q_bthe, k_btke, v_btke, segment_ids_bt, positions_bt,
                 window=window)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def attend(q_bthe, k_btke, v_btke, segment_ids_bt, positions_bt, window: int = 0):
    """softmax(q k^T / sqrt(e)) v over the visible keys: [b, t, h, e], float32.

    q [b, t, h, e]; k and v [b, t, kv, e] (h a multiple of kv: grouped-query); segment ids
    and positions [b, t] int32; ``window`` > 0 limits keys to positions less than
    ``window`` behind the query (0: no limit).
    """
    return _forward(*_operands(q_bthe, k_btke, v_btke, segment_ids_bt, positions_bt), window)[0]


def _operands(q, k, v, segment_ids, positions):
    e = q.shape[-1]
    if not supports(e):
        raise ValueError(f"native attention needs a head dim that is a multiple of 16, got {e}")
    f32, i32 = jnp.float32, jnp.int32
    return q.astype(f32), k.astype(f32), v.astype(f32), segment_ids.astype(i32), positions.astype(i32)


def _attend_fwd(q_bthe, k_btke, v_btke, segment_ids_bt, positions_bt, window):
    operands = _operands(q_bthe, k_btke, v_btke, segment_ids_bt, positions_bt)
    o_bthe, lse_bth = _forward(*operands, window)
    return o_bthe, (*operands, o_bthe, lse_bth)


def _attend_bwd(window, residuals, do_bthe):
    q, k, v, segment_ids, positions, o, lse = residuals
    out_shapes = tuple(jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in (q, k, v))
    dq, dk, dv = _call("magjax_attention_backward", out_shapes, q, k, v, segment_ids, positions, o, lse,
                       do_bthe.astype(jnp.float32), window=window)
    return dq, dk, dv, None, None


attend.defvjp(_attend_fwd, _attend_bwd)
