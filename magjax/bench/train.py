"""``magjax bench train``: tokens/s of the GRPO train step and its model FLOP utilisation.

The workload is the one the peers' scripts time: 16 sequences of 64 prompt + 192
completion tokens, one optimizer step (forward, backward, AdamW). Model FLOPs are counted
as 6 * N * T with N the matmul parameters (as the peers count them) plus attention.
"""

from __future__ import annotations

import statistics

import jax
import numpy as np

from magjax.backends import race
from magjax.bench import ceilings, data_mesh
from magjax.models import decoder, preset
from magjax.rl import batching, optimizer, train_step
from magjax.rl.losses import LossConfig
from magjax.types import Completion, ScoredGroup


def synthetic_groups(vocab: int, batch: int, prompt_len: int, completion_len: int, group_size: int = 4):
    """The peers' batch: random prompt and completion ids, random rewards, fixed lengths."""
    rng = np.random.default_rng(0)
    groups = []
    for i in range(batch // group_size):
        comps = [Completion(f"b{i}", g, rng.integers(1, vocab, prompt_len).tolist(),
                            rng.integers(1, vocab, completion_len).tolist(),
                            (-np.log(vocab) + 0.01 * rng.standard_normal(completion_len)).tolist(),
                            [0] * completion_len) for g in range(group_size)]
        groups.append(ScoredGroup(f"b{i}", comps, rng.standard_normal(group_size).tolist()))
    return groups


def model_flops_per_token(config) -> float:
    """Training FLOPs per token in the matmuls: 6 x matmul parameters (attention is added by ``run``)."""
    matmul_params = config.num_params() - config.vocab_size * config.hidden_size * (0 if config.tie_embeddings else 1)
    matmul_params -= config.num_layers * 2 * config.hidden_size + config.hidden_size  # norms
    return 6.0 * matmul_params


def run(preset_name: str, *, dtype: str = "float32", batch: int = 16, prompt_len: int = 64,
        completion_len: int = 192, reps: int | None = None, devices: int = 1) -> dict:
    """One train step on ``batch`` rows, timed; ``devices`` > 1: on a data-parallel mesh of
    that many devices (the rows split over them)."""
    config = preset(preset_name).replace(param_dtype=dtype, dtype=dtype)
    mesh = data_mesh(devices)
    if batch % devices:
        raise ValueError(f"bench train: {batch} rows do not split over {devices} devices")
    reps = reps or (5 if config.num_params() < 50e6 else 3)
    peak = ceilings.matmul_peak(config.jnp_dtype)
    seq = prompt_len + completion_len
    loss = LossConfig(logprob_chunk=seq)
    groups = synthetic_groups(config.vocab_size, batch, prompt_len, completion_len)
    (train_batch,), stats = batching.make_minibatches(groups, batching.AdvantageConfig(),
                                                      batching.PackingConfig(rows=batch, row_len=seq))
    opt, schedule = optimizer.make_optimizer(optimizer.OptimizerConfig(learning_rate=1e-6, b2=0.99))
    params = decoder.init_params(config, jax.random.key(0))
    if mesh is None:
        state = train_step.init_state(params, opt)
        step = train_step.make_train_step(config, loss, opt, schedule)
    else:
        state = train_step.init_state(jax.device_put(params, decoder.param_shardings(config, mesh)), opt)
        step = train_step.make_train_step(config, loss, opt, schedule, mesh=mesh,
                                          shardings=jax.tree.map(lambda x: x.sharding, state))
    holder = {"state": state}
    first_decision = len(race.DECISIONS)

    def one_step():
        holder["state"], metrics = step(holder["state"], train_batch)
        return metrics

    times, first = ceilings.time_calls(one_step, reps=reps)
    median = statistics.median(times)
    # The peak again after the steps: MFU is against the better of the two, so a machine
    # that was slow only while the first was measured cannot inflate it.
    peak = max(peak, ceilings.matmul_peak(config.jnp_dtype))
    tokens = batch * seq
    attn_flops = 12.0 * config.num_layers * config.num_heads * config.head_dim * seq / 2  # causal half
    achieved = tokens * (model_flops_per_token(config) + attn_flops) / median
    return {
        "bench": "train", "preset": preset_name, "dtype": dtype, "device": ceilings.device_description(),
        "params": config.num_params(), "devices": devices, "tokens_per_step": tokens, "reps": reps,
        "step_s_median": median, "step_s_min": min(times), "compile_s": max(first - median, 0.0),
        "tokens_per_s": tokens / median, "model_flops_per_s": achieved, "matmul_peak_flops_per_s": peak,
        "mfu": achieved / peak, "padding_fraction": stats["padding_fraction"], "traces": step.traces,
        "races": race.DECISIONS[first_decision:],
    }


def describe(r: dict) -> str:
    on = f"{r['devices']} devices (data-parallel) of " if r.get("devices", 1) > 1 else ""
    return (f"train step  preset={r['preset']} ({r['params'] / 1e6:.2f}M params, {r['dtype']}) on {on}{r['device']}\n"
            f"  {r['tokens_per_step']} tokens/step   step {r['step_s_median']:.3f} s (min {r['step_s_min']:.3f})"
            f"   compile {r['compile_s']:.1f} s\n"
            f"  {r['tokens_per_s']:.0f} tokens/s   {r['model_flops_per_s'] / 1e9:.1f} GFLOP/s model"
            f"   peak matmul {r['matmul_peak_flops_per_s'] / 1e9:.1f} GFLOP/s   MFU {100 * r['mfu']:.1f}%\n"
            + "\n".join("  " + line for line in race.summary(r["races"])))
