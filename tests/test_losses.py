import jax
import jax.numpy as jnp
import numpy as np

from magjax.models import decoder, preset
from magjax.rl.losses import policy_objective, token_logprobs


def test_clipped_gradient_matches_numpy_per_token():
    rng = np.random.default_rng(0)
    n = 64
    old = -rng.random(n).astype(np.float32) * 3
    # Ratios spread across [0.5, 1.6]: inside and outside both sides of [0.8, 1.28].
    logp = (old + np.log(rng.uniform(0.5, 1.6, n))).astype(np.float32)
    adv = rng.normal(size=n).astype(np.float32)
    w = rng.uniform(0.1, 1.0, n).astype(np.float32)
    grad = jax.grad(lambda lp: policy_objective(lp, old, adv, w, 0.2, 0.28)[0])(jnp.asarray(logp))
    ratio = np.exp(logp.astype(np.float64) - old)
    clipped_side = ((adv > 0) & (ratio > 1.28)) | ((adv < 0) & (ratio < 0.8))
    # Plain policy gradient of -w * rho * A with respect to log pi is -w * rho * A.
    expected = np.where(clipped_side, 0.0, -w * ratio * adv)
    assert clipped_side.any() and (~clipped_side).any()
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-5, atol=1e-6)


def test_chunked_logprobs_equal_full_log_softmax_in_bfloat16():
    config = preset("test").replace(param_dtype="bfloat16", dtype="bfloat16")
    params = decoder.init_params(config, jax.random.key(0))
    tokens = np.random.default_rng(1).integers(0, config.vocab_size, (2, 12)).astype(np.int32)
    targets = np.roll(tokens, -1, axis=1)
    h = decoder.hidden_states(config, params, tokens)
    logp, entropy = token_logprobs(config, params, h, targets, chunk=4)
    assert logp.dtype == jnp.float32
    full = jax.nn.log_softmax(decoder.unembed(config, params, h).astype(jnp.float32))
    np.testing.assert_allclose(logp, np.take_along_axis(np.asarray(full), targets[..., None], -1)[..., 0], atol=1e-5)
    np.testing.assert_allclose(entropy, -(np.exp(full) * full).sum(-1), atol=1e-4)
