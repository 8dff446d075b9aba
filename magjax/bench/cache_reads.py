"""Bytes of KV cache a decode step's attention reads, as each implementation reads it.

A model of the code, not a measurement: each entry follows what its implementation
touches (see the function), so benches can compare caches on the same schedule. Keyed by
the names ``Engine.implementations["decode_attention"]`` reports.
"""

from __future__ import annotations

import numpy as np

from magjax.backends import decode_blockwise, paged


def bytes_per_position(config) -> int:
    """Cache bytes of one sequence position over all layers: a key and a value per KV head,
    in the model's compute dtype (the dtype the engine's cache holds)."""
    itemsize = np.dtype(config.jnp_dtype).itemsize
    return 2 * config.num_layers * config.num_kv_heads * config.head_dim * itemsize


def positions_read(implementation: str, lo_b, hi_b, active_b, *, max_len: int, page_size: int = 0) -> int:
    """Cache positions one layer's decode attention reads in one step (each position: a
    key and a value per KV head), for slots attending to [lo_b, hi_b) (hi = the slot's
    length + 1), ``active_b`` the slots generating in that step: the engine hands every
    other slot an empty range.

    * ``"xla"`` (the CPU layout's masked broadcast product): every slot's whole
      ``max_len`` cache, active or not.
    * ``"native"`` and ``"native-paged"`` (the CPU kernel, on slots or through a page
      table): each active slot's positions [lo, hi) clamped to the cache.
    * ``"xla-blockwise"`` (the accelerators' token-major cache): blocks of
      ``decode_blockwise.BLOCK`` positions (at most ``max_len``) up to the furthest
      ``hi`` of any active slot, for every slot.
    * ``"xla-paged"``: the pages meeting [lo, hi) of each active slot (idle slots read
      nothing), whole pages, gathered ``paged.BLOCK_POSITIONS // page_size`` pages at a
      time; the last group is gathered whole even where the work list runs out.
    """
    lo_b, hi_b, active_b = np.asarray(lo_b), np.asarray(hi_b), np.asarray(active_b, bool)
    slots = lo_b.shape[0]
    if implementation == "xla":
        return slots * max_len
    if implementation in ("native", "native-paged"):
        return int(np.where(active_b, np.maximum(np.clip(hi_b, 0, max_len) - np.clip(lo_b, 0, max_len), 0), 0).sum())
    if implementation == "xla-blockwise":
        block = min(decode_blockwise.BLOCK, max_len)
        return slots * -(-int(np.where(active_b, hi_b, 0).max(initial=0)) // block) * block
    if implementation == "xla-paged":
        if page_size < 1:
            raise ValueError(f"the paged read model needs a positive page_size, got {page_size}")
        per_slot = -(-max_len // page_size)
        live_b = np.where(active_b & (hi_b > lo_b), -(-hi_b // page_size) - lo_b // page_size, 0)
        group = max(1, min(slots * per_slot, paged.BLOCK_POSITIONS // page_size))
        return -(-int(live_b.sum()) // group) * group * page_size
    raise ValueError(f"no cache read model for decode attention {implementation!r} "
                     f"(magjax/bench/cache_reads.py knows {', '.join(MODELLED)})")


MODELLED = ("xla", "native", "native-paged", "xla-blockwise", "xla-paged")  # every implementation modelled above
