"""Where each role runs: one table from (placement, processes) to the trainer's and the
rollout's meshes.

    placement      processes   trainer mesh                       rollout mesh
    colocated      1           every device                       the trainer's (one mesh, one copy of the weights)
    colocated      N > 1       every device of every process      this process's devices
    disaggregated  any         the devices no generator holds     the first generator_devices / N of this process

Colocated on one process both roles share the mesh and the weights need no copy; across
processes each process generates on its own devices (its share of the prompts) while the
trainer spans them all; disaggregated, neither role waits on the other's programs.
"""

from __future__ import annotations

import dataclasses

import jax
from jax.sharding import Mesh

from magjax.mesh import MeshConfig, make_mesh


@dataclasses.dataclass(frozen=True)
class Placement:
    trainer: Mesh
    rollout: Mesh

    @property
    def shared(self) -> bool:
        """One mesh for both roles: the rollout reads the trainer's weights as they are."""
        return self.rollout is self.trainer


def _colocated_single(trainer_mesh: MeshConfig, rollout_mesh: MeshConfig, generator_devices: int) -> Placement:
    mesh = make_mesh(trainer_mesh, jax.devices())
    return Placement(mesh, mesh)


def _colocated_multi(trainer_mesh: MeshConfig, rollout_mesh: MeshConfig, generator_devices: int) -> Placement:
    return Placement(make_mesh(trainer_mesh, jax.devices()), make_mesh(rollout_mesh, jax.local_devices()))


def _disaggregated(trainer_mesh: MeshConfig, rollout_mesh: MeshConfig, generator_devices: int) -> Placement:
    processes = jax.process_count()
    if generator_devices % processes:
        raise ValueError(f"RunConfig.generator_devices ({generator_devices}) must split evenly over "
                         f"{processes} processes")
    per_process = generator_devices // processes
    generating = [d for p in range(processes) for d in jax.local_devices(process_index=p)[:per_process]]
    training = [d for d in jax.devices() if d not in generating]
    if not training or not per_process:
        raise ValueError(f"disaggregated placement needs devices for both roles; have {len(jax.devices())}, "
                         f"generator_devices={generator_devices}")
    return Placement(make_mesh(trainer_mesh, training), make_mesh(rollout_mesh, jax.local_devices()[:per_process]))


# (placement, more than one process) -> how to lay the roles out: the table above.
PLACEMENTS = {
    ("colocated", False): _colocated_single,
    ("colocated", True): _colocated_multi,
    ("disaggregated", False): _disaggregated,
    ("disaggregated", True): _disaggregated,
}


def place(placement: str, trainer_mesh: MeshConfig, rollout_mesh: MeshConfig, generator_devices: int) -> Placement:
    """The meshes of both roles for ``placement`` (RunConfig.placement) on this job's devices."""
    key = (placement, jax.process_count() > 1)
    if key not in PLACEMENTS:
        raise ValueError(f"RunConfig.placement must be colocated or disaggregated, got {placement!r}")
    return PLACEMENTS[key](trainer_mesh, rollout_mesh, generator_devices)
