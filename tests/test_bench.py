"""`magjax bench ...` end to end on small shapes: each prints its figures from real runs."""

import json
import os

import jax
import numpy as np
import pytest

from magjax.bench import cache_reads, ceilings, long_context, pipeline, sampler, train, verifier
from magjax.kernels import native
from magjax.models import preset


def test_bench_train_measures_the_step_against_the_machine_peak():
    r = train.run("test", batch=4, prompt_len=8, completion_len=24, reps=2)
    assert r["tokens_per_s"] > 0 and r["mfu"] > 0
    assert "tokens/step" in train.describe(r)


def test_bench_sampler_reports_decode_prefill_and_roofline():
    r = sampler.run("test", batches=(1, 4), prompt_len=8, new_tokens=16, chunk=8)
    assert all(b["decode_tokens_per_s"] > 0 and b["roofline_fraction"] > 0 for b in r["batches"])
    assert "roofline" in sampler.describe(r)
    # The figures say which implementation each function ran on (the suite forces native
    # where it applies: the "test" preset's head dim of 8 keeps XLA's decode attention).
    want = "native" if native.load() else "xla"
    assert r["kernels"] == {"projections": want, "decode_attention": "xla"}
    if want == "native":
        line = "decode projections at rows=4 d=32 f=64 heads=4/2 e=8 vocab=64: native (forced by MAGJAX_KERNELS=native"
        assert line in sampler.describe(r)


def test_bench_train_and_sampler_run_data_parallel_on_the_devices_asked_for():
    """``--devices N``: the same workloads on a data-parallel mesh of N devices, the kernels
    picked at one device's share; sampler batches that do not split are left out, said so."""
    r = sampler.run("test", batches=(1, 4), prompt_len=8, new_tokens=16, chunk=8, paged_batches=(4,), page_size=8,
                    devices=2)
    assert r["devices"] == 2 and r["batches_left_out"] == [1] and [b["batch"] for b in r["batches"]] == [4]
    row = r["batches"][0]
    assert row["decode_tokens_per_s"] > 0 and row["paged"]["decode_tokens_per_s"] > 0
    text = sampler.describe(r)
    assert "on 2 devices (data-parallel) of" in text and "batches [1] left out" in text
    if native.load():  # forced by the suite: the products run on each device's two slots
        assert row["kernels"]["projections"] == "native" and "decode projections at rows=2 " in text
    t = train.run("test", batch=4, prompt_len=8, completion_len=24, reps=2, devices=2)
    assert t["devices"] == 2 and t["tokens_per_s"] > 0 and "on 2 devices (data-parallel) of" in train.describe(t)
    with pytest.raises(ValueError, match="do not split over 2 devices"):
        train.run("test", batch=3, prompt_len=8, completion_len=24, reps=2, devices=2)
    with pytest.raises(ValueError, match="--devices 99"):
        train.run("test", batch=4, prompt_len=8, completion_len=24, reps=2, devices=99)


def test_cache_read_model_counts_what_each_implementation_reads():
    # Four slots of a 1024-position cache in pages of 128: a fresh slot, one 300 long, an
    # idle (finished) one still holding 1023 positions, one with a window [300, 700).
    lo_b, hi_b = np.array([0, 0, 0, 300]), np.array([1, 300, 1024, 700])
    active_b = np.array([True, True, False, True])
    read = lambda name, active=active_b, hi=hi_b: cache_reads.positions_read(  # noqa: E731
        name, lo_b, hi, active, max_len=1024, page_size=128)
    assert read("xla") == 4 * 1024  # every slot's whole cache
    assert read("native") == read("native-paged") == 1 + 300 + 400  # each active slot's range (the idle one's is empty)
    # Blocks of 512 up to the furthest active range (700: two), for every slot.
    assert read("xla-blockwise") == 4 * 2 * 512
    assert read("xla-blockwise", hi=np.array([1, 300, 1024, 450])) == 4 * 512  # the idle 1024 is not read
    # Pages 0 | 0-2 | idle: none | 2-5: eight pages, gathered four (512 positions) at a time.
    assert read("xla-paged") == 8 * 128
    assert read("xla-paged", np.array([False, True, False, True])) == 8 * 128  # seven pages, a group of four whole
    assert read("xla-paged", np.array([False, True, False, False])) == 4 * 128
    assert read("xla-paged", np.zeros(4, bool)) == 0
    # tiny: 4 layers x (key + value) x 2 KV heads x 64 x 4 bytes.
    assert cache_reads.bytes_per_position(preset("tiny")) == 4 * 2 * 2 * 64 * 4
    with pytest.raises(ValueError, match="no cache read model for decode attention 'other'"):
        read("other")


