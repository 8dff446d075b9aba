"""The decoupled old policy (truncated importance weights, sequence masking), its metrics,
and the trainer's log-probs at the sampler's temperature."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from magjax.models import decoder, preset
from magjax.rl import batching, mismatch, optimizer, train_step
from magjax.rl.losses import LossConfig, check_sampling_for_training, for_sampling, policy_objective, token_logprobs
from magjax.sampling.engine import Engine, EngineConfig, SamplingConfig
from magjax.sampling.generator import Generator, Request
from magjax.types import ScoredGroup
from rollouts import random_groups

CONFIG = preset("test")


@pytest.mark.parametrize("kwargs, message", [
    (dict(sequence_mask=(0.5, 2.0)), "needs decoupled_old_policy"),
    (dict(decoupled_old_policy=True, sequence_mask=(1.1, 2.0)), "sequence_mask"),
    (dict(decoupled_old_policy=True, sequence_mask=(0.5,)), "sequence_mask"),
    (dict(decoupled_old_policy=True, truncation_cap=0.5), "truncation_cap"),
    (dict(decoupled_old_policy=True, kind="sft"), "kind=.grpo. only"),
    (dict(temperature=0.0), "temperature"),
])
def test_loss_config_refuses_inconsistent_off_policy_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LossConfig(**kwargs)


def test_training_refuses_sampling_the_trainer_cannot_reproduce():
    for sampling, field in ((SamplingConfig(top_k=20), "top_k=20"), (SamplingConfig(top_p=0.95), "top_p=0.95"),
                            (SamplingConfig(temperature=0.0), "temperature=0.0")):
        with pytest.raises(ValueError, match=f"SamplingConfig.{field}"):
            check_sampling_for_training(sampling)
        with pytest.raises(ValueError, match=f"SamplingConfig.{field}"):
            for_sampling(LossConfig(), sampling)
    check_sampling_for_training(SamplingConfig(temperature=0.7))
    assert for_sampling(LossConfig(), SamplingConfig(temperature=0.7)).temperature == 0.7
    assert for_sampling(LossConfig(temperature=0.7), SamplingConfig(temperature=0.7)).temperature == 0.7
    with pytest.raises(ValueError, match="LossConfig.temperature=0.7 differs from SamplingConfig.temperature=0.9"):
        for_sampling(LossConfig(temperature=0.7), SamplingConfig(temperature=0.9))
    assert for_sampling(LossConfig(kind="sft"), SamplingConfig(top_p=0.9)) == LossConfig(kind="sft")


def test_correction_and_gap_by_hand():
    """Two packed rows. Row 0: sequence A (segment 1, a prompt position then 2 completion
    tokens), sequence B (segment 2, 2 completion tokens), one padding position. Row 1:
    sequence C (one prompt position, 4 completion tokens), one padding position.
    log(pi_old / mu) per completion token: A [0.1, 0.3], B [1.0, -0.2], C [-0.5, -0.5, -0.1, -0.3].
    Cap C = 2: only B's first token (e^1 = 2.718) is truncated, to weight 2.
    Geometric means: A e^0.2 = 1.221, B e^0.4 = 1.492, C e^-0.35 = 0.705; with [0.7, 1.3]
    only B is masked (1 of 3 sequences)."""
    seg = np.array([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 0]], np.int32)
    w = np.array([[0, .1, .1, .2, .2, 0], [0, .25, .25, .25, .25, 0]], np.float32)
    log_ratio = np.array([[0, .1, .3, 1.0, -.2, 0], [0, -.5, -.5, -.1, -.3, 0]], np.float32)
    mu = np.array([[0, -1.0, -2.0, -0.5, -3.0, 0], [0, -1.5, -0.7, -2.2, -0.9, 0]], np.float32)
    old = mu + log_ratio
    old[:, 0] = old[:, -1] = 100.0  # off-completion garbage: exp(100) would overflow float32
    mask = (w > 0).astype(np.float32)
    fix = jax.jit(functools.partial(mismatch.correction, cap=2.0, bounds=(0.7, 1.3)))(old, mu, mask, seg)
    e = np.exp
    expected_scale = np.array([[0, e(.1), e(.3), 0, 0, 0], [0, e(-.5), e(-.5), e(-.1), e(-.3), 0]])
    np.testing.assert_allclose(fix.scale_bt * mask, expected_scale, rtol=1e-6)  # w = 0 off completions
    assert np.isfinite(np.asarray(fix.scale_bt)).all()
    assert float(fix.stats["truncated"]) == 1.0
    assert float(fix.stats["seqs"]) == 3.0 and float(fix.stats["seqs_masked"]) == 1.0
    np.testing.assert_allclose(fix.stats["is_weight_sum"],
                               e(.1) + e(.3) + 2 + e(-.2) + 2 * e(-.5) + e(-.1) + e(-.3), rtol=1e-6)
    # Without masking B's tokens keep their (truncated) weights 2 and e^-0.2.
    plain = mismatch.correction(old, mu, mask, seg, 2.0, None)
    np.testing.assert_allclose(plain.scale_bt[0, 3:5], [2.0, e(-.2)], rtol=1e-6)
    assert "seqs" not in plain.stats
    # Tighter bounds [0.9, 1.1]: all three sequences fall outside.
    tight = mismatch.correction(old, mu, mask, seg, 2.0, (0.9, 1.1))
    assert float(tight.stats["seqs_masked"]) == 3.0 and not np.asarray(tight.scale_bt * mask).any()

    # The gap: sum |log pi - log mu| = 0.1+0.3+1+0.2+0.5+0.5+0.1+0.3 = 3.0 and k3 = sum(e^x - 1 - x).
    gap = mismatch.gap_stats(old, mu, mask)
    np.testing.assert_allclose(gap["sampler_gap_sum"], 3.0, rtol=1e-6)
    x = log_ratio[mask > 0].astype(np.float64)
    np.testing.assert_allclose(gap["sampler_kl_sum"], np.sum(np.exp(x) - 1 - x), rtol=1e-5)

    # Through the objective: at pi_theta = pi_old + delta, the gradient per token is
    # -w * scale * rho * A inside the clip range and 0 outside.
    adv = np.array([[0, 1, 1, -1, -1, 0], [0, .5, .5, .5, .5, 0]], np.float32)
    delta = np.array([[0, .05, .4, 0, 0, 0], [0, -.1, .1, .0, .02, 0]], np.float32)  # A's 2nd: rho 1.49 > 1.28
    logp = np.where(mask > 0, old + delta, 0.0).astype(np.float32)
    old_in = np.where(mask > 0, old, 0.0).astype(np.float32)
    grad = jax.grad(lambda lp: policy_objective(lp, old_in, adv, w, 0.2, 0.28, fix.scale_bt)[0])(jnp.asarray(logp))
    rho = np.exp(delta.astype(np.float64))
    clipped = ((adv > 0) & (rho > 1.28)) | ((adv < 0) & (rho < 0.8))
    np.testing.assert_allclose(grad, np.where(clipped, 0.0, -w * expected_scale * rho * adv), rtol=1e-5, atol=1e-7)
    assert clipped[0, 2] and grad[0, 1] != 0 and grad[0, 3] == 0  # B is masked


def _exact_sampler_batch(params, loss, groups, pack):
    """A batch whose sampler log-probs are exactly the trainer's under ``params``."""
    (batch,), _ = batching.make_minibatches(groups, batching.AdvantageConfig(), pack)
    mu_star = train_step.make_logprob_step(CONFIG, loss)(params, batch)
    return dataclasses.replace(batch, old_logprobs_mbt=np.asarray(mu_star))


