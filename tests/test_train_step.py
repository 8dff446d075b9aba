import functools

import jax
import numpy as np
import pytest

from magjax.models import decoder, preset
from magjax.rl import batching, optimizer, train_step
from magjax.rl.losses import LossConfig
from magjax.types import Completion, ScoredGroup
from rollouts import random_groups, sample_groups

CONFIG = preset("test")
ADVANTAGE = batching.AdvantageConfig()  # Magistral's


def _setup(lr=1e-3, loss=LossConfig(), mesh=None, seed=0):
    params = decoder.init_params(CONFIG, jax.random.key(seed))
    opt, schedule = optimizer.make_optimizer(optimizer.OptimizerConfig(learning_rate=lr, weight_decay=0.0))
    if mesh is not None:
        params = jax.device_put(params, decoder.param_shardings(CONFIG, mesh))
    state = train_step.init_state(params, opt)
    shardings = train_step.state_shardings(state) if mesh is not None else None
    return state, train_step.make_train_step(CONFIG, loss, opt, schedule, mesh=mesh, shardings=shardings)


def _host(tree):
    return jax.tree.map(np.asarray, tree)


@pytest.mark.parametrize("rows, row_len", [(1, 16), (2, 24), (4, 16), (8, 64)])
def test_packed_accumulated_gradient_equals_unpacked(rows, row_len):
    groups = random_groups(3, 4, seed=7)
    loss = LossConfig()
    params = decoder.init_params(CONFIG, jax.random.key(1))
    grad = jax.jit(functools.partial(train_step.accumulate_gradients, CONFIG, loss))
    seqs = batching.minibatch_sequences(groups, ADVANTAGE)
    # Unpacked: one sequence per row, all rows in one microbatch.
    longest = max(s.slots for s in seqs)
    singles = [batching.pack([s], batching.PackingConfig(rows=1, row_len=longest))[0] for s in seqs]
    reference = jax.tree.map(lambda *xs: np.concatenate(xs, axis=1), *singles)
    assert reference.tokens_mbt.shape == (1, len(seqs), longest)
    packed, stats = batching.pack(seqs, batching.PackingConfig(rows=rows, row_len=row_len))
    loss_ref, g_ref, _ = grad(params, reference)
    loss_packed, g_packed, _ = grad(params, packed)
    np.testing.assert_allclose(loss_packed, loss_ref, atol=1e-6)
    for a, b in zip(jax.tree.leaves(g_packed), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_sharded_steps_match_unsharded_and_trace_once(mesh_1x8, mesh_2x4):
    pack = batching.PackingConfig(rows=8, row_len=64)
    batches = [batching.make_minibatches(random_groups(4, 4, seed=s), ADVANTAGE, pack)[0][0] for s in range(5)]
    assert len({b.tokens_mbt.shape for b in batches}) == 1
    results = []
    for mesh in (None, mesh_1x8, mesh_2x4):
        state, step = _setup(mesh=mesh)
        for batch in batches:
            state, metrics = step(state, batch)
        assert step.traces == 1
        assert int(state.step) == 5 and int(state.skipped) == 0
        results.append(_host(state.params))
    for other in results[1:]:
        for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(other)):
            np.testing.assert_allclose(a, b, atol=1e-5)


def test_nan_in_batch_skips_the_update_and_counts_it():
    state, step = _setup()
    (batch,), _ = batching.make_minibatches(random_groups(2, 4, seed=8), ADVANTAGE, batching.PackingConfig(8, 32))
    state, _ = step(state, batch)  # moments that are not zero, so an unchanged state means something
    before = _host((state.params, state.opt_state))
    bad = jax.tree.map(np.array, batch)
    i = np.argwhere(bad.weights_mbt > 0)[0]
    bad.old_logprobs_mbt[tuple(i)] = np.nan
    state, metrics = step(state, bad)
    assert int(state.skipped) == 1 and int(metrics["train/applied"]) == 0
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(_host((state.params, state.opt_state)))):
        np.testing.assert_array_equal(a, b)  # parameters and optimizer state (moments, count) as they were
    state, metrics = step(state, batch)  # a good batch afterwards is applied
    assert int(state.skipped) == 1 and int(metrics["train/applied"]) == 1 and int(state.step) == 3


