"""magjax's native CPU kernels: exact against NumPy, used by the sampler, optional everywhere."""

import dataclasses
import functools
import os
import re
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from magjax import backends, build_cache
from magjax.backends import race
from magjax.kernels import backend, causal_attention, decode_attention, native, panels
from magjax.models import decoder, preset
from magjax.rl import batching, optimizer, train_step
from magjax.rl.losses import LossConfig, token_logprobs
from magjax.sampling.engine import Engine, EngineConfig, SamplingConfig
from magjax.sampling.generator import Generator, Request
from rollouts import random_groups

HAS_COMPILER = any(shutil.which(c) for c in ("c++", "g++", "clang++"))
needs_kernels = pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler: the native kernels cannot be built")


@needs_kernels
def test_the_kernels_build_where_a_compiler_exists():
    assert native.load(), "a C++ compiler is present, yet the native kernels did not build (see the log)"


# (rows, input shape, output shape): one row and many; K across block edges; N not a
# multiple of the panel width; two input dims (the attention output projection); and
# 16 x 256 x 1024, above the size where the work is split between threads.
PRODUCTS = [(1, (64,), (48,)), (5, (300,), (50,)), (16, (256,), (1024,)), (17, (64,), (33,)),
            (40, (128,), (16,)), (3, (4, 16), (24,)), (16, (1024,), (4096,))]