def _sequences(batch):
    """(microbatch, row, segment) -> completion token positions, in order."""
    out = {}
    for i in zip(*np.nonzero(batch.weights_mbt > 0)):
        out.setdefault((i[0], i[1], int(batch.segment_ids_mbt[i])), []).append(i)
    return out


def test_decoupled_objective_corrects_a_perturbed_sampler():
    """The sampler's log-probs are moved on purpose: two sequences as a whole (+0.5 nats per
    token, geometric-mean ratio e^-0.5 = 0.61, below 0.8: masked), one token of two others
    (-3 nats: ratio e^3, truncated to C = 2) and one token of a fifth (+0.3 nats: weight
    e^-0.3). With the decoupled objective the gradient is exactly the one of the exact
    sampler's batch with those sequences dropped and those tokens reweighted (at
    pi_theta = pi_old every ratio is 1, so the policy gradient is -sum(w * scale * A * grad
    log pi)); the Magistral objective on the same batch is not."""
    params = decoder.init_params(CONFIG, jax.random.key(3))
    pack = batching.PackingConfig(rows=4, row_len=48)
    groups = random_groups(3, 4, seed=11, completion_len=(6, 12))
    decoupled = LossConfig(decoupled_old_policy=True, truncation_cap=2.0, sequence_mask=(0.8, 2.0))
    exact = _exact_sampler_batch(params, LossConfig(), groups, pack)
    seqs = list(_sequences(exact).values())
    assert len(seqs) == 12
    perturbed_mu, reference_w = np.array(exact.old_logprobs_mbt), np.array(exact.weights_mbt)
    for positions in seqs[:2]:  # masked
        for i in positions:
            perturbed_mu[i] += 0.5
            reference_w[i] = 0.0
    for positions in seqs[2:4]:  # one truncated token each; geometric mean e^(3/n) <= e^0.5 < 2
        perturbed_mu[positions[2]] -= 3.0
        reference_w[positions[2]] *= 2.0
    perturbed_mu[seqs[4][1]] += 0.3
    reference_w[seqs[4][1]] *= np.exp(-0.3)
    perturbed = dataclasses.replace(exact, old_logprobs_mbt=perturbed_mu)
    reference = dataclasses.replace(exact, weights_mbt=reference_w.astype(np.float32))

    compiled = {loss: jax.jit(functools.partial(train_step.accumulate_gradients, CONFIG, loss))
                for loss in (LossConfig(), decoupled)}
    grads = lambda loss, batch: compiled[loss](params, batch)  # noqa: E731
    logprob_step = train_step.make_logprob_step(CONFIG, decoupled)
    [corrected] = train_step.recompute_old_logprobs(logprob_step, params, [perturbed])
    np.testing.assert_array_equal(np.asarray(corrected.trainer_old_logprobs_mbt), exact.old_logprobs_mbt)
    _, g_ref, _ = grads(LossConfig(), reference)
    _, g_fixed, stats = grads(decoupled, corrected)
    _, g_naive, naive_stats = grads(LossConfig(), perturbed)
    assert float(stats["truncated"]) == 2 and float(stats["seqs_masked"]) == 2 and float(stats["seqs"]) == 12
    # The sampler-trainer gap, the same in both objectives here (pi_theta = pi_old):
    # sum |log pi - log mu| = 0.5 per token of the two shifted sequences + 3 + 3 + 0.3.
    gap = 0.5 * (len(seqs[0]) + len(seqs[1])) + 6.3
    for s in (stats, naive_stats):
        assert float(s["sampler_gap_sum"]) == pytest.approx(gap, abs=1e-4)
    worst_naive = 0.0
    for a, b, c in zip(jax.tree.leaves(g_fixed), jax.tree.leaves(g_ref), jax.tree.leaves(g_naive)):
        np.testing.assert_allclose(a, b, atol=1e-6)
        worst_naive = max(worst_naive, float(np.abs(np.asarray(c) - np.asarray(b)).max()))
    assert worst_naive > 1e-3  # without the correction the perturbation reaches the gradient

    # With an exact sampler the decoupled objective is the Magistral one.
    [exact_fixed] = train_step.recompute_old_logprobs(logprob_step, params, [exact])
    _, g_exact_decoupled, stats = grads(decoupled, exact_fixed)
    _, g_exact, _ = grads(LossConfig(), exact)
    assert float(stats["truncated"]) == 0 and float(stats["seqs_masked"]) == 0
    for a, b in zip(jax.tree.leaves(g_exact_decoupled), jax.tree.leaves(g_exact)):
        np.testing.assert_allclose(a, b, atol=1e-7)


