"""An experiment's configuration as ``magjax plan`` reads it: shapes only, never data or weights.

Values a recipe leaves at ``%gin.REQUIRED`` (the checkpoint to start from, the dataset) are
what a run loads, not what it allocates, so they read as None here. The architecture is
the ``MODEL`` preset (a run starting from a checkpoint reads the same architecture from its
config.json), with the recipe's ``train.remat``. Mesh files say which slice (``MESH_SLICE``) or how many devices
(``MESH_DEVICES``) they are for.
"""

from __future__ import annotations

import dataclasses

from magjax import config
from magjax.mesh import MeshConfig
from magjax.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Recipe:
    model_name: str  # the MODEL preset
    model: ModelConfig
    run: object  # loop.RunConfig
    engine: object  # sampling.engine.EngineConfig
    sampling: object  # sampling.engine.SamplingConfig
    packing: object  # rl.batching.PackingConfig
    loss: object  # rl.losses.LossConfig
    optimizer: object  # rl.optimizer.OptimizerConfig
    mesh_slice: str | None  # MESH_SLICE of the mesh file, e.g. "v5p-64"
    mesh_devices: int | None  # MESH_DEVICES of the mesh file

    @property
    def trainer_mesh(self) -> MeshConfig:
        return self.run.trainer_mesh

    @property
    def generator_mesh(self) -> MeshConfig:
        return self.run.generator_mesh


def _macro(name: str):
    import gin

    try:
        return gin.query_parameter(f"{name}/macro.value")
    except ValueError:
        return None


def _parameter(name: str):
    import gin

    try:
        return gin.query_parameter(name)
    except ValueError:
        return None


def load(files: list[str], bindings: list[str]) -> Recipe:
    """Parses the gin files and bindings; raises config.ConfigError or ValueError naming what is wrong."""
    config.parse(files, bindings, required_as_none=True)
    built = config.build_abstract()
    model = built["model"]
    remat = _parameter("train.remat")
    if remat is not None:  # what the run trains with (experiment.train applies it)
        model = model.replace(remat=remat)
    return Recipe(str(_macro("MODEL") or model.family), model, built["RunConfig"],
                  built["EngineConfig"], built["SamplingConfig"], built["PackingConfig"], built["LossConfig"],
                  built["OptimizerConfig"], _macro("MESH_SLICE"), _macro("MESH_DEVICES"))
