"""Test helpers: random scored groups, and a slow but obviously correct sampler."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from magjax.models import decoder
from magjax.types import Completion, ScoredGroup


def random_groups(n, G, *, seed=0, vocab=64, prompt_len=(2, 5), completion_len=(1, 9), rewards=None):
    rng = np.random.default_rng(seed)
    groups = []
    for i in range(n):
        p = list(rng.integers(3, vocab, int(rng.integers(*prompt_len))))
        comps = []
        for g in range(G):
            length = int(rng.integers(*completion_len))
            comps.append(Completion(f"p{i}", g, p, list(rng.integers(3, vocab, length)),
                                    list(-rng.random(length) * 4), [0] * length))
        r = list(rng.random(G)) if rewards is None else list(rewards[i])
        groups.append(ScoredGroup(f"p{i}", comps, r))
    return groups


@functools.partial(jax.jit, static_argnums=(0, 3))
def _sample(config, params, prompt_bt, new_tokens, key):
    b, p = prompt_bt.shape
    buf = jnp.concatenate([prompt_bt, jnp.zeros((b, new_tokens), jnp.int32)], axis=1)

    def body(carry, t):
        buf, key = carry
        key, sub = jax.random.split(key)
        logits = decoder.forward(config, params, buf)[:, p + t - 1].astype(jnp.float32)
        logp_v = jax.nn.log_softmax(logits)
        tok = jax.random.categorical(sub, logits)
        buf = buf.at[:, p + t].set(tok)
        return (buf, key), jnp.take_along_axis(logp_v, tok[:, None], -1)[:, 0]

    (buf, _), logp_tb = jax.lax.scan(body, (buf, key), jnp.arange(new_tokens))
    return buf[:, p:], logp_tb.T


def sample_groups(config, params, prompts, G, new_tokens, reward_fn, key):
    """Full-forward sampling (recomputes every prefix): G samples per prompt, scored."""
    prompt_bt = jnp.asarray(np.repeat(np.asarray(prompts, np.int32), G, axis=0))
    tokens, logp = _sample(config, params, prompt_bt, new_tokens, key)
    tokens, logp = np.asarray(tokens), np.asarray(logp)
    groups = []
    for i, prompt in enumerate(prompts):
        comps, rewards = [], []
        for g in range(G):
            row = i * G + g
            comps.append(Completion(f"p{i}", g, list(prompt), tokens[row].tolist(), logp[row].tolist(), [0] * new_tokens))
            rewards.append(reward_fn(tokens[row]))
        groups.append(ScoredGroup(f"p{i}", comps, rewards))
    return groups
