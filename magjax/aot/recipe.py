"""An experiment's configuration as ``magjax plan`` reads it: shapes only, never data or weights.

Values a recipe leaves at ``%gin.REQUIRED`` (the checkpoint to start from, the dataset) are
what a run loads, not what it allocates, so they read as None here. The architecture is
the ``MODEL`` preset (a run starting from a checkpoint reads the same architecture from its
config.json), with the recipe's ``Recipe.remat``. Mesh files say which slice (``MESH_SLICE``) or how many devices
(``MESH_DEVICES``) they are for.
"""

from __future__ import annotations

import dataclasses

from magjax import config
from magjax.mesh import MeshConfig
from magjax.models.config import ModelConfig
from magjax.recipe import Recipe


@dataclasses.dataclass(frozen=True)
class Planned:
    """The run's own recipe (magjax.recipe.Recipe), as built from the gin files, and what
    the mesh file says of the hardware. Every recipe setting reads through: ``planned.run``,
    ``planned.engine``, ...; ``model`` is the architecture itself (a ModelConfig)."""

    recipe: Recipe
    model_name: str  # the MODEL preset
    mesh_slice: str | None  # MESH_SLICE of the mesh file, e.g. "v5p-64"
    mesh_devices: int | None  # MESH_DEVICES of the mesh file

    def __getattr__(self, name: str):
        if name.startswith("__"):  # copy/pickle probe dunders: not recipe settings
            raise AttributeError(name)
        return getattr(self.recipe, name)

    @property
    def model(self) -> ModelConfig:
        return self.recipe.model_config

    @property
    def trainer_mesh(self) -> MeshConfig:
        return self.recipe.run.trainer_mesh

    @property
    def generator_mesh(self) -> MeshConfig:
        return self.recipe.run.generator_mesh

    def with_packing(self, packing) -> Planned:
        return dataclasses.replace(self, recipe=dataclasses.replace(self.recipe, packing=packing))


def load(files: list[str], bindings: list[str]) -> Planned:
    """Parses the gin files and bindings; raises config.ConfigError or ValueError naming what is wrong."""
    config.parse(files, bindings, required_as_none=True)
    recipe = config.recipe()  # every dataclass validates as it is built
    return Planned(recipe, str(config.macro("MODEL") or recipe.model_config.family), config.macro("MESH_SLICE"),
                   config.macro("MESH_DEVICES"))
