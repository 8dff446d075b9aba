"""``magjax plan`` against hand calculations."""

import pytest

from magjax.mesh import MeshConfig
from magjax.models.config import preset
from magjax.plan import make_plan


def test_magistral_small_on_a_v5p_64_slice():
    # v5p-64: 32 chips. FSDP over all 32. Magistral Small: 23,572,403,200 parameters in bf16.
    # Every matrix and the embeddings split 32 ways over fsdp; the 81 norm vectors
    # (40 layers x 2 + final, 5,120 each = 414,720 values) are replicated.
    plan = make_plan(preset("magistral-small"), MeshConfig(data=1, fsdp=-1, model=1), 32, rows=32, row_len=8192,
                     slots=64, max_len=8192, device_memory_gb=95)
    norms = 81 * 5120
    per_device = (23_572_403_200 - norms) / 32 + norms
    assert plan.params == 23_572_403_200
    assert plan.params_bytes == pytest.approx(per_device * 2, rel=0.02)  # ~1.47 GB
    assert plan.optimizer_bytes == pytest.approx(per_device * 8, rel=0.02)  # two f32 moments, ~5.9 GB
    assert plan.gradient_bytes == pytest.approx(per_device * 4, rel=0.02)  # f32 accumulators, ~2.9 GB
    # KV cache: 2 (k, v) x 40 layers x 2 slots per device x 8192 x 8 heads x 128 x 2 bytes = 2.68 GB.
    assert plan.kv_cache_bytes == pytest.approx(2 * 40 * 2 * 8192 * 8 * 128 * 2, rel=0.02)
    # The sampler's prepared copy: every weight (the per-layer split, the embeddings and the
    # final norm; measured for the demo model in test_weights.py), in bf16: ~1.47 GB.
    assert plan.sampler_weights_bytes == pytest.approx(per_device * 2, rel=0.02)
    assert plan.total_bytes == pytest.approx(sum((plan.params_bytes, plan.optimizer_bytes, plan.gradient_bytes,
                                                  plan.activation_bytes, plan.kv_cache_bytes,
                                                  plan.sampler_weights_bytes)))


def test_a_configuration_that_cannot_fit_is_flagged():
    plan = make_plan(preset("qwen3-8b"), MeshConfig(data=1, fsdp=1, model=1), 1, rows=8, row_len=4096,
                     slots=16, max_len=4096, device_memory_gb=16)
    assert not plan.fits and "DOES NOT FIT" in plan.describe()


# ---------------------------------------------------------------- the command

def _plan(capsys, *args):
    from magjax.cli import main

    status = main(["plan", *args])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_plan_needs_no_checkpoint_and_no_dataset_and_counts_the_mesh_files_chips(capsys):
    # magistral_small.gin leaves INIT_FROM and DataConfig.train REQUIRED: a plan reads neither.
    status, out, err = _plan(capsys, "--gin_file", "experiments/magistral_small.gin", "--gin_file",
                             "mesh/tpu_v5p_64.gin")
    assert status == 0, err
    assert "ESTIMATE" in out and "devices: 32 (the chips of v5p-64)" in out
    assert "23,572,403,200 parameters on 32 devices" in out


def test_a_cpu_mesh_file_says_its_device_count_and_devices_overrides_it(capsys):
    status, out, _ = _plan(capsys, "--gin_file", "experiments/demo_cpu.gin", "--gin_file", "mesh/cpu8.gin")
    assert status == 0 and "devices: 8 (the mesh file's MESH_DEVICES)" in out
    status, out, _ = _plan(capsys, "--gin_file", "experiments/magistral_small.gin", "--gin_file",
                           "mesh/tpu_v5p_64.gin", "--devices", "64")
    assert status == 0 and "on 64 devices" in out


def test_without_libtpu_plan_names_the_extra_and_keeps_the_estimate(capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "libtpu", None)  # as where the tpu extra is not installed
    status, out, err = _plan(capsys, "--gin_file", "experiments/magistral_small.gin", "--gin_file",
                             "mesh/tpu_v5p_64.gin", "--topology", "v5p-64", "--device_memory_gb", "95")
    assert 'pip install -e ".[tpu]"' in err and "v5p-64" in err
    assert "ESTIMATE" in out and "on 32 devices" in out and "DOES NOT FIT" in out and status == 1


def test_a_bad_topology_is_named(capsys):
    status, _, err = _plan(capsys, "--gin_file", "experiments/demo_cpu.gin", "--topology", "v5p-63")
    assert status == 2 and "'v5p-63'" in err and len(err.strip().splitlines()) == 1


def test_a_mesh_that_does_not_divide_the_slice_is_named(capsys):
    from magjax.aot import topology

    if not topology.libtpu_available():
        pytest.skip(f"libtpu is not installed ({topology.INSTALL_HINT})")
    # tpu_v5e_16.gin fixes fsdp 4 x model 4 = 16 chips; a v5e-8 slice has 8.
    status, _, err = _plan(capsys, "--gin_file", "experiments/magistral_small.gin", "--gin_file",
                           "mesh/tpu_v5e_16.gin", "--topology", "v5e-8")
    assert status == 2 and "16 devices but 8" in err
