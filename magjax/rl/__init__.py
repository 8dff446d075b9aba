"""The trainer: advantages, the GRPO and SFT losses, batch packing, the jitted train step."""

import dataclasses as _dataclasses

import jax as _jax

from magjax.types import TrainBatch as _TrainBatch

# The one array record that crosses into jitted code: a pytree of its fields.
_jax.tree_util.register_dataclass(_TrainBatch, data_fields=[f.name for f in _dataclasses.fields(_TrainBatch)],
                                  meta_fields=[])