@needs_kernels
@pytest.mark.parametrize("m, in_shape, out_shape", PRODUCTS)
def test_panel_product_equals_numpy(m, in_shape, out_shape):
    assert native.load()
    rng = np.random.default_rng(m)
    x = rng.standard_normal((2, m, *in_shape)).astype(np.float32)  # two lead dims flatten to rows
    w = rng.standard_normal((*in_shape, *out_shape)).astype(np.float32)
    packed = jax.jit(lambda w: panels.pack(w, len(in_shape)))(w)
    assert packed.panels_pkc.shape == (-(-np.prod(out_shape) // 16), np.prod(in_shape), 16)
    got = np.asarray(jax.jit(panels.dense)(x, packed))
    want = np.tensordot(x.astype(np.float64), w.astype(np.float64), axes=len(in_shape))
    assert got.shape == (2, m, *out_shape)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_packing_rejects_what_the_kernel_cannot_take():
    with pytest.raises(TypeError, match="float32"):
        panels.pack(jnp.zeros((4, 4), jnp.bfloat16))
    packed = panels.pack(jnp.zeros((8, 4), jnp.float32))
    with pytest.raises(ValueError, match="input shape"):
        panels.dense(jnp.zeros((2, 6), jnp.float32), packed)
    with pytest.raises(ValueError, match="multiple of 16"):
        decode_attention.write_and_attend(jnp.zeros((1, 1, 1, 8)), *(jnp.zeros((1, 1, 8)),) * 2,
                                          jnp.zeros((1, 1, 8, 4)), jnp.zeros((1, 1, 4, 8)), *(jnp.zeros(1, jnp.int32),) * 3)


def _attention_reference(q, k, v, lo, hi):
    """NumPy, float64: softmax over positions [lo, hi) of each slot; zeros for none."""
    b, kv, g, e = q.shape
    out = np.zeros((b, kv, g, e))
    for i in range(b):
        if hi[i] <= lo[i]:
            continue
        scores = np.einsum("kge,kes->kgs", q[i], k[i][:, :, lo[i]:hi[i]]) / np.sqrt(e)
        p = np.exp(scores - scores.max(-1, keepdims=True))
        out[i] = np.einsum("kgs,kse->kge", p / p.sum(-1, keepdims=True), v[i][:, lo[i]:hi[i]])
    return out


# (slots, kv heads, query heads per kv head, head dim, cache length): the small benchmark
# shape (threaded), odd group sizes, a long head dim, ranges shorter than a score block.
ATTENTION = [(16, 4, 4, 64, 257), (3, 2, 3, 16, 40), (5, 1, 7, 32, 100), (2, 2, 1, 128, 300)]


@needs_kernels
@pytest.mark.parametrize("b, kv, g, e, s", ATTENTION)
def test_decode_attention_writes_the_cache_and_equals_numpy(b, kv, g, e, s):
    assert native.load()
    rng = np.random.default_rng(s)
    q = rng.standard_normal((b, kv, g, e)).astype(np.float32)
    k_new, v_new = rng.standard_normal((2, b, kv, e)).astype(np.float32)
    k = rng.standard_normal((b, kv, e, s)).astype(np.float32)
    v = rng.standard_normal((b, kv, s, e)).astype(np.float32)
    hi = rng.integers(1, s + 1, b).astype(np.int32)
    hi[0] = s  # the whole cache
    lo = np.maximum(0, hi - rng.integers(1, 70, b)).astype(np.int32)  # sliding windows, some 1 wide
    lo[-1] = hi[-1]  # an empty range (a free slot): zeros
    at = (hi - 1).astype(np.int32)  # each slot writes the last position it reads
    at[1 % b] = s  # out of range: a finished slot writes nothing
    want_k, want_v = k.copy(), v.copy()
    for i in range(b):
        if at[i] < s:
            want_k[i, :, :, at[i]], want_v[i, :, at[i]] = k_new[i], v_new[i]
    # Donated caches, as in the decode loop: XLA aliases them to the outputs.
    call = jax.jit(decode_attention.write_and_attend, donate_argnums=(3, 4))
    out, k2, v2 = call(q, k_new, v_new, jnp.asarray(k), jnp.asarray(v), lo, hi, at)
    np.testing.assert_array_equal(np.asarray(k2), want_k)
    np.testing.assert_array_equal(np.asarray(v2), want_v)
    np.testing.assert_allclose(np.asarray(out), _attention_reference(q, want_k, want_v, lo, hi), rtol=2e-5, atol=2e-6)
    assert not np.asarray(out)[-1].any()
    # Not donated: XLA copies the caches first and the inputs stay as they were.
    k_in = jnp.asarray(k)
    _, k3, _ = jax.jit(decode_attention.write_and_attend)(q, k_new, v_new, k_in, jnp.asarray(v), lo, hi, at)
    np.testing.assert_array_equal(np.asarray(k3), want_k)
    np.testing.assert_array_equal(np.asarray(k_in), k)


def _rotate(x, cos, sin, sign=1):
    """Rotate-half rotary embedding of x [b, t, heads, e] (sign -1: its transpose)."""
    half = x.shape[-1] // 2
    c, s = cos[:, :, None], sign * sin[:, :, None]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1)


def _causal_reference(q, k, v, segments, positions, cos, sin, window, do):
    """NumPy, float64: rotary embedding, attention under decoder.attention_mask's rule, and
    the gradients (dV = P^T dO; dS = P (dP - rowsum(dO O)); dQ = dS K / sqrt(e);
    dK = dS^T Q / sqrt(e); rotated back to the unrotated inputs)."""
    b, t, h, e = q.shape
    q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
    g = h // k.shape[2]
    k, v = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)  # query head j reads kv head j // g
    idx = np.arange(t)
    visible = (idx[:, None] >= idx[None, :]) & (segments[:, :, None] == segments[:, None, :])
    if window:
        visible &= positions[:, :, None] - positions[:, None, :] < window
    s = np.einsum("bqhe,bkhe->bhqk", q, k) / np.sqrt(e)
    s = np.where(visible[:, None], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = np.einsum("bhqk,bkhe->bqhe", p, v)
    dv = np.einsum("bhqk,bqhe->bkhe", p, do)
    dp = np.einsum("bqhe,bkhe->bhqk", do, v)
    ds = p * (dp - np.einsum("bqhe,bqhe->bhq", do, o)[..., None])
    dq = np.einsum("bhqk,bkhe->bqhe", ds, k) / np.sqrt(e)
    dk = np.einsum("bhqk,bqhe->bkhe", ds, q) / np.sqrt(e)
    fold = lambda x: x.reshape(b, t, h // g, g, e).sum(3)  # noqa: E731  (kv heads sum their query heads)
    return o, _rotate(dq, cos, sin, -1), _rotate(fold(dk), cos, sin, -1), fold(dv)


def _segments(kind, b, t, rng):
    if kind == "one":
        return np.zeros((b, t), np.int32)
    if kind == "packed":  # sequences of 1 to 30 tokens back to back, as batching.pack lays them out
        return np.stack([np.repeat(np.arange(t), rng.integers(1, 31, t))[:t] for _ in range(b)]).astype(np.int32)
    # A segment id that comes back after another one: visible again, as the mask says.
    seg = np.zeros((b, t), np.int32)
    seg[:, t // 4: t // 2] = 1
    return seg


# (batch, length, query heads, kv heads, head dim, window, segments): grouped queries with
# a length off the vector width; a window; packed rows with a head dim of 5 vectors; more
# query heads per kv head than a row block holds; one row, below the threading size.
CAUSAL = [(2, 37, 4, 2, 64, 0, "one"), (3, 50, 4, 4, 32, 7, "one"), (2, 70, 6, 2, 80, 0, "packed"),
          (1, 40, 48, 1, 16, 0, "recurring"), (1, 8, 2, 1, 16, 0, "one"), (2, 130, 8, 2, 32, 40, "packed")]


@needs_kernels
@pytest.mark.parametrize("b, t, h, kv, e, window, segments", CAUSAL)
def test_causal_attention_and_its_gradients_equal_numpy(b, t, h, kv, e, window, segments):
    assert native.load()
    rng = np.random.default_rng(t)
    q, do = rng.standard_normal((2, b, t, h, e)).astype(np.float32)
    k, v = rng.standard_normal((2, b, t, kv, e)).astype(np.float32)
    seg = _segments(segments, b, t, rng)
    pos = np.stack([np.arange(t) - np.searchsorted(s, s) for s in seg]).astype(np.int32)  # restart per segment
    inv_freq = decoder.rope_inv_freq(preset("test").replace(head_dim=e, rope_theta=100.0))  # turns a lot
    cos, sin = (np.asarray(x) for x in decoder.rotary_tables(pos, inv_freq))
    f64 = lambda x: x.astype(np.float64)  # noqa: E731
    want = _causal_reference(*map(f64, (q, k, v)), seg, pos, *map(f64, (cos, sin)), window, f64(do))

    def loss(q, k, v):
        o = causal_attention.attend(q, k, v, seg, pos, cos, sin, window)
        return jnp.sum(o * do), o

    (dq, dk, dv), o = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    for name, got, ref in zip(("out", "dq", "dk", "dv"), (o, dq, dk, dv), want):
        np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4, atol=2e-5 * np.abs(ref).max(), err_msg=name)


def test_native_attention_rejects_an_odd_head_dim_and_stays_off_where_it_does_not_apply(mesh_2x4):
    with pytest.raises(ValueError, match="multiple of 16"):
        causal_attention.attend(*(jnp.zeros((1, 4, 2, 8)),) * 3, *(jnp.zeros((1, 4), jnp.int32),) * 2,
                                *(jnp.zeros((1, 4, 4)),) * 2)
    config = preset("test").replace(head_dim=16)
    assert backends.cpu_kernels(mesh_2x4) is None  # sharded: only where the caller places it per device
    assert not backend.attention_applies(config.replace(param_dtype="bfloat16", dtype="bfloat16"))
    assert not backend.attention_applies(preset("test"))  # head dim 8


def _forced(monkeypatch, choice: str) -> int:
    """Forces every native-or-XLA decision to ``choice``; returns where this test's
    decisions start in ``race.DECISIONS``."""
    monkeypatch.setenv("MAGJAX_KERNELS", choice)
    return len(race.DECISIONS)


@needs_kernels
@pytest.mark.parametrize("kind", ["grpo", "sft"])
def test_train_step_on_native_attention_equals_xla_attention(kind, monkeypatch):
    """The train step's gradient through the native kernel equals XLA's attention (1e-5)
    on packed microbatches with a sliding window, whichever a race would pick: each is
    forced in turn, and the step really used it."""
    config = preset("test").replace(head_dim=16, sliding_window=12)
    loss = LossConfig(kind=kind)
    (batch,), _ = batching.make_minibatches(random_groups(4, 4, seed=2),
                                            batching.SFT if kind == "sft" else batching.AdvantageConfig(),
                                            batching.PackingConfig(2, 32))
    assert batch.tokens_mbt.shape[0] > 1 and (batch.segment_ids_mbt.max(-1) > 1).any()  # microbatches of packed rows
    params = decoder.init_params(config, jax.random.key(4))
    results = []
    for choice in ("xla", "native"):
        first = _forced(monkeypatch, choice)
        results.append(jax.jit(functools.partial(train_step.accumulate_gradients, config, loss))(params, batch))
        assert {d["winner"] for d in race.DECISIONS[first:] if d["function"] == "attention"} == {choice}
    (loss_xla, grads_xla, _), (loss_native, grads_native, _) = results
    np.testing.assert_allclose(loss_native, loss_xla, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(grads_native), jax.tree.leaves(grads_xla)):
        np.testing.assert_allclose(a, b, atol=1e-5)


@needs_kernels
def test_native_attention_runs_per_device_on_a_mesh(mesh_2x4, monkeypatch):
    """On a mesh the kernel runs under ``shard_map``, each device on its own rows (over
    fsdp) and heads (over model): values and gradients equal the reference, the race is
    run at one device's share, and the compiled program calls the kernel on that share
    (an FFI call left to XLA's partitioner would be gathered whole onto every device)."""
    first = _forced(monkeypatch, "native")
    b, t, h, kv, e = 2, 40, 8, 4, 16
    config = preset("test").replace(num_heads=h, num_kv_heads=kv, head_dim=e, sliding_window=12)
    rng = np.random.default_rng(3)
    q, do = rng.standard_normal((2, b, t, h, e)).astype(np.float32)
    k, v = rng.standard_normal((2, b, t, kv, e)).astype(np.float32)
    seg = _segments("packed", b, t, rng)
    pos = np.stack([np.arange(t) - np.searchsorted(s, s) for s in seg]).astype(np.int32)
    attention = backends.attention(config, jnp.asarray(pos), jnp.asarray(seg), mesh=mesh_2x4)
    assert attention.rotates
    [decision] = [d for d in race.DECISIONS[first:] if d["function"] == "attention"]
    assert decision["winner"] == "native" and decision["shape"].startswith(f"rows=1 t={t} heads=2/1 ")

    def loss(q, k, v):
        o = attention.attend(q, k, v)
        return jnp.sum(o * do), o

    sharded = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))
    inv_freq = decoder.rope_inv_freq(config)
    cos, sin = (np.asarray(x, np.float64) for x in decoder.rotary_tables(pos, inv_freq))
    f64 = lambda x: x.astype(np.float64)  # noqa: E731
    want = _causal_reference(*map(f64, (q, k, v)), seg, pos, cos, sin, 12, f64(do))
    (dq, dk, dv), o = sharded(q, k, v)
    for name, got, ref in zip(("out", "dq", "dk", "dv"), (o, dq, dk, dv), want):
        np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4, atol=2e-5 * np.abs(ref).max(), err_msg=name)
    hlo = sharded.lower(q, k, v).compile().as_text()
    calls = [line for line in hlo.splitlines() if 'custom_call_target="magjax_attention_forward"' in line]
    assert calls and all(f"f32[1,{t},2,{e}]" in line for line in calls), calls


