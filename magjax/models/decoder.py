"""The decoder: a Flax NNX module whose math lives in pure functions over a params dict.

Parameters are stored stacked along a leading ``layers`` axis and the layers run under
``lax.scan``, so compile time does not grow with depth (``ModelConfig.scan_unroll`` trades
some of that back for speed on small models; fully unrolled, the layers are a plain loop).
The pure ``forward(config, params, ...)`` is what jitted code (trainer, sampler) calls:
params are arguments, never closed over, which is what makes swapping weights between
decode chunks free. ``Decoder`` is the NNX face of the same thing: it owns the
``nnx.Param`` leaves, each annotated with its logical axes (``axes`` metadata, resolved by
magjax.sharding).

How attention and the projections run (splash on TPUs, cuDNN on GPUs, native kernels or
XLA on CPUs, a packed weight layout in the sampler) is ``magjax.backends``' business: the
model code calls the ``Attention`` and ``Projections`` it is handed, and knows no layout
but its own parameters'.

Conventions follow Hugging Face's Llama implementation (rotate-half rotary embedding,
RMSNorm computed in float32, SwiGLU), so Hugging Face weights map without permutation.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from magjax import backends, sharding as shd
from magjax.backends import reference
from magjax.backends.xla import PROJECTIONS, Attention, Projections
from magjax.models.config import ModelConfig

L, B, T = shd.LAYERS, shd.BATCH, shd.SEQUENCE


def param_axes(config: ModelConfig) -> dict:
    """Logical axes of every parameter, as a dict shaped like the params."""
    layers = {
        "attn_norm": (L, shd.NORM),
        "wq": (L, shd.EMBED, shd.HEADS, shd.HEAD_DIM),
        "wk": (L, shd.EMBED, shd.KV_HEADS, shd.HEAD_DIM),
        "wv": (L, shd.EMBED, shd.KV_HEADS, shd.HEAD_DIM),
        "wo": (L, shd.HEADS, shd.HEAD_DIM, shd.EMBED),
        "mlp_norm": (L, shd.NORM),
        "w_gate": (L, shd.EMBED, shd.MLP),
        "w_up": (L, shd.EMBED, shd.MLP),
        "w_down": (L, shd.MLP, shd.EMBED),
    }
    if config.qkv_bias:
        layers |= {"bq": (L, shd.HEADS, shd.HEAD_DIM), "bk": (L, shd.KV_HEADS, shd.HEAD_DIM),
                   "bv": (L, shd.KV_HEADS, shd.HEAD_DIM)}
    if config.qk_norm:
        layers |= {"q_norm": (L, shd.NORM), "k_norm": (L, shd.NORM)}
    axes = {"embed": (shd.VOCAB, shd.EMBED), "layers": layers, "final_norm": (shd.NORM,)}
    if not config.tie_embeddings:
        axes["lm_head"] = (shd.EMBED, shd.VOCAB)
    return axes


def param_shapes(config: ModelConfig) -> dict:
    """Shapes of every parameter, as a dict shaped like the params."""
    c = config
    n, d, h, k, e, f = c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size
    layers = {
        "attn_norm": (n, d), "wq": (n, d, h, e), "wk": (n, d, k, e), "wv": (n, d, k, e),
        "wo": (n, h, e, d), "mlp_norm": (n, d), "w_gate": (n, d, f), "w_up": (n, d, f),
        "w_down": (n, f, d),
    }
    if c.qkv_bias:
        layers |= {"bq": (n, h, e), "bk": (n, k, e), "bv": (n, k, e)}
    if c.qk_norm:
        layers |= {"q_norm": (n, e), "k_norm": (n, e)}
    shapes = {"embed": (c.vocab_size, d), "layers": layers, "final_norm": (d,)}
    if not c.tie_embeddings:
        shapes["lm_head"] = (d, c.vocab_size)
    return shapes


def _is_tuple(x) -> bool:
    return isinstance(x, tuple)


def init_params(config: ModelConfig, key: jax.Array) -> dict:
    """Random initial parameters: N(0, 0.02) matrices, unit norms, zero biases."""
    axes = param_axes(config)
    shapes = param_shapes(config)
    leaves, treedef = jax.tree.flatten(axes, is_leaf=_is_tuple)
    shape_leaves = jax.tree.leaves(shapes, is_leaf=_is_tuple)
    keys = jax.random.split(key, len(leaves))
    dtype = config.jnp_param_dtype
    out = []
    for ax, shape, k in zip(leaves, shape_leaves, keys):
        if ax[-1] == shd.NORM:
            out.append(jnp.ones(shape, dtype))
        elif len(shape) == 3 and ax[1] in (shd.HEADS, shd.KV_HEADS):  # biases
            out.append(jnp.zeros(shape, dtype))
        else:
            out.append((0.02 * jax.random.normal(k, shape, jnp.float32)).astype(dtype))
    return jax.tree.unflatten(treedef, out)


def param_shardings(config: ModelConfig, mesh) -> dict:
    """NamedShardings of every parameter on ``mesh``, resolved through sharding.RULES."""
    return shd.tree_shardings(param_axes(config), param_shapes(config), mesh)


# ----------------------------------------------------------------------------- the math


def rms_norm(x, weight, eps):
    """RMSNorm in float32, cast back to the input dtype (as Hugging Face does)."""
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (weight.astype(jnp.float32) * x32).astype(x.dtype)


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
    """Rotary inverse frequencies [e/2], with Llama-3 frequency scaling when configured."""
    e = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, e, 2, dtype=np.float64) / e))
    s = config.rope_scaling
    if s is not None:
        # Llama 3.1: leave high frequencies alone, divide low ones by `factor`, and blend
        # smoothly between the two wavelength thresholds.
        low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
        high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
            s.high_freq_factor - s.low_freq_factor)
        blended = (1 - smooth) * inv_freq / s.factor + smooth * inv_freq
        inv_freq = np.where(wavelen > low_wavelen, inv_freq / s.factor,
                            np.where(wavelen < high_wavelen, inv_freq, blended))
    return inv_freq.astype(np.float32)


def rotary_tables(positions_bt, inv_freq_e2):
    """cos and sin of every position's rotary angles, [b, t, e/2] float32 each."""
    angles_bte2 = positions_bt[..., None].astype(jnp.float32) * inv_freq_e2
    return jnp.cos(angles_bte2), jnp.sin(angles_bte2)


