"""Where each role runs on a slice, as the training loop places them (loop.py ``_meshes``).

A slice of H hosts runs one process per host. The trainer's mesh spans every chip
(colocated) or every chip not generating (disaggregated); each process's generator runs on
its own host's chips (all of them colocated, ``generator_devices / H`` disaggregated), with
``EngineConfig.slots`` slots. On a one-host slice, colocated roles share one mesh.
"""

from __future__ import annotations

import dataclasses

from jax.sharding import Mesh

from magjax.aot import topology
from magjax.aot.topology import Slice
from magjax.mesh import make_mesh


def _one_host(slice_: Slice, chips: list) -> list:
    """One host's chips for the program each process compiles for its own chips. libtpu
    compiles a program for n chips only where their ids are 0..n-1; a host's chips are not
    numbered so on every slice (v5e-16's first host has chips 0, 1, 4 and 5), so then the
    chips of a one-host slice of the same generation stand in: the same program, compiled
    for the same kind and number of chips."""
    if sorted(d.id for d in chips) == list(range(len(chips))):
        return chips
    grid = slice_.chips_per_host_bounds[:slice_.generation.dims]
    return list(topology.devices(Slice(f"{slice_.name} (one host)", slice_.generation, tuple(grid))))[:len(chips)]


@dataclasses.dataclass(frozen=True)
class Placement:
    trainer: Mesh
    generator: Mesh
    colocated: bool  # the roles share chips: their memory adds up on every chip
    same_mesh: bool  # publication hands the trainer's arrays over without moving them


def place(run, slice_: Slice, devices: tuple) -> Placement:
    """``run`` is the experiment's RunConfig; ``devices`` the slice's, in topology order."""
    hosts = slice_.hosts
    per_host = len(devices) // hosts
    host_devices = [list(devices[h * per_host:(h + 1) * per_host]) for h in range(hosts)]
    if run.placement == "disaggregated":
        if run.generator_devices % hosts:
            raise ValueError(f"RunConfig.generator_devices ({run.generator_devices}) must split evenly over the "
                             f"{hosts} hosts of {slice_.name}")
        per_process = run.generator_devices // hosts
        if not 0 < per_process < per_host:
            raise ValueError(f"disaggregated placement needs chips for both roles on each host of {slice_.name}: "
                             f"{per_host} per host, generator_devices={run.generator_devices}; set "
                             f"--gin.RunConfig.generator_devices to a multiple of {hosts} from {hosts} to "
                             f"{(per_host - 1) * hosts}, or --gin.RunConfig.placement=\"'colocated'\"")
        generating = [d for host in host_devices for d in host[:per_process]]
        training = [d for d in devices if d not in generating]
        return Placement(make_mesh(run.trainer_mesh, training),
                         make_mesh(run.generator_mesh, _one_host(slice_, host_devices[0][:per_process])), False, False)
    trainer = make_mesh(run.trainer_mesh, list(devices))
    if hosts == 1:
        return Placement(trainer, trainer, True, True)
    return Placement(trainer, make_mesh(run.generator_mesh, _one_host(slice_, host_devices[0])), True, False)