# head_dim 16 takes the native attention too (the "test" preset's 8 does not); the
# sliding window makes the kernel's ranges start past 0.
NATIVE_CONFIG = preset("test").replace(head_dim=16, sliding_window=12)
ENGINE = EngineConfig(slots=8, max_len=48, prompt_buckets=(8, 16, 32), chunk_steps=4)


def _requests(n, samples, seed):
    rng = np.random.default_rng(seed)
    return [Request(f"r{i}", [1, *rng.integers(3, 60, int(rng.integers(2, 14))).tolist()], samples,
                    int(rng.integers(6, 20))) for i in range(n)]


@needs_kernels
@pytest.mark.parametrize("choice", ["native", "xla"])
def test_sampler_on_either_kernels_matches_the_full_forward_pass(choice, monkeypatch):
    """Through the real engine, on the native kernels and with them off (each forced,
    whatever a race would pick): greedy tokens are the forward pass's argmax and sampled
    tokens' log-probs are the trainer's (1e-5); the native engine runs on packed weights."""
    _forced(monkeypatch, choice)
    params = decoder.init_params(NATIVE_CONFIG, jax.random.key(3))
    greedy = Engine(NATIVE_CONFIG, ENGINE, SamplingConfig(temperature=0), 10_000)
    assert greedy.implementations == {"projections": choice, "decode_attention": choice}
    prepared = greedy.prepare(params)
    packed = ("wqkv", "wo", "w_gate_up", "w_down")
    if choice == "native":
        assert isinstance(prepared["lm_head"], panels.PanelWeight)
        assert all(isinstance(prepared["layers"][0][name], panels.PanelWeight) for name in packed)
    else:
        assert not any(isinstance(w, panels.PanelWeight) for w in jax.tree.leaves(
            prepared, is_leaf=lambda x: isinstance(x, panels.PanelWeight)))
    forward = jax.jit(lambda p, t: decoder.forward(NATIVE_CONFIG, p, t))
    for c in Generator(greedy, params).generate(_requests(3, 1, seed=0)):
        seq = list(c.prompt_tokens)
        for token in c.tokens:
            padded = np.zeros((1, ENGINE.max_len), np.int32)
            padded[0, : len(seq)] = seq
            assert token == int(jnp.argmax(forward(params, padded)[0, len(seq) - 1]))
            seq.append(token)

    @jax.jit
    def trainer_logprobs(params, inputs, targets):
        return token_logprobs(NATIVE_CONFIG, params, decoder.hidden_states(NATIVE_CONFIG, params, inputs), targets)[0]

    sampled = Generator(Engine(NATIVE_CONFIG, ENGINE, SamplingConfig(temperature=1.0), 10_000), params)
    for c in sampled.generate(_requests(3, 2, seed=1)):
        seq = np.zeros((1, ENGINE.max_len + 1), np.int32)
        n = len(c.prompt_tokens) + len(c.tokens)
        seq[0, :n] = [*c.prompt_tokens, *c.tokens]
        want = np.asarray(trainer_logprobs(params, seq[:, :-1], seq[:, 1:]))[0, len(c.prompt_tokens) - 1: n - 1]
        np.testing.assert_allclose(c.logprobs, want, atol=1e-5)