def apply_rope(x_bthe, positions_bt, inv_freq_e2):
    """Rotate-half rotary embedding (Hugging Face convention), computed in float32."""
    cos_bte2, sin_bte2 = rotary_tables(positions_bt, inv_freq_e2)
    cos = jnp.concatenate([cos_bte2, cos_bte2], -1)[:, :, None, :]
    sin = jnp.concatenate([sin_bte2, sin_bte2], -1)[:, :, None, :]
    x = x_bthe.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], -1)
    return (x * cos + rotated * sin).astype(x_bthe.dtype)


def project_qkv(config: ModelConfig, layer: dict, x_btd, positions_bt, rotate: bool = True,
                projections: Projections = PROJECTIONS):
    """Query, key and value for one layer: [b,t,h,e], [b,t,k,e], [b,t,k,e], rotary applied
    unless ``rotate`` is False (for an attention that rotates as it reads)."""
    dt = x_btd.dtype
    q, k, v = projections.qkv(config, layer, x_btd)
    if config.qkv_bias:
        q, k, v = q + layer["bq"].astype(dt), k + layer["bk"].astype(dt), v + layer["bv"].astype(dt)
    if config.qk_norm:
        q = rms_norm(q, layer["q_norm"], config.rms_norm_eps)
        k = rms_norm(k, layer["k_norm"], config.rms_norm_eps)
    if not rotate:
        return q, k, v
    inv_freq = rope_inv_freq(config)
    return apply_rope(q, positions_bt, inv_freq), apply_rope(k, positions_bt, inv_freq), v


