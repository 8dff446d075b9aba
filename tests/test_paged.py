"""The paged KV cache: the host's page book, and the paged engine against the dense one."""

import jax
import numpy as np
import pytest

from magjax.backends import paged
from magjax.models import decoder, preset
from magjax.sampling.engine import Engine, EngineConfig, SamplingConfig
from magjax.sampling.generator import Generator, Request
from magjax.sampling.pages import PagePool, PoolExhausted

CONFIG = preset("test").replace(sliding_window=12)
DENSE = EngineConfig(slots=8, max_len=48, prompt_buckets=(8, 16, 32), chunk_steps=4)
NEVER = 10_000  # an EOS id the model cannot emit


def _paged(page_size=4, pages=0, **kw):
    return EngineConfig(**{**DENSE.__dict__, "page_size": page_size, "pages": pages, **kw})


def _requests(n=5, samples=2, seed=0, max_new=(6, 30)):
    rng = np.random.default_rng(seed)
    return [Request(f"r{i}", [1, *rng.integers(3, 60, int(rng.integers(2, 17))).tolist()], samples,
                    int(rng.integers(*max_new))) for i in range(n)]


def _by_key(completions):
    return {(c.problem_id, c.sample_index): c for c in completions}


@pytest.fixture(scope="module")
def params():
    return decoder.init_params(CONFIG, jax.random.key(0))


@pytest.fixture(scope="module")
def dense_run(params):
    """The dense engine's completions of the shared workload: what every paged run must equal."""
    sampling = SamplingConfig(temperature=1.0, seed=5)
    return _by_key(Generator(Engine(CONFIG, DENSE, sampling, NEVER), params).generate(_requests()))


def _assert_same(got, want):
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].tokens == want[k].tokens, k
        np.testing.assert_allclose(got[k].logprobs, want[k].logprobs, atol=1e-5)


# ---------------------------------------------------------------------- the page book


def test_a_group_shares_its_prompts_full_pages_and_owns_the_rest():
    pool = PagePool(pages=20, page_size=4, slots=4, max_len=32)
    assert pool.admit([0, 1, 2], prompt_len=10, reach=14)  # 2 full prompt pages; own pages up to 14 positions
    shared = pool.held(0)[:2]
    assert pool.held(1)[:2] == shared == pool.held(2)[:2]
    own = [pool.held(s)[2:] for s in (0, 1, 2)]
    assert all(len(o) == 2 for o in own) and len({p for o in own for p in o}) == 6  # distinct
    assert pool.used == 2 + 3 * 2 == pool.group_need(10, 3, 14)
    pool.release(0)
    assert pool.used == 6  # the shared pages stay while samples 1 and 2 hold them
    pool.release(1), pool.release(2)
    assert pool.used == 0 and (pool.table_bn == pool.unused).all()


def test_growth_stops_at_an_empty_shard_and_pages_stay_in_their_shard():
    pool = PagePool(pages=12, page_size=4, slots=4, max_len=24, shards=2)
    assert pool.admit([2, 3], prompt_len=4, reach=8)  # shard 1: 1 shared + 2 own
    assert all(6 <= p < 12 for s in (2, 3) for p in pool.held(s))
    assert pool.grow(2, 16) and pool.free(1) == 1
    assert not pool.grow(3, 16) and len(pool.held(3)) == 3  # one more page taken, then none left
    assert pool.free(0) == 6  # shard 0 untouched
    assert not pool.admit([0, 1], prompt_len=4, reach=40) and pool.free(0) == 6  # nothing taken on refusal
    pool.release(2), pool.release(3)
    assert pool.admit([1, 2], prompt_len=8, reach=12)  # a group across both shards: a prompt copy in each
    assert pool.held(1)[:2] != pool.held(2)[:2] and pool.free(0) == pool.free(1) == 3


def test_a_pool_that_cannot_hold_one_sequence_is_refused():
    with pytest.raises(ValueError, match="cannot hold one sequence of max_len 64"):
        PagePool(pages=3, page_size=16, slots=2, max_len=64)
    with pytest.raises(ValueError, match="split evenly"):
        PagePool(pages=9, page_size=16, slots=2, max_len=64, shards=2)


# ---------------------------------------------------------------------- the attention