def test_bfloat16_state_keeps_its_dtypes_through_steps():
    """bfloat16 weights (as on accelerators) take float32 gradients and updates; the state
    that comes out has the dtypes that went in, so the jitted step is traced once."""
    config = CONFIG.replace(param_dtype="bfloat16", dtype="bfloat16")
    opt, schedule = optimizer.make_optimizer(optimizer.OptimizerConfig(learning_rate=1e-2))
    state = train_step.init_state(decoder.init_params(config, jax.random.key(0)), opt)
    step = train_step.make_train_step(config, LossConfig(), opt, schedule)
    (batch,), _ = batching.make_minibatches(random_groups(2, 4, seed=3), ADVANTAGE, batching.PackingConfig(8, 32))
    dtypes = [x.dtype for x in jax.tree.leaves(state)]
    before = _host(state.params)
    for _ in range(2):
        state, metrics = step(state, batch)
    assert [x.dtype for x in jax.tree.leaves(state)] == dtypes and step.traces == 1
    assert int(metrics["train/applied"]) == 1 and int(state.skipped) == 0
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(_host(state.params))))


def test_kl_to_a_reference_starts_at_zero_and_pulls_back(mesh_2x4):
    """The optional k3 penalty to a frozen reference: zero (value and gradient) while the
    policy equals the reference, then positive and changing the update."""
    (batch,), _ = batching.make_minibatches(random_groups(2, 4, seed=5), ADVANTAGE, batching.PackingConfig(8, 32))
    opt, schedule = optimizer.make_optimizer(optimizer.OptimizerConfig(learning_rate=3e-2, weight_decay=0.0))
    params = decoder.init_params(CONFIG, jax.random.key(6))
    runs = {}
    for kl_coef in (0.0, 1.0):
        loss = LossConfig(kl_coef=kl_coef)
        state = train_step.init_state(params, opt, ref_params=params if kl_coef else None)
        step = train_step.make_train_step(CONFIG, loss, opt, schedule)
        history = []
        for _ in range(3):
            state, metrics = step(state, batch)
            history.append((_host(state.params), {k: float(v) for k, v in metrics.items()}))
        runs[kl_coef] = history
    (plain_1, _), (kl_1, m_1) = runs[0.0][0], runs[1.0][0]
    assert m_1["train/kl_to_reference"] == 0.0
    for a, b in zip(jax.tree.leaves(plain_1), jax.tree.leaves(kl_1)):
        np.testing.assert_allclose(a, b, atol=1e-6)  # the first update is the plain one
    assert runs[1.0][2][1]["train/kl_to_reference"] > 0
    assert any(not np.allclose(a, b, atol=1e-6)
               for a, b in zip(jax.tree.leaves(runs[0.0][2][0]), jax.tree.leaves(runs[1.0][2][0])))
    sharded = train_step.state_shardings(train_step.init_state(
        jax.device_put(params, decoder.param_shardings(CONFIG, mesh_2x4)), opt))
    with pytest.raises(ValueError, match="ref_params"):
        train_step.make_train_step(CONFIG, LossConfig(kl_coef=0.1), opt, schedule, mesh=mesh_2x4, shardings=sharded)


def test_grpo_raises_a_toy_reward():
    # Reward: the fraction of sampled tokens equal to TARGET; 8 prompts x G=8, 8 new tokens.
    target = 7
    state, step = _setup(lr=1e-2)
    pack = batching.PackingConfig(rows=16, row_len=16)
    prompts = [[1, 3 + i] for i in range(8)]
    key = jax.random.key(0)
    means = []
    for _ in range(30):
        key, sub = jax.random.split(key)
        groups = sample_groups(CONFIG, state.params, prompts, 8, 8, lambda t: float(np.mean(t == target)), sub)
        means.append(np.mean([g.rewards for g in groups]))
        batches, _ = batching.make_minibatches(groups, ADVANTAGE, pack)
        for batch in batches:
            state, metrics = step(state, batch)
    first, last = np.mean(means[:10]), np.mean(means[-10:])
    assert last > first + 0.2, (first, last)


def test_sft_fits_a_memorisable_set():
    loss_config = LossConfig(kind="sft")
    state, step = _setup(lr=1e-2, loss=loss_config)
    rng = np.random.default_rng(0)
    groups = [ScoredGroup(f"s{i}", [Completion(f"s{i}", 0, [1, 3 + i], rng.integers(3, 60, 10).tolist(),
                                               [0.0] * 10, [0] * 10)], [0.0]) for i in range(4)]
    (batch,), _ = batching.make_minibatches(groups, batching.SFT, batching.PackingConfig(4, 16))
    losses = []
    for _ in range(40):
        state, metrics = step(state, batch)
        losses.append(float(metrics["train/loss"]))
    assert losses[0] > 3.5 and losses[-1] < 0.25 * losses[0], losses[::8]


