"""``magjax bench sampler``: decode and prefill tokens/s, and decode against the roofline.

The workload is the peers': 64-token prompts, 192 new tokens, temperature 1, at several
batch sizes. The roofline of a decode step is the larger of (weights + KV cache bytes) /
read bandwidth and FLOPs / matmul peak, both measured in the same run; the reported
fraction is roofline time / measured step time (1.0 = at the machine's limit).
"""

from __future__ import annotations

import time

import jax
import numpy as np

from magjax.backends import race
from magjax.bench import ceilings
from magjax.models import decoder, preset
from magjax.sampling.engine import Engine, EngineConfig, SamplingConfig
from magjax.sampling.pages import PagePool


def decode_roofline_s(config, batch: int, context: int, bandwidth: float, peak: float) -> float:
    """Ideal seconds for one decode step at an average ``context`` length."""
    itemsize = np.dtype(config.jnp_param_dtype).itemsize
    embed_rows = config.vocab_size * config.hidden_size  # the input table is gathered, not read whole
    weight_bytes = (config.num_params() - (0 if config.tie_embeddings else embed_rows)) * itemsize
    kv_bytes = 2 * config.num_layers * batch * context * config.num_kv_heads * config.head_dim * itemsize
    matmul_params = config.num_params() - (0 if config.tie_embeddings else embed_rows)
    flops = batch * (2 * matmul_params + 4 * config.num_layers * config.num_heads * config.head_dim * context)
    return max((weight_bytes + kv_bytes) / bandwidth, flops / peak)


def run_batch(config, params, batch: int, prompt_len: int, new_tokens: int, chunk: int, page_size: int = 0) -> dict:
    engine = Engine(config, EngineConfig(slots=batch, max_len=prompt_len + new_tokens + 1,
                                         prompt_buckets=(prompt_len,), chunk_steps=chunk, page_size=page_size),
                    SamplingConfig(temperature=1.0), eos_id=config.vocab_size)  # never emitted
    params = engine.prepare(params)
    rng = np.random.default_rng(0)
    prompts = rng.integers(1, config.vocab_size, (batch, prompt_len)).tolist()

    def one_pass():
        state = engine.init_state()
        # Paged: every slot holds the pages of its whole sequence from the start.
        pool = PagePool(engine.config.pool_pages, page_size, batch, engine.config.max_len) if page_size else None
        jax.block_until_ready(state)
        t0 = time.perf_counter()
        for b, p in enumerate(prompts):
            rows = ()
            if pool is not None:
                pool.admit([b], prompt_len, engine.config.max_len)
                rows = (pool.table_bn[[b]],)
            state, _ = engine.prefill(params, state, p, [b], b, [0], new_tokens, *rows)
        jax.block_until_ready(state)
        t1 = time.perf_counter()
        steps = 0
        while True:
            state, out = engine.decode(params, state, *(() if pool is None else (pool.table_bn,)))
            steps += out.steps
            if out.steps < chunk or not out.finish_b.size or (out.finish_b != 0).all():
                break
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, steps

    one_pass()  # compile
    runs = [one_pass() for _ in range(2)]
    prefill_s = min(r[0] for r in runs)
    decode_s, steps = min((r[1], r[2]) for r in runs)
    return {"batch": batch, "prefill_tokens_per_s": batch * prompt_len / prefill_s,
            "decode_tokens_per_s": batch * steps / decode_s, "decode_step_s": decode_s / steps, "steps": steps,
            "kernels": dict(engine.implementations)}


def run(preset_name: str, *, dtype: str = "float32", batches=(1, 16, 64), prompt_len: int = 64,
        new_tokens: int = 192, chunk: int = 64, page_size: int = 0) -> dict:
    config = preset(preset_name).replace(param_dtype=dtype, dtype=dtype)
    peak = ceilings.matmul_peak(config.jnp_dtype)
    bandwidth = ceilings.read_bandwidth()
    params = decoder.init_params(config, jax.random.key(0))
    first_decision = len(race.DECISIONS)
    rows = []
    for b in batches:
        row = run_batch(config, params, b, prompt_len, new_tokens, chunk, page_size)
        ideal = decode_roofline_s(config, b, prompt_len + new_tokens // 2, bandwidth, peak)
        row["roofline_tokens_per_s"] = b / ideal
        row["roofline_fraction"] = ideal / row["decode_step_s"]
        rows.append(row)
    return {"bench": "sampler", "preset": preset_name, "dtype": dtype, "device": ceilings.device_description(),
            "params": config.num_params(), "prompt_len": prompt_len, "new_tokens": new_tokens, "page_size": page_size,
            "matmul_peak_flops_per_s": peak, "read_bandwidth_bytes_per_s": bandwidth, "batches": rows,
            "kernels": rows[0]["kernels"] if rows else None, "races": race.DECISIONS[first_decision:]}


def describe(r: dict) -> str:
    lines = [f"sampler  preset={r['preset']} ({r['params'] / 1e6:.2f}M params, {r['dtype']}) on {r['device']}",
             f"  prompt {r['prompt_len']}, {r['new_tokens']} new tokens, temperature 1,"
             f" {'paged cache, pages of ' + str(r['page_size']) if r.get('page_size') else 'dense cache'};"
             f"  peak matmul {r['matmul_peak_flops_per_s'] / 1e9:.0f} GFLOP/s, read bandwidth "
             f"{r['read_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s",
             *("  " + line for line in race.summary(r["races"])),
             f"  {'batch':>5} {'decode tok/s':>13} {'roofline tok/s':>15} {'of roofline':>12} {'prefill tok/s':>14}"]
    for row in r["batches"]:
        lines.append(f"  {row['batch']:>5} {row['decode_tokens_per_s']:>13.0f} {row['roofline_tokens_per_s']:>15.0f}"
                     f" {100 * row['roofline_fraction']:>11.1f}% {row['prefill_tokens_per_s']:>14.0f}")
    return "\n".join(lines)

