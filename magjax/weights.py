"""The weight store: how new parameters reach the generator (DESIGN.md, weight path).

After each optimizer step the trainer ``publish``es (params, version). Colocated, the
trainer's own arrays are delivered, uncopied: the receiver must be done with them when
``deliver`` returns, because the next train step donates them. The rollout is
(``Rollout.set_weights`` lays them out for its engine at once, and keeps only that), so a
colocated run holds the trainer's parameters and the sampler's prepared copy, no third. A
run on one mesh can hold only the trainer's: an engine whose projections read the
trainer's layout keeps the delivered arrays as they are (``Engine(share_weights=True)``),
nothing generates while the trainer steps (sync by construction, async by turns:
sampling/turns.py), and each step's publication replaces them before the next generation.
Disaggregated, the params are
resharded onto the generator's mesh and cast to its dtype, then validated (tree, shapes,
dtypes, shardings) before the version becomes visible. Each publication is timed. This is
the only module that moves parameters between meshes.

Across processes (see distributed.py) the trainer's arrays span every host while each
generator holds a full copy on its host's devices: each leaf is all-gathered over the
trainer mesh, one leaf at a time so the transient copy stays one tensor large, and its
local replica placed on the generator's sub-mesh.
"""

from __future__ import annotations

import collections
import functools
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec


class WeightValidationError(RuntimeError):
    """Published weights that do not match what the generator expects."""


class WeightStore:
    def __init__(self, deliver: Callable[[dict, int], None], *, shardings=None, dtype=None):
        """``deliver(params, version)`` hands weights to the generator (Generator.set_weights).

        ``shardings`` (a params-shaped tree of NamedShardings on the generator's mesh) and
        ``dtype`` describe the generator's layout; None keeps the trainer's (colocated).
        """
        self.deliver, self.shardings, self.dtype = deliver, shardings, dtype
        self.version = 0
        self.publish_seconds: collections.deque[float] = collections.deque(maxlen=1024)  # the latest, bounded

    def publish(self, params: dict, version: int) -> float:
        start = time.perf_counter()
        if self.shardings is None:  # the trainer's arrays themselves (see the module docstring)
            out = params if self.dtype is None else jax.tree.map(lambda x: x.astype(self.dtype), params)
        else:
            out = jax.tree.map(_place, params, self.shardings)
            if self.dtype is not None:
                out = jax.tree.map(lambda x: x.astype(self.dtype), out)
            self.validate(params, out)
        jax.block_until_ready(out)
        self.deliver(out, version)
        self.version = version
        seconds = time.perf_counter() - start
        self.publish_seconds.append(seconds)
        return seconds

    def validate(self, source: dict, placed: dict):
        src_leaves, src_tree = jax.tree.flatten(source)
        out_leaves, out_tree = jax.tree.flatten(placed)
        if src_tree != out_tree:
            raise WeightValidationError(f"published tree {out_tree} differs from the trainer's {src_tree}")
        want = jax.tree.leaves(self.shardings)
        paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(source)[0]]
        for path, a, b, sharding in zip(paths, src_leaves, out_leaves, want):
            if a.shape != b.shape:
                raise WeightValidationError(f"{path}: shape {b.shape} != trainer's {a.shape}")
            want_dtype = jnp.dtype(self.dtype if self.dtype is not None else a.dtype)  # None keeps the trainer's
            if b.dtype != want_dtype:
                raise WeightValidationError(f"{path}: dtype {b.dtype} != generator's {want_dtype}")
            if not b.sharding.is_equivalent_to(sharding, b.ndim):
                raise WeightValidationError(f"{path}: sharding {b.sharding} != generator's {sharding}")


@functools.cache
def _gather_to_all(mesh) -> Callable:
    return jax.jit(lambda x: x, out_shardings=NamedSharding(mesh, PartitionSpec()))


def _place(x: jax.Array, sharding) -> jax.Array:
    if x.is_fully_addressable:
        return jax.device_put(x, sharding)
    full = _gather_to_all(x.sharding.mesh)(x)  # an all-gather: a collective every process joins
    return jax.device_put(full.addressable_data(0), sharding)
