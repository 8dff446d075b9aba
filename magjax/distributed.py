"""Many processes, one job: the few host exchanges magjax needs across processes.

magjax is multi-controller SPMD: every process runs the same program. Each one generates
and scores its own share of the prompts on its *local* devices (no cross-process traffic
in the sampler), then at every optimizer step the processes ``exchange`` their scored
groups, so each holds the same global batch and issues the same collectives over the
trainer's global mesh. Host objects cross processes only here.

Start-up (joining the job) is ``mesh.initialize_distributed``.
"""

from __future__ import annotations

import pickle

import jax
import numpy as np


def exchange(obj) -> list:
    """Every process's ``obj``, in process order, on every process (one process: ``[obj]``).

    Objects travel pickled, as one padded byte row per process through an all-gather; they
    come from this job's own processes, so unpickling them is as safe as running the job.
    Every process must call it at the same point of the program.
    """
    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils

    payload = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), np.uint8)
    sizes = multihost_utils.process_allgather(np.asarray([payload.size], np.int64))
    padded = np.zeros(int(np.max(sizes)), np.uint8)
    padded[: payload.size] = payload
    rows = multihost_utils.process_allgather(padded)
    return [pickle.loads(rows[i, : int(sizes[i, 0])].tobytes()) for i in range(rows.shape[0])]


def to_host(tree):
    """A tree of (possibly not fully addressable) global arrays as NumPy arrays on every process."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def global_array(x: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    """A host array that every process holds identically, placed as one global array."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
