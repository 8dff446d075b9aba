"""Logical axes and the one table that maps them to mesh axes.

Every parameter and every sharded activation names its dimensions with logical axes from
the closed vocabulary below; ``RULES`` says which mesh axes each one may be split over.
Resolution is shape-aware: a dimension that the mesh axes do not divide evenly is
replicated rather than padded (tiny test models have fewer KV heads than a 4-way model
axis), and no mesh axis is ever used twice within one array.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# The closed vocabulary. Anything else is a typo and raises.
BATCH = "batch"  # sequences in a batch, or sampler slots
SEQUENCE = "sequence"  # token positions
EMBED = "embed"  # model width d
MLP = "mlp"  # MLP hidden width f
HEADS = "heads"  # query heads h
KV_HEADS = "kv_heads"  # key/value heads k
HEAD_DIM = "head_dim"  # per-head width e
VOCAB = "vocab"  # vocabulary v
LAYERS = "layers"  # stacked layer axis l
NORM = "norm"  # RMSNorm scales: small, always replicated
MICROBATCH = "microbatch"  # gradient-accumulation axis m: never sharded
LOGICAL_AXES = (BATCH, SEQUENCE, EMBED, MLP, HEADS, KV_HEADS, HEAD_DIM, VOCAB, LAYERS, NORM, MICROBATCH)

# Logical axis -> mesh axes it may be split over (in order of preference, combined).
# Parameters: the embed dimension is FSDP-sharded, heads/MLP/vocab are tensor-parallel.
# Activations: the batch is split over both data-parallel axes.
RULES: dict[str, tuple[str, ...]] = {
    BATCH: ("data", "fsdp"),
    SEQUENCE: (),
    EMBED: ("fsdp",),
    MLP: ("model",),
    HEADS: ("model",),
    KV_HEADS: ("model",),
    HEAD_DIM: (),
    VOCAB: ("model",),
    LAYERS: (),
    NORM: (),
    MICROBATCH: (),
}


def logical_to_spec(
    axes: Sequence[str | None], shape: Sequence[int] | None, mesh: Mesh, rules=None
) -> PartitionSpec:
    """Resolves logical axis names to a PartitionSpec for an array of ``shape`` on ``mesh``.

    With ``shape=None`` divisibility is not checked (for activations of unknown size).
    """
    rules = RULES if rules is None else rules
    used: set[str] = set()
    spec = []
    for i, name in enumerate(axes):
        if name is None:
            spec.append(None)
            continue
        if name not in rules:
            raise ValueError(f"unknown logical axis {name!r}; known: {sorted(rules)}")
        chosen = []
        for mesh_axis in rules[name]:
            size = mesh.shape[mesh_axis]
            if mesh_axis in used or size == 1:
                continue
            divisor = math.prod(mesh.shape[a] for a in chosen) * size
            if shape is not None and shape[i] % divisor:
                continue
            chosen.append(mesh_axis)
        used.update(chosen)
        spec.append(tuple(chosen) if len(chosen) > 1 else (chosen[0] if chosen else None))
    while spec and spec[-1] is None:
        spec.pop()
    return PartitionSpec(*spec)


def full_spec(axes: Sequence[str | None], shape: Sequence[int] | None, mesh: Mesh, rules=None) -> PartitionSpec:
    """``logical_to_spec`` with an entry for every dimension (no trailing Nones trimmed),
    for code that reads a dimension's entry by index (shard_map specs built from it)."""
    spec = logical_to_spec(axes, shape, mesh, rules)
    return PartitionSpec(*spec, *(None,) * (len(axes) - len(spec)))


def shard_count(mesh: Mesh, entry) -> int:
    """How many parts a PartitionSpec entry (None, a mesh axis or a tuple of them) splits a dimension into."""
    axes = () if entry is None else (entry,) if isinstance(entry, str) else entry
    return math.prod(mesh.shape[a] for a in axes)


def named_sharding(axes, shape, mesh: Mesh, rules=None) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(axes, shape, mesh, rules))


def tree_shardings(axes_tree, shapes_tree, mesh: Mesh, rules=None):
    """Maps a tree of logical-axes tuples and a matching tree of shapes to NamedShardings."""
    return jax.tree.map(
        lambda axes, shape: named_sharding(axes, shape, mesh, rules),
        axes_tree,
        shapes_tree,
        is_leaf=lambda x: isinstance(x, tuple) and all(isinstance(a, (str, type(None))) for a in x),
    )


def constrain(x: jax.Array, axes: Sequence[str | None], mesh: Mesh | None) -> jax.Array:
    """A sharding constraint on an activation, or nothing when running without a mesh."""
    if mesh is None or mesh.size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, named_sharding(axes, x.shape, mesh))
