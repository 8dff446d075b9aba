"""The TPU paged cache (magjax/backends/tpu_paged.py) on the CPU: the Pallas kernel runs in
TPU interpret mode (Pallas simulates the TPU's memories and DMAs), under the same
``shard_map`` as on a slice, and must write and attend as the portable paged cache does.
(What it compiles to for a TPU is checked in test_aot.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas import tpu as pltpu

from magjax import sharding as shd
from magjax.backends import paged, tpu_paged
from magjax.sampling.pages import PagePool

# 4 kv heads (split over the model axis's 4), 2 queries each, the kernel's head dim; 2 page
# shards (fsdp) of 10 pages of 16 positions; 4 slots of up to 64 positions.
SLOTS, KV, H, E, PAGE, MAX_LEN, PAGES = 4, 4, 8, 128, 16, 64, 20


def _placed(cache, mesh, dtype):
    k_shape, v_shape = cache.shapes(PAGES, PAGE, KV, E)
    return tuple(jax.device_put(jnp.zeros(shape, dtype), shd.named_sharding(axes, shape, mesh))
                 for shape, axes in ((k_shape, cache.k_axes), (v_shape, cache.v_axes)))


def test_the_kernel_writes_and_attends_as_the_portable_paged_cache(mesh_2x4):
    dtype = jnp.bfloat16  # the recipes' cache
    rng = np.random.default_rng(0)
    pool = PagePool(PAGES, PAGE, SLOTS, MAX_LEN, shards=2)
    # Two groups of two samples, one per shard: prompts of 20 and 17 tokens (the first
    # page shared, the partial second page each sample's own), room for one more token.
    assert pool.admit([0, 1], 20, 21) and pool.admit([2, 3], 17, 18)
    assert pool.table_bn[2, 0] >= PAGES // 2  # the second group's pages lie in the second shard
    prompt_k, prompt_v = (jnp.asarray(x, dtype) for x in rng.standard_normal((2, 1, 32, KV, E)))
    q = jnp.asarray(rng.standard_normal((SLOTS, 1, H, E)), dtype)
    new_k, new_v = (jnp.asarray(x, dtype) for x in rng.standard_normal((2, SLOTS, 1, KV, E)))
    at = jnp.array([20, -1, 17, 17], jnp.int32)  # slot 1 idle: writes nothing, reads nothing
    table = jnp.asarray(pool.table_bn)
    results = {}
    for cache in (paged.Paged(), tpu_paged.PagedTPU(mesh_2x4)):
        k_pool, v_pool = _placed(cache, mesh_2x4, dtype)
        with pltpu.force_tpu_interpret_mode():
            write = jax.jit(cache.write_prompt)
            k_pool, v_pool = write(k_pool, v_pool, table[:2], prompt_k, prompt_v, jnp.int32(20))
            k_pool, v_pool = write(k_pool, v_pool, table[2:], prompt_k, prompt_v, jnp.int32(17))
            out, k_pool, v_pool = jax.jit(cache.write_and_attend)(
                q, new_k, new_v, k_pool, v_pool, jnp.zeros(SLOTS, jnp.int32), at + 1, at, table)
        if cache.page_axis == 1:  # [kv, pages, page, e] -> the portable [pages, page, kv, e]
            k_pool, v_pool = (jnp.transpose(x, (1, 2, 0, 3)) for x in (k_pool, v_pool))
        results[cache.name] = [np.asarray(x, np.float32) for x in (out, k_pool, v_pool)]
    (out_x, k_x, v_x), (out_t, k_t, v_t) = results["xla-paged"], results["tpu-paged"]
    # The writes land on the same pool rows, exactly (and only where the table points).
    np.testing.assert_array_equal(k_t, k_x)
    np.testing.assert_array_equal(v_t, v_x)
    # Positions written: each group's shared first page (16) once, then its samples' own
    # pages: 4 prompt positions + the new token (slot 0), 4 (slot 1, idle); 1 + 1 (slots 2, 3).
    assert np.count_nonzero(np.abs(k_x).sum(axis=(2, 3))) == 16 + 5 + 4 + 16 + 2 + 2
    # Attention: scores and softmax in float32 on both paths; outputs in bfloat16.
    assert np.abs(out_x).max() > 0.1
    np.testing.assert_allclose(out_t, out_x, atol=2e-2, rtol=2e-2)
    assert not np.any(out_t[1]) and not np.any(out_x[1])  # the idle slot: zeros


def test_an_idle_batch_and_table_sentinels_read_nothing(mesh_2x4):
    """Every slot idle, tables all sentinel (no page held): nothing written, zeros out."""
    cache = tpu_paged.PagedTPU(mesh_2x4)
    k_pool, v_pool = _placed(cache, mesh_2x4, jnp.float32)
    k_pool = k_pool + 1.0
    ones = jnp.ones((SLOTS, 1, KV, E))
    table = jnp.full((SLOTS, MAX_LEN // PAGE), PAGES, jnp.int32)
    with pltpu.force_tpu_interpret_mode():
        out, k_new, v_new = jax.jit(cache.write_and_attend)(
            jnp.ones((SLOTS, 1, H, E)), ones, ones, k_pool, v_pool, jnp.zeros(SLOTS, jnp.int32),
            jnp.full((SLOTS,), 5, jnp.int32), jnp.full((SLOTS,), -1, jnp.int32), table)
    assert not np.any(np.asarray(out))
    np.testing.assert_array_equal(np.asarray(k_new), np.asarray(k_pool))
    assert not np.any(np.asarray(v_new))