def test_decoupled_train_step_sharded_recomputes_once_per_batch(mesh_2x4):
    """Two optimizer steps per collected batch on the 2x4 mesh and on one device: pi_old is
    recomputed once with the parameters at the batch's start, both minibatches are trained
    against it, the layouts agree, each function is traced once, and the metrics report
    the sampler-trainer gap. A batch without pi_old is refused."""
    loss = LossConfig(decoupled_old_policy=True, sequence_mask=(0.8, 1.25))
    pack = batching.PackingConfig(rows=8, row_len=32)
    params = decoder.init_params(CONFIG, jax.random.key(0))
    exact_logprobs = train_step.make_logprob_step(CONFIG, loss)
    rng = np.random.default_rng(0)
    collected = []  # per collected batch, its two minibatches
    for seed in (1, 2):
        batches, _ = batching.make_minibatches(random_groups(4, 4, seed=seed), batching.AdvantageConfig(), pack, n_minibatch=2)
        assert len(batches) == 2
        # A sampler that is the initial model plus noise (0.6 nats per token): some tokens
        # have pi_old / mu > 2 and some sequences a geometric mean outside [0.8, 1.25].
        noisy = []
        for b in batches:
            mu = np.asarray(exact_logprobs(params, b)) + rng.normal(0, 0.6, b.weights_mbt.shape) * (b.weights_mbt > 0)
            noisy.append(dataclasses.replace(b, old_logprobs_mbt=mu.astype(np.float32)))
        collected.append(noisy)
    with pytest.raises(ValueError, match="param_shardings"):
        train_step.make_logprob_step(CONFIG, loss, mesh=mesh_2x4)
    opt, schedule = optimizer.make_optimizer(optimizer.OptimizerConfig(learning_rate=1e-3, weight_decay=0.0))
    results = []
    for mesh in (None, mesh_2x4):
        p = params if mesh is None else jax.device_put(params, decoder.param_shardings(CONFIG, mesh))
        state = train_step.init_state(p, opt)
        shardings = train_step.state_shardings(state) if mesh is not None else None
        step = train_step.make_train_step(CONFIG, loss, opt, schedule, mesh=mesh, shardings=shardings)
        logprob_step = train_step.make_logprob_step(CONFIG, loss, mesh=mesh,
                                                    param_shardings=None if mesh is None else shardings.params)
        history = []
        for batches in collected:
            with pytest.raises(ValueError, match="recompute_old_logprobs"):
                step(state, batches[0])
            for batch in train_step.recompute_old_logprobs(logprob_step, state.params, batches):
                state, metrics = step(state, batch)
                history.append({k: float(v) for k, v in metrics.items()})
        assert step.traces == 1 and logprob_step._cache_size() == 1
        results.append((jax.tree.map(np.asarray, state.params), history))
    (plain_params, plain_hist), (mesh_params, mesh_hist) = results
    for a, b in zip(jax.tree.leaves(plain_params), jax.tree.leaves(mesh_params)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    for h, hm in zip(plain_hist, mesh_hist):
        assert h["train/applied"] == 1
        for k in ("mismatch/logprob_gap", "mismatch/kl", "mismatch/truncated_fraction",
                  "mismatch/masked_sequence_fraction", "train/ratio_mean"):
            assert h[k] == pytest.approx(hm[k], abs=1e-5), k
    first = plain_hist[0]
    # |N(0, 0.6)| has mean 0.48; P(noise < -log 2) = 12%.
    assert 0.3 < first["mismatch/logprob_gap"] < 0.7 and 0.03 < first["mismatch/truncated_fraction"] < 0.3
    assert 0 < first["mismatch/masked_sequence_fraction"] < 1 and first["mismatch/kl"] > 0
    # The first minibatch is trained at pi_theta = pi_old (ratio 1); the second against the
    # same pi_old after one update (ratio no longer 1): pi_old was not recomputed between.
    assert first["train/ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert abs(plain_hist[1]["train/ratio_mean"] - 1.0) > 1e-4
    assert plain_hist[2]["train/ratio_mean"] == pytest.approx(1.0, abs=1e-6)  # recomputed for the next batch


ENGINE_CONFIG = preset("test").replace(sliding_window=12)
ENGINE = EngineConfig(slots=8, max_len=48, prompt_buckets=(8, 16, 32), chunk_steps=4)
NEVER = 10_000  # an EOS id the model cannot emit


def test_trainer_logprobs_at_the_samplers_temperature():
    """The real sampler at temperature 0.7, float32: its recorded log-probs equal the
    trainer's at T = 0.7 to 1e-5, directly and through packing and the decoupled pi_old;
    without the temperature the trainer's differ (what the check guards)."""
    params = decoder.init_params(ENGINE_CONFIG, jax.random.key(0))
    sampling = SamplingConfig(temperature=0.7, seed=1)
    gen = Generator(Engine(ENGINE_CONFIG, ENGINE, sampling, NEVER), params)
    rng = np.random.default_rng(1)
    requests = [Request(f"r{i}", [1, *rng.integers(3, 60, int(rng.integers(2, 14))).tolist()], 2,
                        int(rng.integers(6, 20))) for i in range(3)]
    completions = gen.generate(requests)

    @functools.partial(jax.jit, static_argnums=3)
    def trainer_logprobs(params, inputs, targets, temperature):
        h = decoder.hidden_states(ENGINE_CONFIG, params, inputs)
        return token_logprobs(ENGINE_CONFIG, params, h, targets, temperature=temperature)[0]

    gaps = {0.7: [], 1.0: []}
    for c in completions:
        seq = np.zeros((1, ENGINE.max_len + 1), np.int32)
        n = len(c.prompt_tokens) + len(c.tokens)
        seq[0, :n] = c.prompt_tokens + c.tokens
        for t in gaps:
            trainer = np.asarray(trainer_logprobs(params, seq[:, :-1], seq[:, 1:], t)[0, len(c.prompt_tokens) - 1: n - 1])
            gaps[t].append(np.abs(trainer - np.asarray(c.logprobs)).max())
    assert max(gaps[0.7]) <= 1e-5, max(gaps[0.7])
    assert max(gaps[1.0]) > 0.05, max(gaps[1.0])

    # The training path: groups of the sampled completions, packed, pi_old recomputed at the
    # loss's temperature (set from the sampler's), then one decoupled step.
    loss = for_sampling(LossConfig(decoupled_old_policy=True, sequence_mask=(0.999, 1.001)), sampling)
    by_problem = {}
    for c in completions:
        by_problem.setdefault(c.problem_id, []).append(c)
    groups = [ScoredGroup(k, v, [float(i) for i in range(len(v))]) for k, v in sorted(by_problem.items())]
    (batch,), _ = batching.make_minibatches(groups, batching.AdvantageConfig(), batching.PackingConfig(rows=4, row_len=64))
    [batch] = train_step.recompute_old_logprobs(train_step.make_logprob_step(ENGINE_CONFIG, loss), params, [batch])
    on = batch.weights_mbt > 0
    assert np.abs(np.asarray(batch.trainer_old_logprobs_mbt)[on] - batch.old_logprobs_mbt[on]).max() <= 1e-5
    opt, schedule = optimizer.make_optimizer(optimizer.OptimizerConfig(learning_rate=1e-3))
    step = train_step.make_train_step(ENGINE_CONFIG, loss, opt, schedule)
    _, metrics = step(train_step.init_state(params, opt), batch)
    assert float(metrics["mismatch/logprob_gap"]) <= 1e-5 and float(metrics["mismatch/truncated_fraction"]) == 0
    assert float(metrics["mismatch/masked_sequence_fraction"]) == 0  # every geometric mean within 1e-3 of 1
