"""`magjax bench ...` end to end on small shapes: each prints its figures from real runs."""

from magjax.bench import pipeline, sampler, train, verifier
from magjax.kernels import native


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


def test_bench_sampler_runs_the_paged_cache():
    r = sampler.run("test", batches=(4,), prompt_len=8, new_tokens=16, chunk=8, page_size=8)
    assert r["page_size"] == 8 and r["batches"][0]["decode_tokens_per_s"] > 0
    assert r["batches"][0]["steps"] == 15  # every slot decoded its whole length through its pages
    assert r["kernels"]["decode_attention"] == "xla-paged"  # head dim 8: the native kernel does not apply
    assert "paged cache, pages of 8" in sampler.describe(r)


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
