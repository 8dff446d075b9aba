"""``magjax bench sampler``: decode and prefill tokens/s, and decode against the roofline.

The workload is the peers': 64-token prompts, 192 new tokens, temperature 1, at several
batch sizes. The roofline of a decode step is the larger of (weights + KV cache bytes) /
read bandwidth and FLOPs / matmul peak, both measured in the same run; the reported
fraction is roofline time / measured step time (1.0 = at the machine's limit).

At the batch sizes in ``paged_batches`` the dense and the paged engine run the same work
with their timed passes alternating, so that a shared machine's load falls on both alike.
With a ``long_context`` case (``long_context.py``) it also runs mixed completion lengths
at a long ``max_len`` through the generator, dense and paged cache side by side.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from magjax.backends import race
from magjax.bench import ceilings, data_mesh, long_context as long_case
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


def batch_passes(config, params, batch: int, prompt_len: int, new_tokens: int, chunk: int, page_size: int = 0,
                 mesh=None):
    """One engine for ``batch`` sequences and a function that runs one timed pass on it
    (prefill every slot, then decode to the end): ``(engine, one_pass)``, where
    ``one_pass()`` gives (prefill seconds, decode seconds, decode steps). ``page_size`` > 0:
    the paged cache, each slot given the pages of its whole sequence up front, so the page
    table is the same in every call. ``mesh``: the engine's (None: one device)."""
    engine = Engine(config, EngineConfig(slots=batch, max_len=prompt_len + new_tokens + 1,
                                         prompt_buckets=(prompt_len,), chunk_steps=chunk, page_size=page_size),
                    SamplingConfig(temperature=1.0), eos_id=config.vocab_size, mesh=mesh)  # eos never emitted
    if mesh is not None:
        params = jax.device_put(params, decoder.param_shardings(config, mesh))
    params = engine.prepare(params)
    rng = np.random.default_rng(0)
    prompts = rng.integers(1, config.vocab_size, (batch, prompt_len)).tolist()
    table_bn = None
    if page_size:
        pool = PagePool(engine.config.pool_pages, page_size, batch, engine.config.max_len, engine.page_shards)
        for b in range(batch):
            pool.admit([b], prompt_len, engine.config.max_len)
        table_bn = pool.table_bn
    rows = (lambda b: (table_bn[[b]],)) if page_size else (lambda b: ())  # noqa: E731
    table = (table_bn,) if page_size else ()

    def one_pass():
        state = engine.init_state()
        jax.block_until_ready(state)
        t0 = time.perf_counter()
        for b, p in enumerate(prompts):
            state, _ = engine.prefill(params, state, p, [b], b, [0], new_tokens, *rows(b))
        jax.block_until_ready(state)
        t1 = time.perf_counter()
        steps = 0
        while True:
            state, out = engine.decode(params, state, *table)
            steps += out.steps
            if out.steps < chunk or not out.finish_b.size or (out.finish_b != 0).all():
                break
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, steps

    return engine, one_pass


def summarize(batch: int, prompt_len: int, engine, runs: list[tuple[float, float, int]]) -> dict:
    """A row from timed passes: the best prefill and the best decode."""
    prefill_s = min(r[0] for r in runs)
    decode_s, steps = min((r[1], r[2]) for r in runs)
    return {"batch": batch, "prefill_tokens_per_s": batch * prompt_len / prefill_s,
            "decode_tokens_per_s": batch * steps / decode_s, "decode_step_s": decode_s / steps, "steps": steps,
            "kernels": dict(engine.implementations), "passes": len(runs)}


def run_batch(config, params, batch: int, prompt_len: int, new_tokens: int, chunk: int, page_size: int = 0,
              mesh=None) -> dict:
    """Prefill then decode ``batch`` sequences on one engine: one pass that compiles, then
    the best of two."""
    engine, one_pass = batch_passes(config, params, batch, prompt_len, new_tokens, chunk, page_size, mesh)
    one_pass()  # compile
    return summarize(batch, prompt_len, engine, [one_pass() for _ in range(2)])


def run_side_by_side(config, params, batch: int, prompt_len: int, new_tokens: int, chunk: int, page_size: int,
                     passes: int = 3, mesh=None) -> tuple[dict, dict]:
    """The dense and the paged engine on the same work, their passes alternating (best of
    ``passes`` each), so that a shared machine's load falls on both alike."""
    dense_engine, dense_pass = batch_passes(config, params, batch, prompt_len, new_tokens, chunk, mesh=mesh)
    paged_engine, paged_pass = batch_passes(config, params, batch, prompt_len, new_tokens, chunk, page_size, mesh)
    dense_pass(), paged_pass()  # compile
    dense_runs, paged_runs = [], []
    for _ in range(passes):
        dense_runs.append(dense_pass())
        paged_runs.append(paged_pass())
    return (summarize(batch, prompt_len, dense_engine, dense_runs),
            summarize(batch, prompt_len, paged_engine, paged_runs))


