"""The accelerators' token-major decode cache: its blockwise attention against the
reference decode attention (``backends.xla.HeadMinor``) over the same writes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from magjax.backends import decode_blockwise, xla


@pytest.mark.parametrize("max_len, block", [(12, 4), (13, 5), (12, 64)])
def test_token_major_cache_attends_as_the_reference(max_len, block):
    """Prompt writes into two slots, one step's writes (one dropped: out of range), ranges
    that start late (a sliding window), end inside or at a block's edge, and a last block
    clamped back over positions an earlier block read."""
    slots, kv, h, e = 3, 2, 4, 8
    rng = np.random.default_rng(0)
    prompt_k, prompt_v = (jnp.asarray(x, jnp.float32) for x in rng.standard_normal((2, 1, 5, kv, e)))
    new_k, new_v = (jnp.asarray(x, jnp.float32) for x in rng.standard_normal((2, slots, 1, kv, e)))
    q = jnp.asarray(rng.standard_normal((slots, 1, h, e)), jnp.float32)
    lo, hi, at = jnp.array([0, 0, 2]), jnp.array([6, 1, max_len]), jnp.array([5, 0, max_len])
    outs = []
    for layout in (xla.HeadMinor(), decode_blockwise.TokenMajor(block)):
        k_shape, v_shape = layout.shapes(slots, kv, e, max_len)
        rand = lambda shape, seed: jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)  # noqa: E731
        # Earlier contents everywhere (slot 2's later positions are in its range).
        k0, v0 = rand((slots, kv, max_len, e), 1), rand((slots, kv, max_len, e), 2)
        if isinstance(layout, decode_blockwise.TokenMajor):
            k0, v0 = jnp.transpose(k0, (0, 2, 1, 3)), jnp.transpose(v0, (0, 2, 1, 3))
        assert k0.shape == k_shape and v0.shape == v_shape
        kc, vc = layout.write_prompt(k0, v0, jnp.array([0, 2]), prompt_k, prompt_v)
        o, kc, vc = jax.jit(layout.write_and_attend)(q, new_k, new_v, kc, vc, lo, hi, at)
        outs.append(np.asarray(o))
    assert decode_blockwise.TokenMajor().shapes(slots, kv, e, max_len)[0][-1] == e  # head dim minor
    assert np.abs(outs[1]).max() > 0
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5, atol=1e-5)


def test_blocks_past_every_range_are_not_read():
    """Positions past the furthest slot's range hold NaN: a block reading them would poison
    the output; nothing of it may reach the result."""
    slots, kv, h, e, s = 2, 1, 2, 4, 32
    rng = np.random.default_rng(3)
    k = np.full((slots, s, kv, e), np.nan, np.float32)
    v = np.full((slots, s, kv, e), np.nan, np.float32)
    k[:, :8], v[:, :8] = rng.standard_normal((2, slots, 8, kv, e))
    q = jnp.asarray(rng.standard_normal((slots, 1, h, e)), jnp.float32)
    lo, hi = jnp.array([0, 2]), jnp.array([8, 5])
    got = decode_blockwise.attend(q, jnp.asarray(k), jnp.asarray(v), lo, hi, block=8)
    mask = xla.range_mask(lo, hi, 8)
    want = xla.HeadMinor().write_and_attend(
        q, jnp.zeros((slots, 1, kv, e)), jnp.zeros((slots, 1, kv, e)), jnp.transpose(jnp.asarray(k[:, :8]), (0, 2, 1, 3)),
        jnp.transpose(jnp.asarray(v[:, :8]), (0, 2, 1, 3)), lo, hi, jnp.array([8, 8]))[0]
    assert mask.shape == (slots, 8)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
