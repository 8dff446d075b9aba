import jax
import pytest
from jax.sharding import AxisType

from magjax.mesh import MeshConfig, make_mesh, split_devices


def test_rest_axis_fills_the_remaining_devices():
    mesh = make_mesh(MeshConfig(data=2, fsdp=-1, model=2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "model": 2}
    assert mesh.axis_types == (AxisType.Auto,) * 3


def test_mesh_on_a_device_subset_keeps_its_order():
    roles = split_devices({"generator": 4, "trainer": 4})
    mesh = make_mesh(MeshConfig(data=1, fsdp=2, model=2), roles["trainer"])
    assert list(mesh.devices.flat) == jax.devices()[4:]


@pytest.mark.parametrize("config, message", [
    (dict(data=-1, fsdp=-1), "at most one axis"),
    (dict(data=0), "must be >= 1"),
])
def test_invalid_configs_say_why(config, message):
    with pytest.raises(ValueError, match=message):
        MeshConfig(**config)


def test_sizes_that_do_not_fit_the_devices_are_rejected():
    with pytest.raises(ValueError, match="needs 6 devices but 8"):
        make_mesh(MeshConfig(data=3, fsdp=2, model=1))
    with pytest.raises(ValueError, match="do not divide"):
        make_mesh(MeshConfig(data=3, fsdp=-1, model=1))
    with pytest.raises(ValueError, match="need 3 devices, have 8"):
        split_devices({"generator": 1, "trainer": 2})
