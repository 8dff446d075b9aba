"""``magjax plan``: what a configuration needs per device, before anything is allocated.

Parameters (storage dtype), optimizer state (AdamW: two float32 moments), gradients
(float32 accumulators), activations of one microbatch, and the sampler's KV cache and its
own copy of the weights, each divided over the mesh exactly as the sharding
rules place it (an abstract mesh: no devices needed, so a TPU pod's plan can be made on a
laptop). A configuration over the device memory is flagged.

What a colocated run really holds of the weights: the trainer's parameters and one sampler
copy, ``Engine.prepare``'s output (the stacked layers split into one array per layer, in
the projections' layout, and the embeddings and final norm). The weight store delivers the
trainer's own arrays and the rollout prepares them at once, keeping nothing else
(weights.py), so there is no third copy. On one mesh (one process, colocated), where the
layouts agree (every accelerator backend; not the native CPU kernels' panels), the sampler
reads the trainer's arrays and holds no copy at all (``shares_weights``): the train step
donates them to update them in place, so the generator takes turns with it
(sampling/turns.py). Counted here at the storage dtype and the parameters' sharding (the
native CPU kernels' panel layout is the same size).

Activation estimate per layer and token, in the compute dtype, without rematerialisation:
the residual, two norm outputs, q/k/v, the attention output, and the MLP's gate, up and
product (4d + 2he + 2ke + 3f values), plus float32 attention probabilities h x t per token.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from magjax import sharding as shd
from magjax.mesh import AXES, MeshConfig
from magjax.models import decoder
from magjax.models.config import ModelConfig

GB = 1e9


@dataclasses.dataclass
class Plan:
    devices: int
    mesh: dict
    params: int
    params_bytes: float  # per device
    optimizer_bytes: float
    gradient_bytes: float
    activation_bytes: float
    kv_cache_bytes: float
    sampler_weights_bytes: float  # the sampler's prepared copy of all the weights (0: it reads the trainer's)
    device_memory_bytes: float | None = None

    @property
    def total_bytes(self) -> float:
        return (self.params_bytes + self.optimizer_bytes + self.gradient_bytes + self.activation_bytes
                + self.kv_cache_bytes + self.sampler_weights_bytes)

    @property
    def fits(self) -> bool:
        return self.device_memory_bytes is None or self.total_bytes <= self.device_memory_bytes

    def describe(self) -> str:
        rows = [("parameters", self.params_bytes), ("optimizer state", self.optimizer_bytes),
                ("gradients", self.gradient_bytes), ("activations (one microbatch)", self.activation_bytes),
                ("KV cache (sampler)", self.kv_cache_bytes),
                ("weights (sampler's copy)", self.sampler_weights_bytes),
                ("total", self.total_bytes)]
        lines = [f"{self.params:,} parameters on {self.devices} devices, mesh {self.mesh}", "per device:"]
        lines += [f"  {name:<30}{b / GB:>10.2f} GB" for name, b in rows]
        if self.device_memory_bytes is not None:
            verdict = "fits" if self.fits else "DOES NOT FIT"
            lines.append(f"  device memory {self.device_memory_bytes / GB:.1f} GB: {verdict}")
        return "\n".join(lines)


def _sharded_fraction(axes, shape, mesh) -> float:
    spec = shd.logical_to_spec(axes, shape, mesh)
    sizes = dict(mesh.shape)
    split = 1
    for entry in spec:
        for a in (entry if isinstance(entry, tuple) else (entry,)) if entry else ():
            split *= sizes[a]
    return 1.0 / split


def _values(axes, shapes, mesh) -> tuple[int, float]:
    """(values in the tree, values each device holds) for parameters laid out by ``axes``."""
    is_tuple = lambda x: isinstance(x, tuple)  # noqa: E731
    leaves = list(zip(jax.tree.leaves(axes, is_leaf=is_tuple), jax.tree.leaves(shapes, is_leaf=is_tuple)))
    return (sum(math.prod(s) for _, s in leaves),
            sum(math.prod(s) * _sharded_fraction(a, s, mesh) for a, s in leaves))


def make_plan(model: ModelConfig, mesh_config: MeshConfig, devices: int, *, rows: int, row_len: int,
              slots: int, max_len: int, device_memory_gb: float | None = None, shares_weights: bool = False) -> Plan:
    sizes = mesh_config.resolve(devices)
    mesh = jax.sharding.AbstractMesh(sizes, AXES)
    axes, shapes = decoder.param_axes(model), decoder.param_shapes(model)
    count, per_device = _values(axes, shapes, mesh)
    p_bytes = np.dtype(model.jnp_param_dtype).itemsize
    c_bytes = np.dtype(model.jnp_dtype).itemsize
    d, f, h, k, e = model.hidden_size, model.intermediate_size, model.num_heads, model.num_kv_heads, model.head_dim
    batch_split = dict(mesh.shape)["data"] * dict(mesh.shape)["fsdp"]
    tokens = max(rows // batch_split, 1) * row_len
    act_per_token = (4 * d + 2 * h * e + 2 * k * e + 3 * f) * c_bytes + h * row_len * 4
    activations = model.num_layers * tokens * act_per_token
    if model.remat:
        activations = model.num_layers * tokens * d * c_bytes + tokens * act_per_token
    kv_split = max(slots // batch_split, 1) / slots
    kv_heads_split = 1 / dict(mesh.shape)["model"] if k % dict(mesh.shape)["model"] == 0 else 1.0
    kv = 2 * model.num_layers * slots * max_len * k * e * c_bytes * kv_split * kv_heads_split
    return Plan(devices, dict(mesh.shape), count, per_device * p_bytes, per_device * 8, per_device * 4,
                activations, kv, 0 if shares_weights else per_device * p_bytes,
                device_memory_gb * GB if device_memory_gb else None)
