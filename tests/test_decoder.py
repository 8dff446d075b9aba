import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from magjax.models import PRESETS, Decoder, decoder, forward, preset

# Published parameter counts (Hugging Face model cards / safetensors totals).
PUBLISHED = {
    "tiny": 4.07e6, "small": 187e6,
    "mistral-7b": 7.25e9, "mistral-small-3.1-24b": 23.57e9, "magistral-small": 23.57e9,
    "llama-3.1-8b": 8.03e9, "qwen2.5-7b": 7.62e9, "qwen3-8b": 8.19e9,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_parameter_counts_match_published(name):
    config = PRESETS[name]
    shapes = jax.eval_shape(functools.partial(decoder.init_params, config), jax.random.key(0))
    count = sum(np.prod(x.shape) for x in jax.tree.leaves(shapes))
    assert count == config.num_params()
    assert abs(count - PUBLISHED[name]) / PUBLISHED[name] < 0.01


def test_every_parameter_carries_logical_axes():
    model = Decoder(preset("test"), rngs=nnx.Rngs(0))
    for path, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param):
            assert len(var.get_metadata()["axes"]) == var[...].ndim, path


def _inputs(config, b=4, t=16, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, config.vocab_size, (b, t)).astype(np.int32)
    # Two packed sequences per row, positions restarting at each.
    segments = np.where(np.arange(t) < t // 2 + 1, 1, 2).astype(np.int32)[None].repeat(b, 0)
    positions = np.concatenate([np.arange(t // 2 + 1), np.arange(t - t // 2 - 1)]).astype(np.int32)[None].repeat(b, 0)
    return tokens, positions, segments


def test_sharded_logits_equal_unsharded(mesh_1x8, mesh_2x4):
    config = preset("test").replace(num_heads=8, num_kv_heads=4, sliding_window=6)
    params = decoder.init_params(config, jax.random.key(1))
    tokens, positions, segments = _inputs(config, b=8)
    ref = np.asarray(jax.jit(functools.partial(forward, config))(params, tokens, positions, segments))
    for mesh in (mesh_1x8, mesh_2x4):
        shardings = decoder.param_shardings(config, mesh)
        sharded = jax.device_put(params, shardings)
        batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
        fn = jax.jit(functools.partial(forward, config, mesh=mesh), in_shardings=(shardings, batch, batch, batch))
        out = fn(sharded, tokens, positions, segments)
        np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5, rtol=1e-5)


def test_packed_sequences_do_not_see_each_other():
    config = preset("test")
    params = decoder.init_params(config, jax.random.key(2))
    tokens, positions, segments = _inputs(config, b=1, t=12)
    packed = forward(config, params, tokens, positions, segments)
    first = forward(config, params, tokens[:, :7])
    second = forward(config, params, tokens[:, 7:])
    np.testing.assert_allclose(packed[:, :7], first, atol=1e-5)
    np.testing.assert_allclose(packed[:, 7:], second, atol=1e-5)


def test_sliding_window_limits_attention():
    config = preset("test").replace(sliding_window=3)
    params = decoder.init_params(config, jax.random.key(3))
    tokens = np.arange(10, dtype=np.int32)[None] % config.vocab_size
    changed = tokens.copy()
    changed[0, 0] = (changed[0, 0] + 1) % config.vocab_size
    a, b = forward(config, params, tokens), forward(config, params, changed)
    # With one layer of reach 3 per layer and 2 layers, position 0 reaches up to position 4.
    assert not np.allclose(a[0, 4], b[0, 4])
    np.testing.assert_allclose(a[0, 5:], b[0, 5:], atol=1e-6)


def test_remat_unrolled_and_bfloat16_paths():
    config = preset("test")
    params = decoder.init_params(config, jax.random.key(4))
    tokens = _inputs(config)[0]
    loss = lambda c, p: jnp.mean(forward(c, p, tokens).astype(jnp.float32) ** 2)  # noqa: E731
    g_plain = jax.grad(functools.partial(loss, config))(params)
    looped = config.replace(scan_unroll=config.num_layers)  # a plain loop over the layers
    for variant in (config.replace(remat=True), looped):
        g_variant = jax.grad(functools.partial(loss, variant))(params)
        for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_variant)):
            np.testing.assert_allclose(a, b, atol=1e-6)
    scanned_kv, looped_kv = (jax.jit(lambda p, c=c: decoder.hidden_states(c, p, tokens, return_kv=True)[1])(params)
                             for c in (config, looped))
    for a, b in zip(jax.tree.leaves(scanned_kv), jax.tree.leaves(looped_kv)):
        assert a.shape == b.shape and a.shape[0] == config.num_layers
        np.testing.assert_allclose(a, b, atol=1e-6)
    bf16 = config.replace(param_dtype="bfloat16", dtype="bfloat16")
    logits = forward(bf16, decoder.init_params(bf16, jax.random.key(4)), tokens)
    assert logits.dtype == jnp.bfloat16 and bool(jnp.isfinite(logits.astype(jnp.float32)).all())


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="num_heads .* multiple of num_kv_heads"):
        preset("test").replace(num_heads=3)
    with pytest.raises(ValueError, match="param_dtype"):
        preset("test").replace(param_dtype="float8")
    with pytest.raises(ValueError, match="unknown model preset"):
        preset("gpt-5")


def test_every_rematerialisation_choice_gives_the_same_gradient():
    """none, per layer, save-matmuls and host offload: equal gradients (jitted); offload
    really moves the kept products to host memory; an unknown choice is refused by name."""
    config = preset("test")
    params = decoder.init_params(config, jax.random.key(5))
    tokens = _inputs(config)[0]

    def grad_fn(c):
        return jax.jit(jax.grad(lambda p: jnp.mean(forward(c, p, tokens) ** 2)))

    plain = grad_fn(config.replace(remat=False))(params)
    for choice in ("layer", "save_matmuls", "offload"):
        got = grad_fn(config.replace(remat=choice))(params)
        for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(got)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=choice)
    offload = jax.grad(lambda p: jnp.mean(forward(config.replace(remat="offload"), p, tokens) ** 2))
    assert "MemorySpace.Host" in str(jax.make_jaxpr(offload)(params))  # the kept products go to the host
    with pytest.raises(ValueError, match="ModelConfig.remat must be one of"):
        config.replace(remat="everything")
