import json
import os

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from magjax import sharding as shd
from magjax.models import PRESETS, decoder
from magjax.models.config import preset

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "golden", "tiny_2x4_partition_specs.json")


def _specs(config, mesh) -> dict:
    shardings = decoder.param_shardings(config, mesh)
    flat = jax.tree_util.tree_flatten_with_path(shardings)[0]
    return {jax.tree_util.keystr(path): str(s.spec) for path, s in flat}


def test_rules_cover_exactly_the_vocabulary():
    assert set(shd.RULES) == set(shd.LOGICAL_AXES)


def test_logical_to_spec_is_shape_aware(mesh_2x4):
    # 2 KV heads do not divide over the 4-way model axis: replicated, not padded.
    assert shd.logical_to_spec(("embed", "kv_heads", "head_dim"), (64, 2, 8), mesh_2x4) == P("fsdp")
    assert shd.logical_to_spec(("embed", "heads", "head_dim"), (64, 8, 8), mesh_2x4) == P("fsdp", "model")
    assert shd.logical_to_spec(("batch", "sequence"), (8, 16), mesh_2x4) == P("fsdp")
    with pytest.raises(ValueError, match="unknown logical axis 'embd'"):
        shd.logical_to_spec(("embd",), (4,), mesh_2x4)


def test_tiny_preset_partition_specs_match_golden(mesh_2x4):
    specs = _specs(preset("tiny"), mesh_2x4)
    if os.environ.get("MAGJAX_UPDATE_GOLDEN"):
        os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
        with open(GOLDEN, "w") as f:
            json.dump(specs, f, indent=2, sort_keys=True)
    with open(GOLDEN) as f:
        assert specs == json.load(f)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_no_parameter_uses_a_mesh_axis_twice(name, mesh_1x8, mesh_2x4):
    for mesh in (mesh_1x8, mesh_2x4):
        for sharding in jax.tree.leaves(decoder.param_shardings(PRESETS[name], mesh)):
            axes = [a for entry in sharding.spec if entry for a in (entry if isinstance(entry, tuple) else (entry,))]
            assert len(axes) == len(set(axes)), (name, sharding.spec)


def test_big_presets_shard_their_large_matrices(mesh_2x4):
    specs = _specs(preset("llama-3.1-8b"), mesh_2x4)
    assert specs["['layers']['wq']"] == str(P(None, "fsdp", "model"))
    assert specs["['layers']['w_down']"] == str(P(None, "model", "fsdp"))
    assert specs["['embed']"] == str(P("model", "fsdp"))
    np.testing.assert_equal(specs["['layers']['attn_norm']"], str(P()))
