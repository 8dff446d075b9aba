"""The reference attention: XLA's masked attention over whole [t, t] score matrices.

Every other attention in magjax (blockwise, splash, cuDNN, the native CPU kernel) is
checked against this one. It is also the fastest on XLA:CPU for short rows, where the
[t, t] scores are small (see ``magjax.backends.xla``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def attention_mask(positions_bt, segment_ids_bt, sliding_window: int | None):
    """Causal (by index), same-segment, and sliding-window (by position) mask [b,t,s].

    Same segment means equal ids, wherever they are: a segment id that recurs later in a
    row sees its earlier occurrence (causality permitting)."""
    t = positions_bt.shape[1]
    idx = jnp.arange(t)
    mask_bts = (idx[:, None] >= idx[None, :])[None]
    mask_bts = mask_bts & (segment_ids_bt[:, :, None] == segment_ids_bt[:, None, :])
    if sliding_window is not None:
        mask_bts = mask_bts & (positions_bt[:, :, None] - positions_bt[:, None, :] < sliding_window)
    return mask_bts


def attend(q_bthe, k_bske, v_bske, mask_bts):
    """Grouped-query attention: each key/value head serves h/k query heads.

    Scores and softmax are float32 whatever the compute dtype.
    """
    b, t, h, e = q_bthe.shape
    kv = k_bske.shape[2]
    q_btkge = q_bthe.reshape(b, t, kv, h // kv, e)
    scores_bkgts = jnp.einsum("btkge,bske->bkgts", q_btkge, k_bske,
                              preferred_element_type=jnp.float32) / math.sqrt(e)
    scores_bkgts = jnp.where(mask_bts[:, None, None], scores_bkgts, -1e30)
    probs_bkgts = jax.nn.softmax(scores_bkgts, axis=-1).astype(v_bske.dtype)
    out_btkge = jnp.einsum("bkgts,bske->btkge", probs_bkgts, v_bske)
    return out_btkge.reshape(b, t, h, e)