def test_bench_sampler_long_context_compares_dense_and_paged_on_mixed_lengths():
    case = long_context.Case(max_len=512, groups=3, samples=2, slots=4, prompt_len=8, chunk=16, page_size=16)
    r = sampler.run("test", batches=(4,), prompt_len=8, new_tokens=16, chunk=8, paged_batches=(4,), page_size=8,
                    long_context=case)
    row = r["batches"][0]  # the batch row on both caches
    assert row["paged"]["decode_tokens_per_s"] > 0 and row["paged"]["kernels"]["decode_attention"] == "xla-paged"
    assert row["passes"] == row["paged"]["passes"] == 3  # the two engines' passes alternated, best of 3 each
    lc = json.loads(json.dumps(r))["long_context"]  # what --json records
    budgets = lc["budgets"]
    assert len(budgets) == 3 and all(512 // 8 <= b <= 512 - 8 for b in budgets) and len(set(budgets)) > 1
    for name, row in (("dense", lc["dense"]), ("paged", lc["paged"])):
        assert row["tokens"] == 2 * sum(budgets), name  # no end-of-sequence: every budget runs out
        assert row["tokens_per_s"] > 0 and row["cache_bytes_per_token"] > 0, name
        # The recorded schedule: every token but each sequence's first (the prefill's) is a step's.
        assert row["active_slot_steps"] == row["tokens"] - 6, name
        assert row["cache_bytes_per_token"] == row["modelled_cache_bytes_per_token"][row["decode_attention"]]
    assert lc["paged"]["decode_attention"] == "xla-paged"
    assert lc["dense"]["decode_attention"] in ("xla", "native")
    assert lc["dense"]["decode_steps"] == lc["paged"]["decode_steps"]  # the same admissions and chunks
    per_position = cache_reads.bytes_per_position(preset("test"))
    dense_xla = lc["dense"]["modelled_cache_bytes_per_token"]["xla"] * lc["dense"]["tokens"]
    assert dense_xla == pytest.approx(lc["dense"]["decode_steps"] * 4 * 512 * per_position, rel=1e-12)
    assert lc["read_ratio"] == lc["dense"]["cache_bytes_per_token"] / lc["paged"]["cache_bytes_per_token"]
    assert lc["paged"]["modelled_cache_bytes_per_token"]["xla-paged"] < dense_xla / lc["dense"]["tokens"]
    paged = lc["paged"]
    assert paged["pool_pages"] == 4 * 512 // 16 and 0 < paged["peak_pages"] < paged["pool_pages"]
    assert paged["peak_cache_bytes"] == paged["peak_pages"] * 16 * per_position < lc["dense"]["cache_bytes"]
    text = sampler.describe(r)
    assert "paged decode tok/s" in text and "long context: max_len 512" in text
    assert "cache bytes/token" in text and "peak" in text


def test_bench_verifier_times_math_and_sandboxed_code():
    # The bench runs code without a verdict cache: every timed run really runs.
    r = verifier.run(rounds=1)
    assert r["math_checks_per_s"] > 0 and r["python_runs_per_s"] > 0 and r["cpp_compile_plus_5_runs_s"] > 0


def test_bench_pipeline_runs_both_modes_on_the_same_work():
    shrink = ("RunConfig.n_batch = 16", "RunConfig.n_async = 16", "RunConfig.max_new_tokens = 24",
              "DataConfig.demo_train_size = 64", "DataConfig.demo_kinds = ('math',)")
    r = pipeline.run(steps=2, sft_steps=8, bindings=shrink)  # the first batch (compilation) is not timed
    for mode in ("sync", "async"):
        assert r[mode]["wall_s_per_batch"] > 0 and 0 <= r[mode]["trainer_busy_fraction"] <= 1
        assert r[mode]["timed_batches"] == 1
    assert r["async_over_sync"] > 0 and "async/sync speed ratio" in pipeline.describe(r)


def test_the_cpu_description_names_the_model_and_what_holds_the_code_back(monkeypatch):
    monkeypatch.setenv("MAGJAX_NATIVE_MARCH", "haswell")
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_cpu_max_isa=AVX2")
    held = ceilings.cpu_description()
    assert held.endswith(", kernels built for haswell, XLA held to AVX2"), held
    monkeypatch.delenv("MAGJAX_NATIVE_MARCH")
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    plain = ceilings.cpu_description()
    assert "held" not in plain and "built for" not in plain and held.startswith(plain)
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            models = {line.split(":", 1)[1].strip() for line in f if line.startswith("model name")}
        assert not models or any(plain.startswith(model) for model in models)
    assert ceilings.device_description() == f"{jax.device_count()} x cpu ({plain})"