def run(preset_name: str, *, dtype: str = "float32", batches=(1, 16, 64), prompt_len: int = 64,
        new_tokens: int = 192, chunk: int = 64, paged_batches=(16,), page_size: int = 64,
        long_context: long_case.Case | None = None, devices: int = 1) -> dict:
    """The batches' rows (those in ``paged_batches`` also on the paged cache in pages of
    ``page_size``), and the long-context case when one is given (None: skipped).
    ``devices`` > 1: the batches' engines on a data-parallel mesh of that many devices (the
    slots split over them; batches that do not divide evenly are left out, and listed), the
    long-context case still on one."""
    config = preset(preset_name).replace(param_dtype=dtype, dtype=dtype)
    mesh = data_mesh(devices)
    left_out = [b for b in batches if b % devices]
    batches = [b for b in batches if not b % devices]
    peak = ceilings.matmul_peak(config.jnp_dtype)
    bandwidth = ceilings.read_bandwidth()
    params = decoder.init_params(config, jax.random.key(0))
    first_decision = len(race.DECISIONS)
    rows = []
    for b in batches:
        if b in paged_batches:
            row, paged = run_side_by_side(config, params, b, prompt_len, new_tokens, chunk, page_size, mesh=mesh)
            row["paged"] = {k: paged[k] for k in ("prefill_tokens_per_s", "decode_tokens_per_s", "decode_step_s",
                                                  "kernels", "passes")}
        else:
            row = run_batch(config, params, b, prompt_len, new_tokens, chunk, mesh=mesh)
        # The machine's limits are the same however many devices share its cores.
        ideal = decode_roofline_s(config, b, prompt_len + new_tokens // 2, bandwidth, peak)
        row["roofline_tokens_per_s"] = b / ideal
        row["roofline_fraction"] = ideal / row["decode_step_s"]
        rows.append(row)
    result = {"bench": "sampler", "preset": preset_name, "dtype": dtype, "device": ceilings.device_description(),
              "params": config.num_params(), "devices": devices, "batches_left_out": left_out,
              "prompt_len": prompt_len, "new_tokens": new_tokens,
              "matmul_peak_flops_per_s": peak, "read_bandwidth_bytes_per_s": bandwidth, "batches": rows,
              "kernels": rows[0]["kernels"] if rows else None}
    if long_context is not None:
        result["long_context"] = long_case.run(config, params, long_context)
    result["races"] = race.DECISIONS[first_decision:]
    return result


def describe(r: dict) -> str:
    on = f"{r['devices']} devices (data-parallel) of " if r.get("devices", 1) > 1 else ""
    lines = [f"sampler  preset={r['preset']} ({r['params'] / 1e6:.2f}M params, {r['dtype']}) on {on}{r['device']}",
             (f"  prompt {r['prompt_len']}, {r['new_tokens']} new tokens, temperature 1;  " if r["batches"] else "  ")
             + f"peak matmul {r['matmul_peak_flops_per_s'] / 1e9:.0f} GFLOP/s, read bandwidth "
             f"{r['read_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s",
             *("  " + line for line in race.summary(r["races"]))]
    if r.get("batches_left_out"):
        lines.append(f"  batches {r['batches_left_out']} left out: their slots do not split over {r['devices']} devices")
    if r["batches"]:
        lines.append(f"  {'batch':>5} {'decode tok/s':>13} {'roofline tok/s':>15} {'of roofline':>12}"
                     f" {'prefill tok/s':>14}" + (f" {'paged decode tok/s':>19}" if any(
                         "paged" in row for row in r["batches"]) else ""))
    for row in r["batches"]:
        paged = ""
        if "paged" in row:
            tokens_per_s = row["paged"]["decode_tokens_per_s"]
            paged = f" {tokens_per_s:>10.0f} ({tokens_per_s / row['decode_tokens_per_s']:.2f}x)"
        lines.append(f"  {row['batch']:>5} {row['decode_tokens_per_s']:>13.0f} {row['roofline_tokens_per_s']:>15.0f}"
                     f" {100 * row['roofline_fraction']:>11.1f}% {row['prefill_tokens_per_s']:>14.0f}{paged}")
    if "long_context" in r:
        lines += long_case.describe(r["long_context"])
    return "\n".join(lines)

