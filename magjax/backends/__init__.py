"""The one place that decides how attention, the decode step's cache attention and the
projections run, by backend:

* TPU: Pallas splash attention under ``shard_map`` (``tpu.py``); the token-major cache
  attended blockwise (``decode_blockwise.py``, head dim minor), or, paged, the Pallas
  paged attention kernel under ``shard_map`` (``tpu_paged.py``; models with a sliding
  window or a head dim off the kernel's 128 lanes take the portable paged cache).
* GPU: the Pallas Triton flash attention with segment ids under ``shard_map``, or for
  windowed models cuDNN's (short rows) or the portable blockwise attention (``gpu.py``);
  the token-major cache attended blockwise.
* CPU: magjax's native kernels where they are registered, apply and win a measured race
  against XLA at the real shapes (``race.py``), else XLA's; the CPU cache layout. On a
  mesh of CPU devices each kernel runs per device under ``shard_map`` (``per_device.py``),
  raced at one device's share: whole-sequence attention on any mesh, the sampler's where
  its mesh splits only the slots (its cache dense or paged).
* Anything else: the portable XLA implementations (``xla.py``, with the blockwise
  attention of ``flash.py`` for long rows).

The decoder, the sampler and the train step ask here and carry no backend branches.
"""

from __future__ import annotations

import importlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from magjax.backends import paged, per_device, race, xla
from magjax.backends.xla import Attention, Projections  # noqa: F401  (the seam's types)

_CPU_KERNELS: list[str] = []


def register_cpu_kernels(module: str) -> None:
    """Registers a module of native CPU kernels (see ``magjax/kernels/backend.py`` for what
    it provides); imported on first use, skipped where it is missing or fails to build."""
    _CPU_KERNELS.append(module)


# The native CPU kernels: deleting magjax/kernels/ and this line removes them.
register_cpu_kernels("magjax.kernels.backend")


def platform(mesh=None) -> str:
    """"cpu", "tpu", "gpu" or another backend name: where work placed on ``mesh`` (None:
    the default device) runs."""
    device = next(iter(mesh.devices.flat)) if mesh is not None else jax.devices()[0]
    p = device.platform
    return "gpu" if p in ("cuda", "rocm") else p


def _one_cpu(mesh) -> bool:
    """Native kernels run where the work is on one CPU device; sharded work stays XLA's."""
    return platform(mesh) == "cpu" and (mesh is None or mesh.devices.size == 1)


def _spans_processes(mesh) -> bool:
    return mesh is not None and len({d.process_index for d in mesh.devices.flat}) > 1


def cpu_kernels(mesh=None, *, on_mesh: bool = False):
    """The registered native kernels module, built and loaded, or None (none registered,
    missing, unbuildable, or the work is not on one CPU device; with ``on_mesh``, not on
    CPU devices: the caller places the kernel on each device of ``mesh``). With
    the kernels forced off (``MAGJAX_KERNELS=xla``) the module is returned unbuilt: every
    race then records XLA as forced, so reports still say what ran.

    A mesh across processes runs one program on all of them, but each process would race
    on its own and might pick differently: there the kernels run only where forced
    (``MAGJAX_KERNELS=native``, which every process reads alike)."""
    if not (platform(mesh) == "cpu" if on_mesh else _one_cpu(mesh)):
        return None
    if _spans_processes(mesh) and race.mode() == "race":
        return None
    for name in _CPU_KERNELS:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if race.mode() == "xla" or module.available():
            return module
    return None