def test_model_parallel_or_low_precision_samplers_keep_xla_kernels(mesh_2x4, monkeypatch):
    """The sampler's kernels run per device only where its mesh splits the slots alone
    (whole weights on each device), dense or paged; bfloat16 never."""
    _forced(monkeypatch, "native")
    xla_only = {"projections": "xla", "decode_attention": "xla"}
    assert Engine(NATIVE_CONFIG, ENGINE, SamplingConfig(), 10_000, mesh=mesh_2x4).implementations == xla_only
    paged = dataclasses.replace(ENGINE, page_size=16)
    assert Engine(NATIVE_CONFIG, paged, SamplingConfig(), 10_000, mesh=mesh_2x4).implementations == {
        "projections": "xla", "decode_attention": "xla-paged"}
    bf16 = NATIVE_CONFIG.replace(param_dtype="bfloat16", dtype="bfloat16")
    assert Engine(bf16, ENGINE, SamplingConfig(), 10_000).implementations == xla_only


@needs_kernels
def test_a_mesh_across_processes_takes_the_kernels_only_where_forced(monkeypatch):
    """Every process runs the same program on such a mesh, but each would race on its own
    and might pick differently: unraced there, the kernels run only when every process is
    told to (MAGJAX_KERNELS, read alike by all)."""

    class Device:
        platform = "cpu"

        def __init__(self, process):
            self.process_index = process

    class TwoProcesses:
        devices = np.array([Device(0), Device(0), Device(1), Device(1)])

    class OneProcess:
        devices = np.array([Device(0), Device(0)])

    monkeypatch.setenv("MAGJAX_KERNELS", "race")
    assert backends.cpu_kernels(TwoProcesses(), on_mesh=True) is None
    assert backends.cpu_kernels(OneProcess(), on_mesh=True) is backend
    monkeypatch.setenv("MAGJAX_KERNELS", "native")
    assert backends.cpu_kernels(TwoProcesses(), on_mesh=True) is backend


