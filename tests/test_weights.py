"""The weight store: what reaches the generator is checked leaf by leaf before it is used."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from magjax.models import decoder, preset
from magjax.weights import WeightStore, WeightValidationError

CONFIG = preset("test")


def _published(mesh_from, mesh_to, dtype=None):
    """Trainer parameters laid out on ``mesh_from``, published to a generator on ``mesh_to``."""
    params = jax.device_put(decoder.init_params(CONFIG, jax.random.key(0)), decoder.param_shardings(CONFIG, mesh_from))
    delivered = []
    store = WeightStore(lambda p, v: delivered.append((p, v)), shardings=decoder.param_shardings(CONFIG, mesh_to),
                        dtype=dtype)
    store.publish(params, 3)
    [(placed, version)] = delivered
    return store, params, placed, version


def test_a_resharded_publication_arrives_in_the_generators_layout(mesh_2x4, mesh_1x8):
    store, params, placed, version = _published(mesh_2x4, mesh_1x8, dtype=jnp.bfloat16)
    assert version == 3 and store.version == 3 and len(store.publish_seconds) == 1
    want = decoder.param_shardings(CONFIG, mesh_1x8)
    for a, b, s in zip(jax.tree.leaves(params), jax.tree.leaves(placed), jax.tree.leaves(want)):
        assert b.dtype == jnp.bfloat16 and b.sharding.is_equivalent_to(s, b.ndim)
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a.astype(jnp.bfloat16)))


def _with_leaf(tree, name, value):
    out = dict(tree, layers=dict(tree["layers"]))
    out["layers"][name] = value
    return out


@pytest.mark.parametrize("dtype", [None, jnp.bfloat16])
def test_the_store_refuses_a_wrong_shape_dtype_or_sharding_naming_the_leaf(mesh_2x4, mesh_1x8, dtype):
    """A wrong leaf among correct ones: the error names it (and only that one) and says
    what was expected. With dtype None the generator expects the trainer's dtypes."""
    store, params, placed, _ = _published(mesh_2x4, mesh_1x8, dtype=dtype)
    store.validate(params, placed)  # the real publication passes
    good = placed["layers"]["wq"]
    wrong = {
        "shape": jax.device_put(jnp.zeros(good.shape[:-1] + (good.shape[-1] + 1,), good.dtype), good.sharding),
        "dtype": good.astype(jnp.float16),
        "sharding": jax.device_put(good, NamedSharding(mesh_1x8, PartitionSpec(None, "data"))),  # split, not replicated
    }
    for what, leaf in wrong.items():
        with pytest.raises(WeightValidationError, match=rf"^\['layers'\]\['wq'\]: {what} ") as err:
            store.validate(params, _with_leaf(placed, "wq", leaf))
        assert "wk" not in str(err.value)
    with pytest.raises(WeightValidationError, match="tree"):
        store.validate(params, {k: v for k, v in placed.items() if k != "lm_head"})