def attend(q_bthe, k_bske, v_bske, mask_bts):
    """The reference grouped-query attention under a [b, t, s] mask (``backends.reference``)."""
    return reference.attend(q_bthe, k_bske, v_bske, mask_bts)


def attention_mask(config: ModelConfig, positions_bt, segment_ids_bt):
    """Causal (by index), same-segment, and sliding-window (by position) mask [b,t,s]."""
    return reference.attention_mask(positions_bt, segment_ids_bt, config.sliding_window)


def mlp(layer: dict, x_btd, projections: Projections = PROJECTIONS):
    """SwiGLU: down(silu(gate(x)) * up(x))."""
    gate, up = projections.gate_up(layer, x_btd)
    return projections.down(layer, jax.nn.silu(gate) * up)


def attention_inputs(config: ModelConfig, layer: dict, x_btd, positions_bt, rotate: bool = True,
                     projections: Projections = PROJECTIONS):
    """The first half of a layer: normalised input projected to q, k and v (rotated unless
    ``rotate`` is False)."""
    h_btd = rms_norm(x_btd, layer["attn_norm"], config.rms_norm_eps)
    return project_qkv(config, layer, h_btd, positions_bt, rotate, projections)


def layer_output(config: ModelConfig, layer: dict, x_btd, o_bthe, mesh=None, projections: Projections = PROJECTIONS):
    """The second half of a layer: attention output projection, then the MLP, both residual."""
    x_btd = shd.constrain(x_btd + projections.attn_out(layer, o_bthe), (B, T, None), mesh)
    x_btd = x_btd + mlp(layer, rms_norm(x_btd, layer["mlp_norm"], config.rms_norm_eps), projections)
    return shd.constrain(x_btd, (B, T, None), mesh)


def block(config: ModelConfig, layer: dict, x_btd, positions_bt, attention: Attention, mesh=None,
          projections: Projections = PROJECTIONS):
    """One pre-norm transformer layer over whole sequences; also returns its keys (rotated)
    and values. ``attention`` is ``backends.attention(...)`` for these sequences."""
    q_bthe, k_btke, v_btke = attention_inputs(config, layer, x_btd, positions_bt, not attention.rotates, projections)
    o_bthe = attention.attend(q_bthe, k_btke, v_btke)
    if attention.rotates:  # only a caller that keeps the keys (the sampler's prefill) pays for this
        k_btke = apply_rope(k_btke, positions_bt, rope_inv_freq(config))
    return layer_output(config, layer, x_btd, o_bthe, mesh, projections), (k_btke, v_btke)


def embed(config: ModelConfig, params: dict, tokens_bt):
    return jnp.take(params["embed"], tokens_bt, axis=0).astype(config.jnp_dtype)


def unembed(config: ModelConfig, params: dict, h_btd, projections: Projections = PROJECTIONS):
    """Final norm and output projection: logits in the compute dtype."""
    h_btd = rms_norm(h_btd, params["final_norm"], config.rms_norm_eps)
    return projections.logits(config, params, h_btd)