@needs_kernels
def test_a_data_parallel_sampler_runs_the_kernels_per_device(mesh_1x8, monkeypatch):
    """On a mesh that splits only the slots, the panels and the decode attention run on
    each device's slot (forced native): the same tokens and log-probs as one device,
    raced at one device's rows, and the compiled decode calls each kernel on one slot
    (a call left to XLA's partitioner would be gathered onto every device, all 8 slots)."""
    first = _forced(monkeypatch, "native")
    params = decoder.init_params(NATIVE_CONFIG, jax.random.key(5))
    sampling = SamplingConfig(temperature=1.0, seed=2)
    requests = _requests(4, 2, seed=4)
    engine = Engine(NATIVE_CONFIG, ENGINE, sampling, 10_000, mesh=mesh_1x8)
    assert engine.implementations == {"projections": "native", "decode_attention": "native"}
    assert {d["shape"].split(" ")[0] for d in race.DECISIONS[first:] if d["function"].startswith("decode")} == {
        "rows=1", "slots=1"}
    sharded_params = jax.device_put(params, decoder.param_shardings(NATIVE_CONFIG, mesh_1x8))
    sharded = {(c.problem_id, c.sample_index): c for c in Generator(engine, sharded_params).generate(requests)}
    alone = {(c.problem_id, c.sample_index): c
             for c in Generator(Engine(NATIVE_CONFIG, ENGINE, sampling, 10_000), params).generate(requests)}
    assert sharded.keys() == alone.keys()
    for k in alone:
        assert sharded[k].tokens == alone[k].tokens
        np.testing.assert_allclose(sharded[k].logprobs, alone[k].logprobs, atol=1e-5)
    prepared = engine.prepare(sharded_params)
    state = engine.init_state()
    hlo = engine._decode.lower(prepared, state).compile().as_text()  # noqa: SLF001
    calls = [line for line in hlo.splitlines() if "custom_call_target=\"magjax_" in line]
    panel = [line for line in calls if "magjax_panel_matmul" in line]
    attend = [line for line in calls if "magjax_decode_attention" in line]
    assert panel and attend
    # Each call's result: one slot's rows (a gathered call would give all 8 slots' rows).
    assert all(re.search(r"= \(?f32\[1,", line) for line in panel + attend), calls


