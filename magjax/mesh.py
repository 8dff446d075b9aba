"""Device meshes: a frozen MeshConfig becomes a ``jax.sharding.Mesh``.

Every mesh in magjax has the same three named axes, in this order:

    data   pure data parallelism (replicated parameters, sharded batch)
    fsdp   data parallelism with parameters, gradients and optimizer state sharded
    model  tensor parallelism (heads and MLP columns split across devices)

One axis may be -1, meaning "whatever devices remain". Axis types are always passed
explicitly (``jax.sharding.AxisType``) so a change of JAX's default cannot silently change
how shardings propagate; magjax uses ``Auto`` axes, with shardings given at jit
boundaries (see sharding.py).

Many processes (``initialize_distributed``), in this order:

1. ``MAGJAX_COORDINATOR`` / ``MAGJAX_NUM_PROCESSES`` / ``MAGJAX_PROCESS_ID`` (set by
   launch/local.sh and launch/slurm_gpu.sbatch, or by hand): an explicit cluster, e.g.
   N processes on 127.0.0.1 with CPU collectives;
2. ``MAGJAX_DISTRIBUTED=auto``: ``jax.distributed.initialize()`` with no arguments, which
   reads the Cloud TPU metadata or the SLURM environment itself (launch/tpu_pod.sh);
3. otherwise: one process.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

AXES = ("data", "fsdp", "model")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the mesh axes; their product must equal the number of devices used."""

    data: int = 1  # data-parallel replicas
    fsdp: int = -1  # fully-sharded data parallelism; -1 = the rest of the devices
    model: int = 1  # tensor parallelism over heads and MLP columns

    def __post_init__(self):
        sizes = self.sizes()
        if sum(s == -1 for s in sizes) > 1:
            raise ValueError(f"MeshConfig: at most one axis may be -1, got {self}")
        for name, size in zip(AXES, sizes):
            if size != -1 and size < 1:
                raise ValueError(f"MeshConfig.{name} must be >= 1 or -1, got {size}")

    def sizes(self) -> tuple[int, int, int]:
        return (self.data, self.fsdp, self.model)

    def resolve(self, num_devices: int) -> tuple[int, int, int]:
        """The concrete axis sizes for ``num_devices`` devices (fills in the -1)."""
        sizes = list(self.sizes())
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if num_devices % known:
                raise ValueError(
                    f"MeshConfig {self}: {num_devices} devices do not divide by the fixed axes' "
                    f"product {known}"
                )
            sizes[sizes.index(-1)] = num_devices // known
        elif known != num_devices:
            raise ValueError(
                f"MeshConfig {self} needs {known} devices but {num_devices} are available"
            )
        return tuple(sizes)


def make_mesh(config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds the mesh over ``devices`` (default: every device of every process).

    With all devices, ``jax.make_mesh`` orders them for the physical topology (ICI rings
    on TPU); for an explicit subset (a role's sub-mesh) the given order is kept.
    """
    axis_types = (AxisType.Auto,) * len(AXES)
    if devices is None:
        shape = config.resolve(jax.device_count())
        return jax.make_mesh(shape, AXES, axis_types=axis_types)
    shape = config.resolve(len(devices))
    return Mesh(np.asarray(devices, dtype=object).reshape(shape), AXES, axis_types=axis_types)


def split_devices(
    roles: dict[str, int], devices: Sequence[jax.Device] | None = None
) -> dict[str, list[jax.Device]]:
    """Splits devices between roles, e.g. ``{"generator": 4, "trainer": 4}``, in order."""
    devices = list(jax.devices() if devices is None else devices)
    if sum(roles.values()) != len(devices):
        raise ValueError(f"roles {roles} need {sum(roles.values())} devices, have {len(devices)}")
    out, start = {}, 0
    for role, count in roles.items():
        out[role] = devices[start : start + count]
        start += count
    return out


ENV_COORDINATOR, ENV_NUM, ENV_ID, ENV_AUTO = ("MAGJAX_COORDINATOR", "MAGJAX_NUM_PROCESSES", "MAGJAX_PROCESS_ID",
                                              "MAGJAX_DISTRIBUTED")


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
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
