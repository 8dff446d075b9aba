"""Many processes, one job: ``jax.distributed`` start-up and the few host exchanges magjax needs.

magjax is multi-controller SPMD: every process runs the same program. Each one generates
and scores its own share of the prompts on its *local* devices (no cross-process traffic
in the sampler), then at every optimizer step the processes ``exchange`` their scored
groups, so each holds the same global batch and issues the same collectives over the
trainer's global mesh. Host objects cross processes only here.

Start-up, in ``initialize``'s order:

1. ``MAGJAX_COORDINATOR`` / ``MAGJAX_NUM_PROCESSES`` / ``MAGJAX_PROCESS_ID`` (set by
   launch/local.sh and launch/slurm_gpu.sbatch, or by hand): an explicit cluster, e.g.
   N processes on 127.0.0.1 with CPU collectives;
2. ``MAGJAX_DISTRIBUTED=auto``: ``jax.distributed.initialize()`` with no arguments, which
   reads the Cloud TPU metadata or the SLURM environment itself (launch/tpu_pod.sh);
3. otherwise: one process.
"""

from __future__ import annotations

import os
import pickle

import jax
import numpy as np

ENV_COORDINATOR, ENV_NUM, ENV_ID, ENV_AUTO = ("MAGJAX_COORDINATOR", "MAGJAX_NUM_PROCESSES", "MAGJAX_PROCESS_ID",
                                              "MAGJAX_DISTRIBUTED")


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Joins the job described by the arguments or the environment; True if multi-process.

    Must run before anything touches a device. Calling it twice is harmless."""
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR)
    if coordinator:
        try:
            num = int(num_processes if num_processes is not None else os.environ[ENV_NUM])
            pid = int(process_id if process_id is not None else os.environ[ENV_ID])
        except KeyError as err:
            raise ValueError(f"{ENV_COORDINATOR}={coordinator} is set but {err.args[0]} is not") from None
        if not 0 <= pid < num:
            raise ValueError(f"process id {pid} outside [0, {num}) for coordinator {coordinator}")
        if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
            # CPU devices talk through gloo; accelerators use their own fabric.
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator, num, pid)
        return num > 1
    if os.environ.get(ENV_AUTO) == "auto":
        jax.distributed.initialize()
        return jax.process_count() > 1
    return False


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