PROBE = textwrap.dedent("""
    import logging, sys
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout)
    from magjax.kernels import native
    print("loaded", native.load())
""")


def _probe(tmp_path, **env):
    full = {**os.environ, "MAGJAX_CACHE_DIR": str(tmp_path), **env}
    r = subprocess.run([sys.executable, "-c", PROBE], env=full, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


@needs_kernels
def test_kernels_build_once_per_cache_and_fall_back_without_a_compiler(tmp_path):
    assert "loaded True" in _probe(tmp_path)
    (library,) = (tmp_path / "kernels").glob("magjax_kernels-*.so")
    built = library.stat().st_mtime_ns
    assert "loaded True" in _probe(tmp_path)  # a second process loads the cached build
    assert library.stat().st_mtime_ns == built
    # A compiler that fails: a warning naming the failed build, and XLA's kernels instead.
    out = _probe(tmp_path / "other", CXX=shutil.which("false"))
    assert "loaded False" in out and "compiling magjax's native kernels failed" in out
    assert "loaded False" in _probe(tmp_path, MAGJAX_NATIVE_KERNELS="0")


# The value checks above, in a process whose kernels are built for AVX2 (haswell).
VALUE_CHECKS = ("the_kernels_build or panel_product_equals or decode_attention_writes or causal_attention_and_its"
                " or native_paged_decode_equals")


@needs_kernels
@pytest.mark.skipif(not {"avx2", "fma", "avx512f"} <= build_cache.cpu_model_and_flags()[1],
                    reason="needs an AVX-512 host, whose own build is the one-register path (an AVX2 host's own "
                           "build already is the path checked here)")
def test_the_kernels_built_for_avx2_equal_numpy(tmp_path):
    # vec.h keeps a v16 in one register only with AVX-512; elsewhere it is two AVX2 (or four
    # SSE/NEON) registers with smaller register tiles. AMD hosts run that code, so an AVX-512
    # host checks it too, built as they would build it.
    env = {**os.environ, "MAGJAX_NATIVE_MARCH": "haswell", "MAGJAX_CACHE_DIR": str(tmp_path)}
    here = os.path.dirname(__file__)
    files = [os.path.join(here, name) for name in ("test_kernels.py", "test_paged_kernels.py")]
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", VALUE_CHECKS, *files],
                       env=env, capture_output=True, text=True, timeout=540, cwd=here)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    summary = r.stdout.strip().splitlines()[-1]
    assert "skipped" not in summary and "failed" not in summary, summary
    assert int(summary.split(" passed")[0].split()[-1]) >= 10, summary  # the checks ran, not a filtered nothing
    (library,) = (tmp_path / "kernels").glob("magjax_kernels-*.so")
    if shutil.which("objdump"):  # AVX2 code: 256-bit registers, none of AVX-512's
        code = subprocess.run(["objdump", "-d", str(library)], capture_output=True, text=True, timeout=120).stdout
        assert "%ymm" in code and "%zmm" not in code
