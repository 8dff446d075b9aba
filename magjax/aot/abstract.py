"""The arguments of the experiment's functions as shapes, dtypes and shardings (no arrays).

Each helper mirrors how the run builds the real thing: the train state as
``train_step.init_state`` lays it out from parameters placed by ``decoder.param_shardings``
(optimizer moments sharded as their parameters; the layout is read from that compiled program),
the batch at the experiment's microbatch shape, the sampler's state as ``Engine.init_state``
builds it.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from magjax.models import decoder
from magjax.rl import optimizer as opt_lib
from magjax.rl import train_step
from magjax.types import TrainBatch


def with_shardings(shapes, shardings):
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def params(model, mesh):
    shapes = jax.eval_shape(lambda: decoder.init_params(model, jax.random.key(0)))
    return with_shardings(shapes, decoder.param_shardings(model, mesh))


def init_state_fn(recipe, params):
    """(the run's state initialisation, ``train_step.init_state_fn``, as one jitted function
    of the parameters ``params`` (abstract, with shardings), the optimizer, its schedule);
    with a frozen reference copy of the parameters when the loss has a KL term."""
    tx, schedule = opt_lib.make_optimizer(recipe.optimizer)
    with_ref = recipe.loss.kl_coef > 0
    init = train_step.init_state_fn(tx, params, with_ref=with_ref)
    return jax.jit(lambda p: init(p, p if with_ref else None)), tx, schedule


def microbatches(recipe) -> int:
    """Microbatches in one train step for the largest minibatch, one sequence per row (the
    most rows a minibatch can need), rounded up to a power of two as batching.pack does."""
    run, rows = recipe.run, recipe.packing.rows
    largest = max([run.n_batch] + [s.n_batch for s in run.stages if getattr(s, "n_batch", None)])
    per_minibatch = -(-largest // run.n_minibatch)
    needed = max(1, -(-per_minibatch // rows))
    return 1 << (needed - 1).bit_length()


def train_batch(recipe, mesh, m: int) -> TrainBatch:
    shape = (m, recipe.packing.rows, recipe.packing.row_len)
    sharding = train_step.batch_sharding(mesh)
    ints = [jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding) for _ in range(4)]
    floats = [jax.ShapeDtypeStruct(shape, jnp.float32, sharding=sharding) for _ in range(3)]
    return TrainBatch(*ints, *floats)


def decode_state(engine):
    """The sampler's slots and KV cache, as ``Engine.init_state`` builds and places them."""
    shapes = jax.eval_shape(engine.init_state)
    return with_shardings(shapes, engine.state_shardings())


def scalar(mesh, dtype=jnp.int32, shape=()):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


def per_chip_bytes(tree) -> int:
    """Bytes one chip holds of an abstract tree: each leaf's shard (the largest, where shards differ)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shard = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += math.prod(shard) * jnp.dtype(leaf.dtype).itemsize
    return total

