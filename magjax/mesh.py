"""Device meshes: a frozen MeshConfig becomes a ``jax.sharding.Mesh``.

Every mesh in magjax has the same three named axes, in this order:

    data   pure data parallelism (replicated parameters, sharded batch)
    fsdp   data parallelism with parameters, gradients and optimizer state sharded
    model  tensor parallelism (heads and MLP columns split across devices)

One axis may be -1, meaning "whatever devices remain". Axis types are always passed
explicitly (``jax.sharding.AxisType``) so a change of JAX's default cannot silently change
how shardings propagate; magjax uses ``Auto`` axes, with shardings given at jit
boundaries (see sharding.py).
"""

from __future__ import annotations

import dataclasses
import math
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