def hidden_states(config: ModelConfig, params: dict, tokens_bt, positions_bt=None,
                  segment_ids_bt=None, *, mesh=None, return_kv: bool = False):
    """The residual stream after the last layer (before the final norm): [b, t, d].

    With ``return_kv`` also every layer's keys and values, ``[l, b, t, k, e]`` each.
    Attention is whatever ``magjax.backends`` picks for this placement and shape.
    """
    b, t = tokens_bt.shape
    if positions_bt is None:
        positions_bt = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    if segment_ids_bt is None:
        segment_ids_bt = jnp.zeros((b, t), jnp.int32)
    attention = backends.attention(config, positions_bt, segment_ids_bt, mesh=mesh)
    x_btd = shd.constrain(embed(config, params, tokens_bt), (B, T, None), mesh)

    def body(x_btd, layer):
        x_btd, kv = block(config, layer, x_btd, positions_bt, attention, mesh)
        return x_btd, (kv if return_kv else None)

    if config.remat not in (False, "none"):
        body = jax.checkpoint(body, prevent_cse=False, policy=remat_policy(config.remat))
    if config.scan_unroll >= config.num_layers:  # fully unrolled: a plain loop, see ModelConfig.scan_unroll
        kvs = []
        for layer in unstack_layers(params["layers"], config.num_layers):
            x_btd, kv = body(x_btd, layer)
            kvs.append(kv)
        kv = jax.tree.map(lambda *per_layer: jnp.stack(per_layer), *kvs) if return_kv else None
    else:
        x_btd, kv = jax.lax.scan(body, x_btd, params["layers"], unroll=config.scan_unroll)
    return (x_btd, kv) if return_kv else x_btd


def remat_policy(remat):
    """The ``jax.checkpoint`` policy of a ``ModelConfig.remat`` choice. The projections
    are 2-D products (``backends.xla.dense``), so "no batch dims" selects exactly them."""
    policies = jax.checkpoint_policies
    if remat == "save_matmuls":
        return policies.dots_with_no_batch_dims_saveable
    if remat == "offload":
        return policies.offload_dot_with_no_batch_dims("device", "pinned_host")
    return None  # per layer: nothing saved inside it


def unstack_layers(layers: dict, n: int) -> list[dict]:
    """The stacked layer weights as ``n`` per-layer dicts, with a gradient that stacks the
    layers' gradients back in one concatenation (the plain transpose of n slices would be
    n zero-padded full-size arrays summed)."""

    @jax.custom_vjp
    def unstack(layers):
        return [jax.tree.map(lambda w: w[i], layers) for i in range(n)]

    def unstack_bwd(_, per_layer_grads):
        return (jax.tree.map(lambda *g: jnp.stack(g), *per_layer_grads),)

    unstack.defvjp(lambda layers: (unstack(layers), None), unstack_bwd)
    return unstack(layers)


def forward(config: ModelConfig, params: dict, tokens_bt, positions_bt=None, segment_ids_bt=None,
            *, mesh=None):
    """Logits [b, t, v] (compute dtype). Segment ids keep packed sequences apart."""
    h_btd = hidden_states(config, params, tokens_bt, positions_bt, segment_ids_bt, mesh=mesh)
    return unembed(config, params, h_btd)


# ----------------------------------------------------------------------------- NNX face


class Decoder(nnx.Module):
    """The NNX module: owns the parameters (with logical axes) and calls ``forward``."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs | None = None, params: dict | None = None):
        if params is None:
            rngs = rngs if rngs is not None else nnx.Rngs(0)
            params = init_params(config, rngs.params())
        self.config = config
        axes = param_axes(config)
        wrap = lambda value, ax: nnx.Param(value, axes=ax)  # noqa: E731
        self.embed = wrap(params["embed"], axes["embed"])
        self.final_norm = wrap(params["final_norm"], axes["final_norm"])
        self.layers = nnx.Dict({n: wrap(params["layers"][n], axes["layers"][n]) for n in axes["layers"]})
        if not config.tie_embeddings:
            self.lm_head = wrap(params["lm_head"], axes["lm_head"])

    def params(self) -> dict:
        """The parameters as a plain dict of arrays (what the pure functions take)."""
        return nnx.to_pure_dict(nnx.state(self, nnx.Param))

    def __call__(self, tokens_bt, positions_bt=None, segment_ids_bt=None, *, mesh=None):
        return forward(self.config, self.params(), tokens_bt, positions_bt, segment_ids_bt, mesh=mesh)