def test_work_list_attention_equals_the_dense_masked_attention():
    """Random pools, tables with shared pages, empty entries, windows (lo > 0), idle slots
    and GQA: the paged attention equals softmax over the gathered positions [lo, hi)."""
    rng = np.random.default_rng(0)
    b, h, kv, e, page, n, pages = 5, 4, 2, 8, 4, 6, 24
    k_pool, v_pool = (rng.standard_normal((pages, page, kv, e)).astype(np.float32) for _ in range(2))
    table = np.full((b, n), pages, np.int32)
    perm = rng.permutation(pages)
    table[:, :2] = perm[:2]  # a shared prompt
    for i in range(b):
        table[i, 2:5] = perm[2 + 3 * i: 5 + 3 * i]
    lo = np.array([0, 3, 9, 0, 5], np.int32)
    hi = np.array([19, 20, 12, 1, 5], np.int32)  # the last: an empty range
    q = rng.standard_normal((b, 1, h, e)).astype(np.float32)
    got = np.asarray(jax.jit(lambda *a: paged.attend(*a, block_positions=8))(q, k_pool, v_pool, table, lo, hi))
    for i in range(b):
        if hi[i] <= lo[i]:
            np.testing.assert_array_equal(got[i], 0)
            continue
        pos = np.arange(lo[i], hi[i])
        keys = k_pool[table[i, pos // page], pos % page]  # [s, kv, e]
        vals = v_pool[table[i, pos // page], pos % page]
        for head in range(h):
            s = keys[:, head // (h // kv)] @ q[i, 0, head] / np.sqrt(e)
            p = np.exp(s - s.max())
            np.testing.assert_allclose(got[i, 0, head], (p / p.sum()) @ vals[:, head // (h // kv)], atol=1e-5)


# ---------------------------------------------------------------------- the engine


@pytest.mark.parametrize("page_size, pages", [(4, 0), (8, 0), (16, 6)])
def test_paged_engine_equals_the_dense_one(params, dense_run, page_size, pages):
    """Same tokens and log-probs as the dense cache: roomy pools, and one so small
    (6 pages of 16 for 8 slots of up to 48 positions) that sequences are suspended to the
    host and resumed, and admissions wait for pages."""
    sampling = SamplingConfig(temperature=1.0, seed=5)
    gen = Generator(Engine(CONFIG, _paged(page_size, pages), sampling, NEVER), params)
    _assert_same(_by_key(gen.generate(_requests())), dense_run)
    assert gen.engine.implementations["decode_attention"] != "native" or gen.engine.ops.cache.paged
    assert gen.pool.used == 0  # every page returned
    if pages:
        assert gen.stats.suspensions > 0 and gen.stats.admissions_waiting_for_pages > 0


def test_prefill_writes_the_prompt_once_into_shared_pages(params):
    engine = Engine(CONFIG, _paged(4), SamplingConfig(temperature=0), NEVER)
    gen = Generator(engine, params)
    gen.submit([Request("p", [1, *range(3, 14)], 4, 8)])  # 12 prompt tokens: 3 full pages, shared
    gen._admit(engine.prepare(params), 0)  # noqa: SLF001  (admission alone: no decode chunk yet)
    assert gen.pool.used == 3 + 4 * 1  # (12 + 4 chunk steps) positions: one own page each
    k_pool = np.asarray(gen.state.k_cache[0])
    shared = gen.pool.held(0)[:3]
    assert all(gen.pool.held(s)[:3] == shared for s in range(4))
    assert np.abs(k_pool[shared]).sum() > 0


def test_greedy_paged_equals_the_full_forward_argmax(params):
    gen = Generator(Engine(CONFIG, _paged(4, pages=24), SamplingConfig(temperature=0), NEVER), params)
    completions = gen.generate(_requests(n=3, samples=1, seed=3))
    forward = jax.jit(lambda p, t: decoder.forward(CONFIG, p, t))
    for c in completions:
        seq = list(c.prompt_tokens)
        for token in c.tokens:
            padded = np.zeros((1, DENSE.max_len), np.int32)
            padded[0, : len(seq)] = seq
            assert token == int(np.argmax(forward(params, padded)[0, len(seq) - 1]))
            seq.append(token)


def test_same_uid_same_tokens_whatever_the_page_layout(params):
    sampling = SamplingConfig(temperature=1.0, seed=9)
    requests = _requests(n=4, samples=2, seed=4)
    runs = [_by_key(Generator(Engine(CONFIG, config, sampling, NEVER), params).generate(reqs))
            for config, reqs in ((_paged(4), requests), (_paged(8, pages=12), requests[::-1]),
                                 (_paged(4, slots=2), requests))]
    for other in runs[1:]:
        _assert_same(other, runs[0])


def test_in_flight_weights_reach_a_paged_engine_as_a_dense_one(params):
    """New weights between decode chunks, the cache kept: the paged engine's tokens and
    version tags equal the dense engine's under the same switch."""
    other = decoder.init_params(CONFIG, jax.random.key(1))
    sampling = SamplingConfig(temperature=1.0, seed=2)
    results = []
    for config in (DENSE, _paged(4)):  # a roomy pool: the same chunks run at the same times
        gen = Generator(Engine(CONFIG, config, sampling, NEVER), params)
        gen.submit(_requests(n=3, samples=2, seed=5, max_new=(20, 30)))
        done = gen.step() + gen.step()
        gen.set_weights(other, 1)
        while gen.pending or gen.in_flight:
            done += gen.step()
        results.append(_by_key(done))
    _assert_same(results[1], results[0])
    mixed = [c for c in results[1].values() if len(set(c.versions)) == 2]
    assert mixed  # sequences that began on version 0 and ended on version 1


def test_no_recompilation_after_warm_up_with_suspensions(params):
    engine = Engine(CONFIG, _paged(8, pages=8, chunk_steps=2), SamplingConfig(), NEVER)
    gen = Generator(engine, params)
    rng = np.random.default_rng(6)
    prompt = lambda lo, hi: [1, *rng.integers(3, 60, int(rng.integers(lo, hi))).tolist()]  # noqa: E731
    gen.generate([Request("w0", prompt(2, 7), 2, 40), Request("w1", prompt(9, 15), 2, 30)])
    traces = dict(engine.traces)
    gen.generate([Request(f"x{i}", prompt(2, 15), 2, int(rng.integers(4, 30))) for i in range(12)])
    assert gen.stats.suspensions > 0
    assert engine.traces == traces


def test_sharded_paged_engine_keeps_pages_in_their_shard(params, dense_run, mesh_2x4):
    sampling = SamplingConfig(temperature=1.0, seed=5)
    engine = Engine(CONFIG, _paged(4, pages=40), sampling, NEVER, mesh=mesh_2x4)
    assert engine.page_shards == 2  # slots and pages split over the two fsdp shards
    gen = Generator(engine, jax.device_put(params, decoder.param_shardings(CONFIG, mesh_2x4)))
    _assert_same(_by_key(gen.generate(_requests())), dense_run)
    spec = engine.state_shardings().k_cache[0].spec
    assert spec[0] == "fsdp"  # pages over the data axes (2 kv heads do not split 4 ways over model)


def test_a_request_that_can_never_fit_is_refused_at_submission(params):
    gen = Generator(Engine(CONFIG, _paged(16, pages=3), SamplingConfig(), NEVER), params)
    with pytest.raises(PoolExhausted, match="request big: a prompt of 30 tokens and 2 samples on one shard need 5 "
                                            "pages of 16 to start, more than the 3"):
        gen.submit([Request("big", [1] * 30, 2, 10)])  # 1 shared page + 2 own each
    with pytest.raises(ValueError, match="needs the page table"):
        gen.engine.decode(gen.engine.prepare(params), gen.state)


def test_a_sliding_window_returns_the_pages_it_has_passed(params):
    """Window 12, pages of 4, chunks of 4: a 44-token sequence never holds more than the
    pages its window and one chunk span, and its tokens equal the dense engine's."""
    sampling = SamplingConfig(temperature=1.0, seed=1)
    request = Request("long", [1, 7, 9], 1, 44)
    [want] = Generator(Engine(CONFIG, DENSE, sampling, NEVER), params).generate([request])
    gen = Generator(Engine(CONFIG, _paged(4), sampling, NEVER), params)
    gen.submit([request])
    peak, done = 0, []
    while gen.pending or gen.in_flight:
        done += gen.step()
        peak = max(peak, gen.pool.used)
    assert done[0].tokens == want.tokens and len(want.tokens) == 44
    assert peak <= -(-(12 + 4) // 4) + 1 < 47 // 4  # the window's pages, the chunk's, one partial


def test_an_async_run_on_a_small_page_pool_loses_nothing(sft_params):
    """The RL loop on a paged engine whose pool holds under half its slots' worst case:
    a pool too small for one group is refused before generating; on a workable one the
    pool limits admissions (and may suspend sequences across weight versions), and every
    finished completion still lands in exactly one accounting bucket."""
    from loop_runs import ENGINE, _check_accounting, _run

    small = EngineConfig(**{**ENGINE.__dict__, "page_size": 8, "pages": 64})  # 8 pages per shard
    with pytest.raises(PoolExhausted, match="groups of 8: a prompt of 31 tokens and 4 samples on one "
                                            "shard need 11 pages of 8 to start"):
        _run(sft_params, mode="async", steps=1, engine=small)
    engine = EngineConfig(**{**ENGINE.__dict__, "page_size": 8, "pages": 96})  # 12 per shard, of 32 at worst
    result = _run(sft_params, mode="async", steps=4, n_batch=32, n_async=32, queue_groups=4, engine=engine)
    _check_accounting(result)
    h = result.history
    # The pool, not the slots, limited the run: admissions waited for pages or sequences
    # were suspended (completions of the learned task often end early).
    assert sum(r["rollout/suspensions"] + r["rollout/admissions_waiting_for_pages"] for r in h) > 0
    assert 0.5 < max(r["rollout/kv_pages_peak_fraction"] for r in h) <= 1.0