def test_the_magistral_step_reports_the_sampler_trainer_gap():
    """Without the decoupled objective the trainer's side of the gap is pi_theta: at the
    first step its mean |log pi - log mu| and k3 KL are the ratio's own statistics."""
    state, step = _setup()
    (batch,), _ = batching.make_minibatches(random_groups(2, 4, seed=4), ADVANTAGE, batching.PackingConfig(8, 32))
    _, metrics = step(state, batch)
    m = {k: float(v) for k, v in metrics.items()}
    assert m["mismatch/logprob_gap"] > 0.1  # random_groups' log-probs are not the model's
    assert m["mismatch/logprob_gap"] == pytest.approx(m["pipeline/logprob_gap"], rel=1e-6)
    assert m["mismatch/kl"] == pytest.approx(m["train/kl_to_sampler"], rel=1e-6)
    assert not any(k.startswith(("mismatch/truncated", "mismatch/masked", "mismatch/importance")) for k in m)


def test_optimizer_moments_are_sharded_like_their_parameters(mesh_2x4):
    """init_state places each AdamW moment as its parameter (FSDP x tensor parallel), not
    replicated on every device, and the counters replicated; the state's bytes per device
    are the parameters' share."""
    opt, _ = optimizer.make_optimizer(optimizer.OptimizerConfig(learning_rate=1e-3))
    params = jax.device_put(decoder.init_params(CONFIG, jax.random.key(0)), decoder.param_shardings(CONFIG, mesh_2x4))
    state = train_step.init_state(params, opt)
    param_specs = jax.tree.map(lambda x: x.sharding.spec, params)
    assert any(any(axis is not None for axis in spec) for spec in jax.tree.leaves(
        param_specs, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec)))
    adam = next(s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda s: hasattr(s, "mu")) if hasattr(s, "mu"))
    for moments in (adam.mu, adam.nu):
        moment_sh = jax.tree.map(lambda x: x.sharding, moments)
        param_sh = jax.tree.map(lambda x: x.sharding, params)
        for m_sh, p_sh, m, p in zip(jax.tree.leaves(moment_sh), jax.tree.leaves(param_sh),
                                    jax.tree.leaves(moments), jax.tree.leaves(params)):
            assert m_sh.is_equivalent_to(p_sh, m.ndim)
            assert m.addressable_shards[0].data.shape == p.addressable_shards[0].data.shape
    assert adam.count.sharding.is_fully_replicated
    # One step later (the state donated) the moments still lie as their parameters.
    _, schedule = optimizer.make_optimizer(optimizer.OptimizerConfig(learning_rate=1e-3))
    step = train_step.make_train_step(CONFIG, LossConfig(), opt, schedule, mesh=mesh_2x4,
                                      shardings=train_step.state_shardings(state))
    (batch,), _ = batching.make_minibatches(random_groups(2, 4, seed=3), ADVANTAGE, batching.PackingConfig(8, 32))
    new_state, _ = step(state, batch)
    adam = next(s for s in jax.tree.leaves(new_state.opt_state, is_leaf=lambda s: hasattr(s, "mu")) if hasattr(s, "mu"))
    for m, p in zip(jax.tree.leaves(adam.mu), jax.tree.leaves(new_state.params)):
        assert m.addressable_shards[0].data.shape == p.addressable_shards[0].data.shape


def test_chunked_logprobs_have_the_direct_gradient_and_never_hold_every_tokens_logits():
    """The loss's log-probs in token chunks (LossConfig.logprob_chunk): the same gradient
    as one chunk over the whole row, and no float32 [tokens, vocab] array for the whole
    microbatch anywhere in the forward or backward pass."""
    from magjax.rl.losses import token_logprobs

    config = preset("test").replace(vocab_size=512)
    params = decoder.init_params(config, jax.random.key(0))
    b, t = 2, 32
    tokens = np.random.default_rng(1).integers(0, config.vocab_size, (b, t)).astype(np.int32)
    targets = np.roll(tokens, -1, axis=1)

    def loss(params, chunk):
        h = decoder.hidden_states(config, params, tokens)
        logp, entropy = token_logprobs(config, params, h, targets, chunk)
        return (logp.sum() + 0.1 * entropy.sum())

    chunked = jax.jit(jax.grad(functools.partial(loss, chunk=8)))(params)
    direct = jax.jit(jax.grad(functools.partial(loss, chunk=t)))(params)
    for a, g in zip(jax.tree.leaves(chunked), jax.tree.leaves(direct)):
        np.testing.assert_allclose(a, g, rtol=1e-5, atol=1e-6)
    jaxpr = jax.make_jaxpr(jax.grad(functools.partial(loss, chunk=8)))(params)

    def sizes(jaxpr):
        for eqn in jaxpr.eqns:
            yield from (int(np.prod(v.aval.shape)) for v in eqn.outvars if hasattr(v.aval, "shape"))
            for p in eqn.params.values():
                for sub in p if isinstance(p, (list, tuple)) else [p]:
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        yield from sizes(inner)

    assert max(sizes(jaxpr.jaxpr)) < b * t * config.vocab_size
