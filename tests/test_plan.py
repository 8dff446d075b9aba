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
    # The sampler's per-layer copy: everything but the input and output embeddings (131,072 x
    # 5,120 each) and the final norm, in bf16; the 80 layer norms replicated. ~1.39 GB.
    layers = 23_572_403_200 - 2 * 131_072 * 5_120 - 5_120
    assert plan.sampler_weights_bytes == pytest.approx(((layers - 80 * 5120) / 32 + 80 * 5120) * 2, rel=0.02)
    assert plan.total_bytes == pytest.approx(sum((plan.params_bytes, plan.optimizer_bytes, plan.gradient_bytes,
                                                  plan.activation_bytes, plan.kv_cache_bytes,
                                                  plan.sampler_weights_bytes)))


def test_a_configuration_that_cannot_fit_is_flagged():
    plan = make_plan(preset("qwen3-8b"), MeshConfig(data=1, fsdp=1, model=1), 1, rows=8, row_len=4096,
                     slots=16, max_len=4096, device_memory_gb=16)
    assert not plan.fits and "DOES NOT FIT" in plan.describe()
