"""magjax.backends: the portable attention against the reference, the cache layouts, the
races that pick native kernels or XLA's, and splash attention compiled for a TPU."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from magjax import backends
from magjax.backends import flash, gpu, race, reference, xla
from magjax.models import preset

# (rows, length, query heads, kv heads, head dim, window, segments, block): grouped queries
# with a length off the block (padding); packed rows under a window; a segment id that
# recurs later in its row, four query heads on one kv head; one block only.
CASES = [(2, 37, 4, 2, 8, None, "one", 16), (3, 70, 6, 2, 8, 7, "packed", 32), (2, 64, 4, 1, 8, 9, "recurring", 16),
         (1, 20, 2, 1, 8, None, "packed", 64)]


def _segments(kind, b, t, rng):
    """Segment ids and positions (counting from each segment's start) [b, t]."""
    if kind == "one":
        seg = np.zeros((b, t), np.int32)
    elif kind == "packed":
        seg = np.sort(rng.integers(0, 4, (b, t)), axis=1).astype(np.int32)
    else:  # 0 0 .. 1 1 .. 0 0 .. 2 2: segment 0 comes back after segment 1
        seg = np.repeat(np.array([0, 1, 0, 2]), -(-t // 4))[None, :t].repeat(b, 0).astype(np.int32)
    pos = np.zeros((b, t), np.int32)
    for r in range(b):
        for i in range(1, t):
            pos[r, i] = pos[r, i - 1] + 1 if seg[r, i] == seg[r, i - 1] else 0
    return seg, pos


def _inputs(b, t, h, kv, e, seed):
    rng = np.random.default_rng(seed)
    q, do = (jnp.asarray(x, jnp.float32) for x in rng.standard_normal((2, b, t, h, e)))
    k, v = (jnp.asarray(x, jnp.float32) for x in rng.standard_normal((2, b, t, kv, e)))
    return rng, q, k, v, do


def _value_and_grads(attend, q, k, v, do):
    """(dq, dk, dv), output of sum(do * attend(q, k, v))."""
    def loss(q, k, v):
        o = attend(q, k, v)
        return jnp.sum(do * o), o
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)


@pytest.mark.parametrize("b, t, h, kv, e, window, segments, block", CASES)
def test_blockwise_attention_and_its_gradients_equal_the_reference(b, t, h, kv, e, window, segments, block):
    rng, q, k, v, do = _inputs(b, t, h, kv, e, t)
    seg, pos = _segments(segments, b, t, rng)
    mask = reference.attention_mask(jnp.asarray(pos), jnp.asarray(seg), window)

    want_grads, want_o = _value_and_grads(lambda q, k, v: reference.attend(q, k, v, mask), q, k, v, do)
    got_grads, got_o = _value_and_grads(lambda q, k, v: flash.attend(q, k, v, seg, pos, window, block), q, k, v, do)
    np.testing.assert_allclose(got_o, want_o, rtol=1e-5, atol=1e-5)
    for name, g, w in zip(("dq", "dk", "dv"), got_grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=name)


def test_long_rows_attend_blockwise_without_a_t_by_t_array():
    """The portable attention switches to the blockwise form at FLASH_MIN_T tokens: no
    intermediate of its forward or backward pass is [t, t] (or larger)."""
    config = preset("test").replace(sliding_window=300)
    t = xla.FLASH_MIN_T
    pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (1, t))
    seg = jnp.zeros((1, t), jnp.int32)

    def loss(q, k, v):
        return jnp.sum(xla.attention(config, pos, seg).attend(q, k, v))

    q = jax.ShapeDtypeStruct((1, t, config.num_heads, config.head_dim), jnp.float32)
    kv = jax.ShapeDtypeStruct((1, t, config.num_kv_heads, config.head_dim), jnp.float32)
    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(q, kv, kv)
    sizes = [math_prod(v.aval.shape) for eqn in _all_eqns(jaxpr.jaxpr) for v in eqn.outvars if hasattr(v.aval, "shape")]
    assert max(sizes) < t * t
    short = jax.make_jaxpr(lambda q, k, v: xla.attention(config, pos[:, :64], seg[:, :64]).attend(q, k, v))(
        *(jax.ShapeDtypeStruct((1, 64, *s.shape[2:]), jnp.float32) for s in (q, kv, kv)))
    assert any(v.aval.shape[-2:] == (64, 64) for eqn in short.jaxpr.eqns for v in eqn.outvars)  # masked, short


def math_prod(shape):
    return int(np.prod(shape)) if shape else 1


def _all_eqns(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for sub in jax.core.subjaxprs(eqn) if hasattr(jax.core, "subjaxprs") else _sub(eqn):
            yield from _all_eqns(sub)


def _sub(eqn):
    for p in eqn.params.values():
        for x in (p if isinstance(p, (list, tuple)) else [p]):
            if hasattr(x, "jaxpr") and hasattr(x.jaxpr, "eqns"):
                yield x.jaxpr
            elif hasattr(x, "eqns"):
                yield x


@pytest.mark.parametrize("window", [None, 6])
def test_fused_dot_product_attention_takes_the_reference_mask(window):
    """The GPU path's call of jax.nn.dot_product_attention (run here with XLA's
    implementation) equals the reference on packed rows with grouped queries."""
    b, t, h, kv, e = 2, 40, 4, 2, 8
    rng, q, k, v, _ = _inputs(b, t, h, kv, e, 1)
    seg, pos = _segments("packed", b, t, rng)
    config = preset("test").replace(sliding_window=window)
    got = gpu.fused(config, jnp.asarray(seg), "xla").attend(q, k, v)
    want = reference.attend(q, k, v, reference.attention_mask(jnp.asarray(pos), jnp.asarray(seg), window))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("b, t, h, kv, e, segments", [(2, 37, 4, 2, 8, "packed"), (1, 48, 4, 1, 16, "recurring")])
def test_the_gpu_flash_kernel_and_its_gradients_equal_the_reference(b, t, h, kv, e, segments):
    """The GPU path for packed rows (Pallas's Triton flash attention, run by Pallas's
    interpreter here): values and gradients equal the reference with grouped queries, a
    row off the kernel's blocks (padded), and a segment id that recurs in its row."""
    rng, q, k, v, do = _inputs(b, t, h, kv, e, t)
    seg, pos = _segments(segments, b, t, rng)
    config = preset("test").replace(num_heads=h, num_kv_heads=kv, head_dim=e)
    assert gpu.flash_applies(config) and not gpu.flash_applies(config.replace(sliding_window=8))
    mask = reference.attention_mask(jnp.asarray(pos), jnp.asarray(seg), None)
    attention = gpu.flash(config, jnp.asarray(seg), interpret=True)

    want_grads, want_o = _value_and_grads(lambda q, k, v: reference.attend(q, k, v, mask), q, k, v, do)
    got_grads, got_o = _value_and_grads(attention.attend, q, k, v, do)
    np.testing.assert_allclose(got_o, want_o, rtol=1e-5, atol=1e-5)
    for name, g, w in zip(("dq", "dk", "dv"), got_grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=name)


def test_the_gpu_flash_kernel_runs_per_device_on_a_mesh(mesh_2x4):
    """Under ``shard_map``, rows over the batch axes and heads over ``model``: the same
    values as on one device, and no [t, t] array anywhere in the program."""
    b, t, h, kv, e = 2, 96, 8, 4, 8  # blocks of 32: a [t, t] array would be the kernel not tiling
    rng, q, k, v, _ = _inputs(b, t, h, kv, e, 5)
    seg, pos = _segments("packed", b, t, rng)
    config = preset("test").replace(num_heads=h, num_kv_heads=kv, head_dim=e)
    want = reference.attend(q, k, v, reference.attention_mask(jnp.asarray(pos), jnp.asarray(seg), None))
    attend = jax.jit(gpu.flash(config, jnp.asarray(seg), mesh_2x4, interpret=True).attend)
    np.testing.assert_allclose(attend(q, k, v), want, rtol=1e-5, atol=1e-5)
    jaxpr = jax.make_jaxpr(attend)(q, k, v)
    assert not any(x.aval.shape[-2:] == (t, t) for eqn in _all_eqns(jaxpr.jaxpr) for x in eqn.outvars
                   if hasattr(x.aval, "shape"))


def test_the_gpu_flash_kernel_and_its_gradient_lower_for_cuda():
    """Lowered for CUDA on this CPU machine (no GPU needed to lower): Triton kernels for
    the forward and backward passes, at a bfloat16 shape the train step uses."""
    config = preset("test").replace(num_heads=4, num_kv_heads=2, head_dim=64, dtype="bfloat16")
    b, t = 2, 256
    attention = gpu.attention(config, jnp.zeros((b, t), jnp.int32), jnp.zeros((b, t), jnp.int32))

    def loss(q, k, v):
        return jnp.sum(attention.attend(q, k, v).astype(jnp.float32))

    q, kv = jax.ShapeDtypeStruct((b, t, 4, 64), jnp.bfloat16), jax.ShapeDtypeStruct((b, t, 2, 64), jnp.bfloat16)
    text = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(q, kv, kv).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("xla.gpu.triton") == 3  # the forward; the backward's preprocessing and its kernel


def test_both_cache_layouts_write_and_attend_alike():
    """The CPU layout and the accelerator one (head dim minor) give the same attention
    over the same prompt writes, step writes (one dropped: out of range) and ranges."""
    slots, kv, h, e, s = 3, 2, 4, 8, 12
    rng = np.random.default_rng(0)
    prompt_k, prompt_v = (jnp.asarray(x, jnp.float32) for x in rng.standard_normal((2, 1, 5, kv, e)))
    new_k, new_v = (jnp.asarray(x, jnp.float32) for x in rng.standard_normal((2, slots, 1, kv, e)))
    q = jnp.asarray(rng.standard_normal((slots, 1, h, e)), jnp.float32)
    lo, hi, at = jnp.array([0, 0, 2]), jnp.array([6, 1, 6]), jnp.array([5, 0, s])
    outs = []
    for layout in (xla.KeysTransposed(), xla.HeadMinor()):
        k_shape, v_shape = layout.shapes(slots, kv, e, s)
        kc, vc = layout.write_prompt(jnp.zeros(k_shape), jnp.zeros(v_shape), jnp.array([0, 2]), prompt_k, prompt_v)
        o, kc, vc = layout.write_and_attend(q, new_k, new_v, kc, vc, lo, hi, at)
        outs.append(np.asarray(o))
    assert xla.HeadMinor().shapes(slots, kv, e, s)[0][-1] == e  # head dim minor
    assert np.abs(outs[0]).max() > 0
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-6, atol=1e-6)


def test_the_override_is_read_and_checked(monkeypatch):
    monkeypatch.setenv("MAGJAX_KERNELS", "race")
    assert race.mode() == "race"
    monkeypatch.setenv("MAGJAX_NATIVE_KERNELS", "0")  # the older switch still means XLA
    assert race.mode() == "xla"
    monkeypatch.delenv("MAGJAX_NATIVE_KERNELS")
    monkeypatch.setenv("MAGJAX_KERNELS", "fastest")
    with pytest.raises(ValueError, match="MAGJAX_KERNELS must be one of native, xla, race"):
        race.mode()


def test_a_race_times_both_candidates_once_per_machine_and_kernel_version(monkeypatch, tmp_path):
    """A real race (the sampler's decode attention and projections at a small shape): both
    candidates timed, the winner the faster, recorded on disk and reused from there by a
    later process, raced again for another kernel version."""
    if backends.cpu_kernels() is None:
        pytest.skip("the native kernels are unavailable here (no C++ compiler): nothing to race")
    monkeypatch.setenv("MAGJAX_KERNELS", "race")
    monkeypatch.setenv("MAGJAX_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(race, "_MEMORY", {})
    config = preset("test").replace(head_dim=16)
    first = len(race.DECISIONS)
    ops = backends.sampler(config, slots=4, max_len=32)
    decisions = race.DECISIONS[first:]
    assert [d["function"] for d in decisions] == ["decode projections", "decode attention"]
    for d in decisions:
        assert d["how"] == "raced" and set(d["seconds"]) == {"native", "xla"}
        assert d["winner"] == min(d["seconds"], key=d["seconds"].get)
        assert "x)" in race.describe(d)  # says by how much
    assert ops.implementations == {"projections": decisions[0]["winner"], "decode_attention": decisions[1]["winner"]}
    on_disk = json.loads((tmp_path / "races.json").read_text())
    assert len(on_disk) == 2
    race._MEMORY.clear()  # as a new process would start
    first = len(race.DECISIONS)
    backends.sampler(config, slots=4, max_len=32)
    assert all(d["how"].startswith("cached") for d in race.DECISIONS[first:])
    native = backends.cpu_kernels()
    monkeypatch.setattr(native, "version", lambda: "another version")
    first = len(race.DECISIONS)
    backends.sampler(config, slots=4, max_len=32)
    assert [d["how"] for d in race.DECISIONS[first:]] == ["raced", "raced"]


def test_races_are_kept_apart_by_the_xla_flags_that_change_xlas_code(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    eight = race._identity_key("v")
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    assert race._identity_key("v") == eight  # the device count changes no candidate's code
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_cpu_max_isa=AVX2")
    assert race._identity_key("v") != eight
    assert race.xla_code_flags() == "--xla_cpu_max_isa=AVX2"
    assert race._identity_key("w") != race._identity_key("v")


HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None

SPLASH_PROBE = textwrap.dedent("""
    import numpy as np, jax, jax.numpy as jnp
    from jax.experimental import topologies
    from jax.sharding import Mesh
    from magjax import backends
    from magjax.models import preset
    topo = topologies.get_topology_desc(platform="tpu", topology_name="v5p:2x2x1",
                                        chips_per_host_bounds=(2, 2, 1), num_slices=1)
    mesh = Mesh(np.array(topo.devices).reshape(2, 1, 2), ("data", "fsdp", "model"))
    config = preset("test").replace(num_heads=4, num_kv_heads=2, head_dim=128, sliding_window=64,
                                    dtype="bfloat16")
    b, t = 4, 256
    def loss(q, k, v, positions, segments):
        attention = backends.attention(config, positions, segments, mesh=mesh)
        return jnp.sum(attention.attend(q, k, v).astype(jnp.float32))
    spec = lambda *s: jax.ShapeDtypeStruct(s, jnp.bfloat16)
    ints = jax.ShapeDtypeStruct((b, t), jnp.int32)
    with jax.set_mesh(mesh):
        compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(
            spec(b, t, 4, 128), spec(b, t, 2, 128), spec(b, t, 2, 128), ints, ints).compile()
    text = compiled.as_text()
    print("platform", backends.platform(mesh), "pallas", "tpu_custom_call" in text)
    print("temp bytes", compiled.memory_analysis().temp_size_in_bytes)
""")


@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu is not installed (pip install -e '.[tpu]'): "
                    "no TPU compiler to check the splash attention path with")
def test_splash_attention_compiles_for_a_tpu_slice():
    """The TPU path (splash attention under shard_map, causal + segments + window),
    forward and backward, compiled ahead of time for a v5p slice on this CPU machine."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    r = subprocess.run([sys.executable, "-c", SPLASH_PROBE], env=env, capture_output=True, text=True, timeout=300,
                       cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "platform tpu pallas True" in r.stdout, r.stdout
