"""The sampler's compiled functions: exactness against the full forward pass."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from magjax.models import decoder, preset
from magjax.rl.losses import token_logprobs
from magjax.sampling.engine import Engine, EngineConfig, SamplingConfig, inverse_cdf, sample_tokens, token_key
from magjax.sampling.generator import Generator, Request

CONFIG = preset("test").replace(sliding_window=12)
ENGINE = EngineConfig(slots=8, max_len=48, prompt_buckets=(8, 16, 32), chunk_steps=4)
NEVER = 10_000  # an EOS id the model cannot emit: lengths are set by max_new_tokens


def _params(config=CONFIG, seed=0):
    return decoder.init_params(config, jax.random.key(seed))


def _requests(n=4, samples=2, seed=0, max_new=(6, 20)):
    rng = np.random.default_rng(seed)
    return [Request(f"r{i}", [1, *rng.integers(3, 60, int(rng.integers(2, 14))).tolist()], samples,
                    int(rng.integers(*max_new))) for i in range(n)]


def _by_key(completions):
    return {(c.problem_id, c.sample_index): c for c in completions}


def test_greedy_equals_argmax_of_the_full_forward_pass():
    params = _params()
    gen = Generator(Engine(CONFIG, ENGINE, SamplingConfig(temperature=0), NEVER), params)
    completions = gen.generate(_requests(n=3, samples=1))
    assert len({len(c.prompt_tokens) for c in completions}) == 3  # different prompt lengths in one batch
    forward = jax.jit(lambda p, t: decoder.forward(CONFIG, p, t))
    for c in completions:
        seq = list(c.prompt_tokens)
        for token in c.tokens:
            padded = np.zeros((1, ENGINE.max_len), np.int32)  # one shape: one compile
            padded[0, : len(seq)] = seq
            assert token == int(jnp.argmax(forward(params, padded)[0, len(seq) - 1]))
            seq.append(token)


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-5), ("bfloat16", None)])
def test_sampler_logprobs_equal_the_trainers(dtype, tol):
    config = CONFIG.replace(param_dtype=dtype, dtype=dtype)
    params = _params(config)
    gen = Generator(Engine(config, ENGINE, SamplingConfig(temperature=1.0), NEVER), params)
    gaps = []

    @jax.jit
    def trainer_logprobs(params, inputs, targets):  # causal: padding after a sequence cannot change it
        return token_logprobs(config, params, decoder.hidden_states(config, params, inputs), targets)[0]

    for c in gen.generate(_requests(n=3, samples=2, seed=1)):
        seq = np.zeros((1, ENGINE.max_len + 1), np.int32)
        n = len(c.prompt_tokens) + len(c.tokens)
        seq[0, :n] = c.prompt_tokens + c.tokens
        logp = trainer_logprobs(params, seq[:, :-1], seq[:, 1:])
        trainer = np.asarray(logp[0, len(c.prompt_tokens) - 1 : n - 1])
        gaps.append(np.abs(trainer - np.asarray(c.logprobs)).max())
    if tol is not None:
        assert max(gaps) < tol
    else:
        print(f"bfloat16 sampler-vs-trainer log-prob gap: max {max(gaps):.4f}")
        # Both sides upcast bfloat16 logits to float32 before the log-softmax; what differs is
        # the order of bfloat16 sums in the forward (cached decode vs full sequence): max
        # 0.0009-0.0013 nats over 4 parameter x 2 request seeds. A log-softmax left in
        # bfloat16 on either side gives 0.026 here; a wrong temperature or position far more.
        assert max(gaps) < 0.005


def test_same_seed_same_tokens_whatever_the_placement():
    params = _params()
    sampling = SamplingConfig(temperature=1.0, seed=3)
    requests = _requests(n=4, samples=2, seed=2)
    together = _by_key(Generator(Engine(CONFIG, ENGINE, sampling, NEVER), params).generate(requests))
    reversed_ = _by_key(Generator(Engine(CONFIG, ENGINE, sampling, NEVER), params).generate(requests[::-1]))
    few_slots = EngineConfig(slots=2, max_len=48, prompt_buckets=(8, 16, 32), chunk_steps=3)
    narrow = _by_key(Generator(Engine(CONFIG, few_slots, sampling, NEVER), params).generate(requests))
    alone = {}
    for r in requests:
        alone |= _by_key(Generator(Engine(CONFIG, ENGINE, sampling, NEVER), params).generate([r]))
    for other in (reversed_, narrow, alone):
        assert other.keys() == together.keys()
        for k in together:
            assert other[k].tokens == together[k].tokens
            np.testing.assert_allclose(other[k].logprobs, together[k].logprobs, atol=1e-5)
    # Samples of one group differ from each other (their streams are distinct).
    assert together[("r0", 0)].tokens != together[("r0", 1)].tokens


def test_sampling_filters():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 256))
    keys = token_key(0, jnp.arange(256), jnp.zeros(256, jnp.int32), jnp.zeros(256, jnp.int32))
    tok, logp = sample_tokens(logits, keys, top_k=2)
    assert set(np.asarray(tok).tolist()) == {0, 1}
    np.testing.assert_allclose(np.exp(logp[tok == 0]), 0.5 / 0.8, rtol=1e-5)
    tok, _ = sample_tokens(logits, keys, top_p=0.7)  # 0.5 + 0.3 reaches 0.7
    assert set(np.asarray(tok).tolist()) == {0, 1}
    tok, logp = sample_tokens(logits, keys, temperature=0)
    assert (np.asarray(tok) == 0).all()
    counts = np.bincount(np.asarray(sample_tokens(logits, keys)[0]), minlength=4) / 256
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.15, 0.05], atol=0.1)


def test_each_row_samples_with_its_own_settings():
    """Greedy, top-k, top-p and plain rows in one call: each as it would be alone."""
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 256))
    keys = token_key(0, jnp.arange(256), jnp.zeros(256, jnp.int32), jnp.zeros(256, jnp.int32))
    settings = [dict(temperature=0.0), dict(top_k=2), dict(top_p=0.7), dict(temperature=0.5), dict()]
    kind_b = np.arange(256) % len(settings)
    per_row = {name: np.asarray([settings[k].get(name, default) for k in kind_b])
               for name, default in (("temperature", 1.0), ("top_p", 1.0), ("top_k", 0))}
    tok, logp = jax.jit(sample_tokens)(logits, keys, **per_row)
    for k, setting in enumerate(settings):
        alone_tok, alone_logp = sample_tokens(logits, keys, **setting)
        rows = kind_b == k
        np.testing.assert_array_equal(np.asarray(tok)[rows], np.asarray(alone_tok)[rows], err_msg=str(setting))
        np.testing.assert_allclose(np.asarray(logp)[rows], np.asarray(alone_logp)[rows], rtol=1e-6, atol=1e-7)
    assert (np.asarray(tok)[kind_b == 0] == 0).all()
    np.testing.assert_allclose(np.asarray(logp)[kind_b == 0], np.log(0.5), rtol=1e-6)  # greedy: the plain softmax
    assert set(np.asarray(tok)[kind_b == 1].tolist()) == {0, 1}


def test_the_two_level_draw_inverts_the_cdf_exactly():
    """Over a vocabulary of many blocks (and a partial last one), with zero-probability
    tokens (filtered ones) inside and at the block edges: the drawn index is the first whose
    running sum exceeds u * total, as NumPy finds it, and never a zero-probability token."""
    rng = np.random.default_rng(0)
    v = 1000  # 7 full blocks of 128 and a partial one
    weights = rng.random((64, v)).astype(np.float32) ** 8
    weights[:, rng.integers(0, v, 300)] = 0.0
    weights[:, 127:129] = 0.0
    u = np.concatenate([rng.random(60), [0.0, 0.5, 0.999999, np.nextafter(np.float32(1), 0)]]).astype(np.float32)
    token, total = jax.jit(inverse_cdf)(jnp.asarray(weights), jnp.asarray(u))
    cum = np.cumsum(weights.astype(np.float64), axis=1)
    np.testing.assert_allclose(np.asarray(total), cum[:, -1], rtol=1e-5)
    want = (cum <= (u * cum[:, -1])[:, None]).sum(1)
    token = np.asarray(token)
    assert (weights[np.arange(64), token] > 0).all()
    # float32 sums may move a draw that lies within rounding of a boundary to a neighbour
    assert (token == want).mean() > 0.95 and (np.abs(token - want) <= 3).all()
    # Drawn through sample_tokens, frequencies follow the weights across blocks.
    logits = jnp.log(jnp.asarray(np.tile([0.2] + [0.0] * 299 + [0.5] + [0.0] * 99 + [0.3], (512, 1)) + 1e-30))
    keys = token_key(1, jnp.arange(512), jnp.zeros(512, jnp.int32), jnp.zeros(512, jnp.int32))
    counts = np.bincount(np.asarray(sample_tokens(logits, keys)[0]), minlength=401) / 512
    np.testing.assert_allclose(counts[[0, 300, 400]], [0.2, 0.5, 0.3], atol=0.07)


def test_eos_and_stop_strings_end_a_sequence():
    params = _params()
    engine = Engine(CONFIG, ENGINE, SamplingConfig(temperature=0), NEVER)
    [probe] = Generator(engine, params).generate([Request("p", [1, 5, 6], 1, 12)])
    eos = probe.tokens[3]
    [c] = Generator(Engine(CONFIG, ENGINE, SamplingConfig(temperature=0), eos), params).generate(
        [Request("p", [1, 5, 6], 1, 12)])
    assert c.finish_reason == "eos" and c.tokens == probe.tokens[: probe.tokens.index(eos) + 1]
    decode = lambda ids: "".join(chr(65 + i % 26) for i in ids)  # noqa: E731
    stop = decode(probe.tokens[2:4])
    gen = Generator(engine, params, decode_text=decode, stop_strings=(stop,))
    [c] = gen.generate([Request("p", [1, 5, 6], 1, 12)])
    assert c.finish_reason == "stop" and stop in decode(c.tokens) and stop not in decode(c.tokens[:-1])
    assert probe.finish_reason == "length" and len(probe.tokens) == 12


def test_no_recompilation_over_fifty_chunks():
    params = _params()
    engine = Engine(CONFIG, EngineConfig(slots=8, max_len=48, prompt_buckets=(8, 16, 32), chunk_steps=2),
                    SamplingConfig(), NEVER)
    gen = Generator(engine, params)
    rng = np.random.default_rng(6)
    prompt = lambda lo, hi: [1, *rng.integers(3, 60, int(rng.integers(lo, hi))).tolist()]  # noqa: E731
    gen.generate([Request("w0", prompt(2, 7), 2, 4), Request("w1", prompt(9, 15), 2, 4)])  # warm-up: G=2, both buckets
    traces, chunks = dict(engine.traces), gen.stats.chunks
    # Prompt lengths vary across both buckets; completion lengths vary too.
    gen.generate([Request(f"x{i}", prompt(2, 15), 2, int(rng.integers(4, 12))) for i in range(60)])
    assert gen.stats.chunks - chunks >= 50
    assert engine.traces == traces


def test_requests_sampled_differently_share_one_engine_and_its_programs():
    """Sampling settings are values in the state, not constants of the programs: engines
    that differ only in them share one compilation, and one generator serving requests
    with their own settings gives each the tokens a dedicated engine gives it."""
    params = _params()
    greedy, hot = SamplingConfig(temperature=0), SamplingConfig(temperature=1.0, top_k=5, seed=9)
    nucleus = SamplingConfig(temperature=0.7, top_p=0.8, seed=2)
    requests = _requests(n=6, samples=2, seed=11)
    settings = [greedy, hot, nucleus]
    engine = Engine(CONFIG, ENGINE, SamplingConfig(), NEVER)
    mixed = _by_key(Generator(engine, params).generate(
        [dataclasses.replace(r, sampling=settings[i % 3]) for i, r in enumerate(requests)]))
    traces = dict(engine.traces)
    assert traces["prefill"] >= 2  # two prompt buckets: an engine compiling anew for one request would count 1
    for i, r in enumerate(requests):
        dedicated = Engine(CONFIG, ENGINE, settings[i % 3], NEVER)
        alone = _by_key(Generator(dedicated, params).generate([r]))
        for k in alone:
            assert mixed[k].tokens == alone[k].tokens, (settings[i % 3], k)
            np.testing.assert_allclose(mixed[k].logprobs, alone[k].logprobs, atol=1e-6)
        assert dedicated.traces == traces  # nothing compiled for another setting
    # The settings took effect: greedy samples of a prompt agree, sampled ones differ.
    assert mixed[("r0", 0)].tokens == mixed[("r0", 1)].tokens
    assert mixed[("r1", 0)].tokens != mixed[("r1", 1)].tokens


def test_sharded_sampler_gives_the_same_tokens(mesh_2x4):
    params = _params()
    sampling = SamplingConfig(temperature=1.0, seed=4)
    requests = _requests(n=3, samples=2, seed=7)
    plain = _by_key(Generator(Engine(CONFIG, ENGINE, sampling, NEVER), params).generate(requests))
    sharded_params = jax.device_put(params, decoder.param_shardings(CONFIG, mesh_2x4))
    engine = Engine(CONFIG, ENGINE, sampling, NEVER, mesh=mesh_2x4)
    sharded = _by_key(Generator(engine, sharded_params).generate(requests))
    assert engine.state_shardings().k_cache[0].spec != jax.sharding.PartitionSpec()
    for k in plain:
        assert sharded[k].tokens == plain[k].tokens
