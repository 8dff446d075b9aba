"""The native decode attention on a paged cache: equal to the portable XLA paged cache
(``backends/paged.py``) on the same pages and tables, and, through the real engine,
giving the dense engine's tokens and log-probs."""

import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from magjax import backends
from magjax.backends import paged, race
from magjax.kernels import backend, native
from magjax.models import decoder, preset
from magjax.sampling.engine import Engine, EngineConfig, SamplingConfig
from magjax.sampling.generator import Generator, Request

HAS_COMPILER = any(shutil.which(c) for c in ("c++", "g++", "clang++"))
pytestmark = pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler: the native kernels cannot be built")


def _native_pools(k_pske, v_pske):
    """The XLA pools [p, s, k, e] in the native layout: keys [p, k, e, s], values [p, k, s, e]."""
    return jnp.transpose(k_pske, (0, 2, 3, 1)), jnp.transpose(v_pske, (0, 2, 1, 3))


def _case(rng, b, kv, g, e, page, n):
    """Random pools and a table with what a live pool holds: a prompt's pages shared by
    several slots, each slot's own pages after them, entries past a slot's pages and one
    hole in a live range pointing out of the pool; writes at each slot's last position,
    none (idle) for some, one onto a missing page; sliding windows (lo > 0) and full
    ranges."""
    pages = b * n + 3
    free = list(rng.permutation(pages))
    shared = [free.pop() for _ in range(2)]  # a prompt of two full pages, held by slots 0..2
    table = np.full((b, n), pages, np.int32)
    lo, hi, at = np.zeros(b, np.int32), np.zeros(b, np.int32), np.zeros(b, np.int32)
    for i in range(b):
        start = 2 if i < 3 else 0
        table[i, :start] = shared[:start]
        length = int(rng.integers(start * page + 1, n * page + 1))  # positions the slot reads, past the prompt
        held = -(-length // page)
        for j in range(start, held):
            table[i, j] = free.pop()
        at[i], hi[i] = length - 1, length
        lo[i] = int(rng.integers(0, length)) if i % 2 else 0  # odd slots: a sliding window
    at[b - 1] = -1  # an idle slot: writes and reads nothing
    if n > 2 and hi[3 % b] > 2 * page:
        table[3 % b, 1] = pages  # a hole: those positions are on no page, never read
    if b > 4 and hi[4] > page:  # a write onto a missing page: dropped, the slot still reads the rest
        table[4, (hi[4] - 1) // page] = pages
    k_pske = rng.standard_normal((pages, page, kv, e)).astype(np.float32)
    v_pske = rng.standard_normal((pages, page, kv, e)).astype(np.float32)
    q = rng.standard_normal((b, 1, kv * g, e)).astype(np.float32)
    k_new, v_new = rng.standard_normal((2, b, 1, kv, e)).astype(np.float32)
    return q, k_new, v_new, k_pske, v_pske, lo, hi, at, table


# (slots, kv heads, query heads per kv head, head dim, page size, pages per slot): pages of
# whole score blocks, of part vectors (24), of one vector, GQA groups of 1 to 5.
CASES = [(8, 2, 4, 64, 64, 5), (6, 1, 5, 16, 24, 6), (5, 3, 1, 32, 16, 9), (7, 2, 2, 128, 128, 3)]


@pytest.mark.parametrize("b, kv, g, e, page, n", CASES)
def test_native_paged_decode_equals_the_xla_paged_cache(b, kv, g, e, page, n):
    assert native.load()
    q, k_new, v_new, k_pske, v_pske, lo, hi, at, table = _case(np.random.default_rng(page + b), b, kv, g, e, page, n)
    want_o, want_k, want_v = jax.jit(paged.Paged().write_and_attend)(q, k_new, v_new, k_pske, v_pske, lo, hi, at,
                                                                    table)
    k_pool, v_pool = _native_pools(jnp.asarray(k_pske), jnp.asarray(v_pske))
    # Donated pools, as in the decode loop: XLA aliases them to the kernel's outputs.
    call = jax.jit(backend.PAGED_CACHE.write_and_attend, donate_argnums=(3, 4))
    o, k2, v2 = call(q, k_new, v_new, k_pool, v_pool, lo, hi, at, table)
    want_k_native, want_v_native = _native_pools(want_k, want_v)
    np.testing.assert_array_equal(np.asarray(k2), np.asarray(want_k_native))
    np.testing.assert_array_equal(np.asarray(v2), np.asarray(want_v_native))
    np.testing.assert_allclose(np.asarray(o), np.asarray(want_o), rtol=2e-5, atol=2e-6)
    assert not np.asarray(o)[-1].any()  # the idle slot: zeros
    assert np.abs(np.asarray(o)[:-1]).sum(axis=(1, 2, 3)).min() > 0  # every other slot read something


@pytest.mark.parametrize("prompt_len", [37, 20])
def test_native_paged_prompt_write_equals_the_xla_paged_cache(prompt_len):
    """A group's prompt into its slots' pages: the shared full pages, each slot's own last
    partial page (the rest of it untouched), the bucket's padding nowhere, and nothing on
    entries past the pool (at 20 tokens the bucket's third page has none)."""
    assert native.load()
    rng = np.random.default_rng(prompt_len)
    pages, page, kv, e, bucket = 12, 16, 2, 32, 48
    table = np.full((3, 4), pages, np.int32)
    if prompt_len > 32:
        table[:, :2] = [5, 9]  # the prompt's two full pages, shared
        table[:, 2] = [0, 3, 7]  # each sample's own page for the prompt's last 5 positions
    else:
        table[:, 0] = 5  # one full page shared
        table[:, 1] = [0, 3, 7]  # each sample's own page for the last 4 positions; the third: none
    k_pske, v_pske = rng.standard_normal((2, pages, page, kv, e)).astype(np.float32)
    k_1pke, v_1pke = rng.standard_normal((2, 1, bucket, kv, e)).astype(np.float32)
    want_k, want_v = jax.jit(paged.Paged().write_prompt)(k_pske, v_pske, table, k_1pke, v_1pke, prompt_len)
    assert not np.array_equal(np.asarray(want_k), k_pske)
    k_pool, v_pool = _native_pools(jnp.asarray(k_pske), jnp.asarray(v_pske))
    k2, v2 = jax.jit(backend.PAGED_CACHE.write_prompt)(k_pool, v_pool, table, k_1pke, v_1pke, prompt_len)
    want_k_native, want_v_native = _native_pools(want_k, want_v)
    np.testing.assert_array_equal(np.asarray(k2), np.asarray(want_k_native))
    np.testing.assert_array_equal(np.asarray(v2), np.asarray(want_v_native))


CONFIG = preset("test").replace(head_dim=16, sliding_window=12)
UNWINDOWED = CONFIG.replace(sliding_window=None)  # every position kept: sequences outgrow a shard's pages


def _requests(n, samples, seed):
    rng = np.random.default_rng(seed)
    return [Request(f"r{i}", [1, *rng.integers(3, 60, int(rng.integers(2, 24))).tolist()], samples,
                    int(rng.integers(6, 20))) for i in range(n)]


@pytest.mark.parametrize("page_size, pages", [(8, 0), (16, 0), (8, 12)])
def test_paged_native_engine_gives_the_dense_engines_tokens_and_logprobs(page_size, pages, monkeypatch):
    """Through the real engine and generator, forced onto the native kernels: groups
    sharing prompt pages, a sliding window shorter than the sequences, slots refilled as
    sequences finish, and (12 pages for 8 slots) sequences suspended to the host and
    resumed; every completion's tokens and log-probs are the dense engine's."""
    monkeypatch.setenv("MAGJAX_KERNELS", "native")
    params = decoder.init_params(CONFIG, jax.random.key(5))
    dense_config = EngineConfig(slots=8, max_len=48, prompt_buckets=(8, 16, 32), chunk_steps=4)
    paged_config = EngineConfig(slots=8, max_len=48, prompt_buckets=(8, 16, 32), chunk_steps=4,
                                page_size=page_size, pages=pages)
    sampling = SamplingConfig(temperature=1.0)
    dense = Engine(CONFIG, dense_config, sampling, 10_000)
    paged_engine = Engine(CONFIG, paged_config, sampling, 10_000)
    assert dense.implementations["decode_attention"] == "native"
    assert paged_engine.implementations["decode_attention"] == "native-paged"
    requests = _requests(5, 3, seed=2)
    want = {(c.problem_id, c.sample_index): c for c in Generator(dense, params).generate(requests)}
    generator = Generator(paged_engine, params)
    got = generator.generate(requests)
    assert generator.stats.suspensions > 0 if pages else generator.stats.suspensions == 0
    assert len(got) == len(want) == 15
    for c in got:
        w = want[(c.problem_id, c.sample_index)]
        assert c.tokens == w.tokens
        np.testing.assert_allclose(c.logprobs, w.logprobs, atol=1e-5)


def test_the_paged_decode_attention_is_raced_against_xla_paged(monkeypatch, tmp_path):
    """Left to the race, the seam times the native paged cache against the XLA paged
    cache at the engine's shapes, records it, and uses the winner."""
    monkeypatch.setenv("MAGJAX_KERNELS", "race")
    monkeypatch.setenv("MAGJAX_CACHE_DIR", str(tmp_path))
    first = len(race.DECISIONS)
    ops = backends.sampler(CONFIG, slots=4, max_len=40, page_size=16)
    decision = next(d for d in race.DECISIONS[first:] if d["function"] == "decode attention")
    assert "page_size=16" in decision["shape"] and decision["how"] == "raced"
    assert set(decision["seconds"]) == {"native", "xla"}
    want = {"native": "native-paged", "xla": "xla-paged"}[decision["winner"]]
    assert ops.cache.name == ops.implementations["decode_attention"] == want
    monkeypatch.setenv("MAGJAX_KERNELS", "xla")
    assert backends.sampler(CONFIG, slots=4, max_len=40, page_size=16).cache.name == "xla-paged"


def test_model_parallel_or_low_precision_paged_samplers_keep_the_xla_paged_cache(mesh_2x4, monkeypatch):
    monkeypatch.setenv("MAGJAX_KERNELS", "native")
    config = EngineConfig(slots=8, max_len=48, prompt_buckets=(8, 16, 32), chunk_steps=4, page_size=8)
    assert Engine(CONFIG, config, SamplingConfig(), 10_000, mesh=mesh_2x4).implementations["decode_attention"] == \
        "xla-paged"
    bf16 = CONFIG.replace(param_dtype="bfloat16", dtype="bfloat16")
    assert Engine(bf16, config, SamplingConfig(), 10_000).implementations["decode_attention"] == "xla-paged"


def test_a_data_parallel_paged_sampler_runs_the_kernel_on_each_devices_pages(mesh_1x8, monkeypatch):
    """On a mesh that splits only the slots, each device's share of the pool (its slots'
    pages, numbered globally in the tables) is written and read by the native kernel on
    that device: the same tokens and log-probs as one device, with pages short enough
    (6 per shard, for two slots) that sequences are suspended and resumed; raced at one
    device's slots; the compiled decode calls the kernel on two slots' queries (a call
    left to XLA's partitioner would be gathered onto every device, all 16 slots)."""
    monkeypatch.setenv("MAGJAX_KERNELS", "native")
    first = len(race.DECISIONS)
    params = decoder.init_params(UNWINDOWED, jax.random.key(5))
    config = EngineConfig(slots=16, max_len=48, prompt_buckets=(8, 16, 32), chunk_steps=4, page_size=8, pages=48)
    sampling = SamplingConfig(temperature=1.0, seed=3)
    sharded = Engine(UNWINDOWED, config, sampling, 10_000, mesh=mesh_1x8)
    assert sharded.implementations["decode_attention"] == "native-paged" and sharded.page_shards == 8
    assert any(d["function"] == "decode attention" and d["shape"].startswith("slots=2 ")
               for d in race.DECISIONS[first:])
    rng = np.random.default_rng(7)  # long completions: two slots of a shard outgrow its 6 pages
    requests = [Request(f"r{i}", [1, *rng.integers(3, 60, int(rng.integers(8, 20))).tolist()], 3, 32)
                for i in range(8)]
    sharded_params = jax.device_put(params, decoder.param_shardings(UNWINDOWED, mesh_1x8))
    generator = Generator(sharded, sharded_params)
    got = {(c.problem_id, c.sample_index): c for c in generator.generate(requests)}
    assert generator.stats.suspensions > 0
    alone = {(c.problem_id, c.sample_index): c
             for c in Generator(Engine(UNWINDOWED, config, sampling, 10_000), params).generate(requests)}
    assert got.keys() == alone.keys() and len(got) == 24
    for k in alone:
        assert got[k].tokens == alone[k].tokens, k
        np.testing.assert_allclose(got[k].logprobs, alone[k].logprobs, atol=1e-5)
    prepared = sharded.prepare(sharded_params)
    table_bn = np.full((config.slots, config.pages_per_slot), config.pool_pages, np.int32)
    hlo = sharded._decode.lower(prepared, sharded.init_state(), table_bn).compile().as_text()  # noqa: SLF001
    calls = [line for line in hlo.splitlines() if 'custom_call_target="magjax_decode_attention' in line]
    assert calls and all(re.search(r"= \(?f32\[2,", line) for line in calls), calls
