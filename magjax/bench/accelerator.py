"""``magjax bench accelerator``: the train step and the sampler on a GPU or TPU, checked.

One command for the first minutes on a new accelerator. On the default backend it runs a
small model's bfloat16 train step and sampler (the same workloads as ``bench train`` and
``bench sampler``), compares the accelerator's bfloat16 log-probs with a float32 reference
computed on the host CPU from the same weights, and reports tokens/s and MFU against the
chip's published peak (and against a matmul measured on the chip in the same run).

A wrong kernel shows up as a log-prob gap far above bfloat16's rounding (about 1e-2 nats
on average for a model this size); a slow one as an MFU far below the measured matmul's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from magjax.bench import ceilings
from magjax.bench import sampler as sampler_bench
from magjax.bench import train as train_bench
from magjax.models import decoder, preset

# Dense bfloat16 peak FLOP/s per chip, from the vendors' data sheets, matched against
# ``device_kind`` (first match wins, so longer names come first).
PEAK_BF16_FLOPS = (
    ("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12),
    ("TPU v6", 918e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12), ("TPU v5", 459e12),
    ("TPU v4", 275e12),
)
# Mean |log p_bf16 - log p_f32| above this is a kernel bug, not rounding.
LOGPROB_GAP_LIMIT = 0.05


def chip_peak(device_kind: str) -> float | None:
    for name, flops in PEAK_BF16_FLOPS:
        if name.lower() in device_kind.lower():
            return flops
    return None


def logprob_gap(preset_name: str, *, rows: int = 4, seq: int = 256, seed: int = 0) -> dict:
    """Mean and max |log p| difference between the default backend in bfloat16 and the
    host CPU in float32, for the same float32 weights and random tokens."""
    config = preset(preset_name)
    f32 = config.replace(param_dtype="float32", dtype="float32")
    bf16 = config.replace(param_dtype="bfloat16", dtype="bfloat16")
    cpu = jax.devices("cpu")[0]
    params = jax.device_put(decoder.init_params(f32, jax.random.key(seed)), cpu)
    tokens_bt = np.random.default_rng(seed).integers(1, config.vocab_size, (rows, seq + 1)).astype(np.int32)
    inputs_bt, targets_bt = tokens_bt[:, :-1], tokens_bt[:, 1:]

    def logprobs(model_config, params, inputs_bt, targets_bt):
        logits_btv = decoder.forward(model_config, params, inputs_bt).astype(jnp.float32)
        logp_btv = jax.nn.log_softmax(logits_btv, axis=-1)
        return jnp.take_along_axis(logp_btv, targets_bt[..., None], axis=-1)[..., 0]

    # Inputs committed to the CPU keep the reference computation there.
    reference_bt = np.asarray(jax.jit(lambda p, x, y: logprobs(f32, p, x, y))(
        params, jax.device_put(inputs_bt, cpu), jax.device_put(targets_bt, cpu)))
    accel = jax.devices()[0]
    params_bf16 = jax.device_put(jax.tree.map(lambda x: x.astype(jnp.bfloat16), params), accel)
    measured_bt = np.asarray(jax.jit(lambda p, x, y: logprobs(bf16, p, x, y))(
        params_bf16, jax.device_put(inputs_bt, accel), jax.device_put(targets_bt, accel)))
    gap_bt = np.abs(measured_bt - reference_bt)
    return {"mean_abs_gap": float(gap_bt.mean()), "max_abs_gap": float(gap_bt.max()),
            "tokens": int(gap_bt.size), "limit": LOGPROB_GAP_LIMIT, "ok": bool(gap_bt.mean() <= LOGPROB_GAP_LIMIT)}


def run(preset_name: str = "small") -> dict:
    device = jax.devices()[0]
    kind = getattr(device, "device_kind", device.platform)
    gap = logprob_gap(preset_name)
    train = train_bench.run(preset_name, dtype="bfloat16")
    sampler = sampler_bench.run(preset_name, dtype="bfloat16")
    peak = chip_peak(kind)
    return {"bench": "accelerator", "preset": preset_name, "platform": device.platform, "device_kind": kind,
            "device": ceilings.device_description(), "logprob_gap": gap, "train": train, "sampler": sampler,
            "chip_peak_flops_per_s": peak,
            "train_mfu_of_chip_peak": train["model_flops_per_s"] / peak if peak else None}


def describe(r: dict) -> str:
    gap = r["logprob_gap"]
    peak = r["chip_peak_flops_per_s"]
    lines = [f"accelerator check  preset={r['preset']} on {r['device']}",
             f"  log-probs, bfloat16 here vs float32 on the host CPU over {gap['tokens']} tokens: mean |gap| "
             f"{gap['mean_abs_gap']:.4f}, max {gap['max_abs_gap']:.4f} nats "
             f"({'ok' if gap['ok'] else 'TOO LARGE'}; limit {gap['limit']})",
             train_bench.describe(r["train"]),
             sampler_bench.describe(r["sampler"])]
    if peak:
        lines.append(f"  train MFU against the chip's bfloat16 peak ({peak / 1e12:.0f} TFLOP/s): "
                     f"{100 * r['train_mfu_of_chip_peak']:.1f}%")
    else:
        lines.append(f"  no published peak known for {r['device_kind']!r}; MFU above is against the measured matmul")
    return "\n".join(lines)