def _random(shape, seed: int = 0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def attention(config, positions_bt, segment_ids_bt, *, mesh=None, grad: bool = True) -> Attention:
    """Attention over whole packed sequences (the train step, the sampler's prefill):
    causal, within a segment, within the sliding window; never a [t, t] array past short
    rows. ``grad``: whether its gradient is taken (what a race times)."""
    p = platform(mesh)
    if p == "tpu" and positions_bt.shape[1] % 128 == 0:  # splash attention's blocks; other rows are XLA's
        from magjax.backends import tpu
        return tpu.attention(config, positions_bt, segment_ids_bt, mesh)
    if p == "gpu":
        from magjax.backends import gpu
        return gpu.attention(config, positions_bt, segment_ids_bt, mesh)
    native = cpu_kernels(mesh, on_mesh=True)
    if native is not None and native.attention_applies(config):
        b, t = positions_bt.shape
        rows, heads, kv_heads = per_device.attention_share(config, b, mesh)  # what each device attends over
        shape = (f"rows={rows} t={t} heads={heads}/{kv_heads} e={config.head_dim}"
                 f" window={config.sliding_window} {'forward+backward' if grad else 'forward'}")
        local = config.replace(num_heads=heads, num_kv_heads=kv_heads)
        builders = {name: (lambda make=make: _attention_thunk(local, make, rows, t, grad))
                    for name, make in (("native", native.attention), ("xla", xla.attention))}
        if race.pick("attention", shape, native.version(), builders) == "native":
            if mesh is None or mesh.devices.size == 1:
                return native.attention(config, positions_bt, segment_ids_bt)
            return per_device.attention(native.attention, config, positions_bt, segment_ids_bt, mesh)
    return xla.attention(config, positions_bt, segment_ids_bt)


def _attention_thunk(config, make, b: int, t: int, grad: bool):
    """One attention (with the rotary embedding where the candidate leaves it to the
    caller) at [b, t] on made-up inputs, jitted; its gradient too with ``grad``."""
    from magjax.models import decoder

    h, kv, e = config.num_heads, config.num_kv_heads, config.head_dim
    positions_bt = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    segments_bt = jnp.zeros((b, t), jnp.int32)
    inv_freq = decoder.rope_inv_freq(config)

    def run(q, k, v):
        att = make(config, positions_bt, segments_bt)
        if not att.rotates:
            q, k = decoder.apply_rope(q, positions_bt, inv_freq), decoder.apply_rope(k, positions_bt, inv_freq)
        return jnp.sum(att.attend(q, k, v))

    fn = jax.jit(jax.grad(run, argnums=(0, 1, 2)) if grad else run)
    args = (_random((b, t, h, e), 1), _random((b, t, kv, e), 2), _random((b, t, kv, e), 3))
    return lambda: fn(*args)


class SamplerOps(NamedTuple):
    """How one sampler runs: its projections (and so its weights' layout), its cache
    layout and decode attention, and which implementation each is."""

    projections: Projections
    cache: object  # xla.KeysTransposed, decode_blockwise.TokenMajor or a native subclass
    implementations: dict


def sampler(config, mesh=None, *, slots: int, max_len: int, page_size: int = 0,
            trainer_layout: bool = False) -> SamplerOps:
    """The sampler's projections and decode cache for ``slots`` x ``max_len`` (a pool of
    pages of ``page_size`` positions when that is positive); on CPUs each raced, native
    against XLA, at these shapes. ``trainer_layout``: the projections must read the
    weights as the trainer lays them out (a sampler sharing the trainer's arrays), so
    none with a layout of its own is a candidate."""
    if platform(mesh) != "cpu":
        if page_size and platform(mesh) == "tpu" and config.sliding_window is None and config.head_dim % 128 == 0:
            from magjax.backends import tpu_paged  # the Pallas paged attention kernel: no windows, 128-lane heads
            cache = tpu_paged.PagedTPU(mesh)
            return SamplerOps(xla.PROJECTIONS, cache, {"projections": "xla", "decode_attention": cache.name})
        if page_size:
            return SamplerOps(xla.PROJECTIONS, paged.Paged(mesh), {"projections": "xla", "decode_attention": "xla-paged"})
        from magjax.backends import decode_blockwise  # token-major, head dim minor (see there)
        return SamplerOps(xla.PROJECTIONS, decode_blockwise.TokenMajor(),
                          {"projections": "xla", "decode_attention": "xla-blockwise"})
    projections = xla.PROJECTIONS
    chosen = {"projections": "xla"}
    sharded = mesh is not None and mesh.devices.size > 1
    # On a mesh: per device, over the slots alone (whole weights; a paged pool's pages
    # split as the slots are).
    native = cpu_kernels(mesh, on_mesh=sharded and per_device.applies(mesh))
    rows = per_device.rows_per_device(slots, mesh) if sharded else slots  # one device's slots
    if native is not None and native.projections_apply(config) and not trainer_layout:
        shape = (f"rows={rows} d={config.hidden_size} f={config.intermediate_size}"
                 f" heads={config.num_heads}/{config.num_kv_heads} e={config.head_dim} vocab={config.vocab_size}")
        builders = {"native": lambda: _projections_thunk(config, native.PROJECTIONS, rows),
                    "xla": lambda: _projections_thunk(config, xla.PROJECTIONS, rows)}
        if race.pick("decode projections", shape, native.version(), builders) == "native":
            projections, chosen["projections"] = native.PROJECTIONS, "native"
            if sharded:
                projections = per_device.Projections(projections, mesh)
    cache = paged.Paged(mesh) if page_size else xla.KeysTransposed()
    if native is not None and native.decode_applies(config):
        shape = (f"slots={rows} max_len={max_len}{f' page_size={page_size}' if page_size else ''}"
                 f" heads={config.num_heads}/{config.num_kv_heads} e={config.head_dim}")
        candidate = native.PAGED_CACHE if page_size else native.CACHE
        # Both raced on one device's slots (and, paged, a pool of their pages).
        alone = paged.Paged() if page_size else cache
        builders = {"native": lambda: _decode_thunk(config, candidate, rows, max_len, page_size),
                    "xla": lambda: _decode_thunk(config, alone, rows, max_len, page_size)}
        if race.pick("decode attention", shape, native.version(), builders) == "native":
            cache = candidate
            if sharded:
                cache = per_device.PagedCache(candidate, mesh) if page_size else per_device.Cache(candidate, mesh)
    chosen["decode_attention"] = cache.name
    return SamplerOps(projections, cache, chosen)


def _projections_thunk(config, projections: Projections, rows: int):
    """One layer's products and the output projection for ``rows`` tokens, on random
    weights of the model's shapes laid out as ``projections`` wants them."""
    from magjax.models import decoder

    shapes = decoder.param_shapes(config)
    layer = {k: _random(s[1:], i) * 0.02 for i, (k, s) in enumerate(sorted(shapes["layers"].items()))}
    head = {k: _random(s, 7) * 0.02 for k, s in shapes.items() if k != "layers"}
    layer = jax.jit(lambda l: projections.prepare_layer(config, l))(layer)
    head = jax.jit(lambda p: projections.prepare_head(config, p))(head)

    @jax.jit
    def run(layer, head, x_md):
        q, k, v = projections.qkv(config, layer, x_md)
        y = x_md + projections.attn_out(layer, q)
        gate, up = projections.gate_up(layer, y)
        y = y + projections.down(layer, jax.nn.silu(gate) * up)
        return projections.logits(config, head, y), k, v

    x_md = _random((rows, config.hidden_size), 8)
    return lambda: run(layer, head, x_md)


def _decode_thunk(config, cache, slots: int, max_len: int, page_size: int = 0):
    """One layer's decode-step cache write and attention, half of each slot's positions in
    use; paged (``page_size`` > 0): every slot's pages, scattered over a pool of as many as
    all slots need at ``max_len``."""
    kv, e = config.num_kv_heads, config.head_dim
    if page_size:
        n = -(-max_len // page_size)
        table_bn = jnp.asarray(np.random.default_rng(6).permutation(slots * n).reshape(slots, n), jnp.int32)
        k_shape, v_shape = cache.shapes(slots * n, page_size, kv, e)
    else:
        table_bn = None
        k_shape, v_shape = cache.shapes(slots, kv, e, max_len)
    k_cache, v_cache = _random(k_shape, 1), _random(v_shape, 2)
    q, k_new, v_new = (_random((slots, 1, config.num_heads, e), 3), _random((slots, 1, kv, e), 4),
                       _random((slots, 1, kv, e), 5))
    at_b = jnp.full((slots,), max_len // 2, jnp.int32)
    table = () if table_bn is None else (table_bn,)
    # The caches are donated and carried from call to call, as the decode loop does: a
    # candidate that updates them in place is not charged for copying them.
    step = jax.jit(lambda q, kn, vn, kc, vc: cache.write_and_attend(q, kn, vn, kc, vc, jnp.zeros_like(at_b), at_b + 1,
                                                                    at_b, *table), donate_argnums=(3, 4))
    held = [k_cache, v_cache]

    def run():
        out, held[0], held[1] = step(q, k_new, v_new, held[0], held[1])
        return out

    return run
