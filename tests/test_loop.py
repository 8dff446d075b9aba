"""The RL loop end to end on 8 CPU devices: sync and async, colocated and disaggregated."""

import collections
import dataclasses
import signal

import jax
import numpy as np
import pytest

from magjax.loop import RunConfig, run
from magjax.models import preset
from magjax.models.tokenizer import ChatFormat
from magjax.recipe import Recipe
from magjax.rl.batching import PackingConfig
from magjax.rl.optimizer import OptimizerConfig
from magjax.sampling.engine import EngineConfig
from magjax.types import Problem

MODEL = preset("demo")
# A task the demo model learns in a few steps: four fixed sums, eight samples each.
SUMS = [Problem(f"math-p{i}", "math", f"Compute {a}+{b}.", answer=str(a + b))
        for i, (a, b) in enumerate([(3, 4), (2, 5), (6, 1), (4, 4)])]
ENGINE = EngineConfig(slots=32, max_len=64, prompt_buckets=(32,), chunk_steps=8)
PACK = PackingConfig(rows=8, row_len=64)


def _run(params, problems=SUMS, engine=ENGINE, **overrides):
    config = dict(mode="sync", steps=3, group_size=8, n_batch=32, n_async=32, max_new_tokens=24)
    config |= overrides
    recipe = Recipe(model=MODEL, chat=ChatFormat("plain", None), run=RunConfig(**config), engine=engine,
                    optimizer=OptimizerConfig(learning_rate=3e-4), packing=PACK)
    return run(recipe, problems, params, console=False)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_sync_mode_learns_the_task(sft_params):
    result = _run(sft_params, steps=20)
    accuracy = [h["reward/accuracy"] for h in result.history]
    assert np.mean(accuracy[-5:]) > np.mean(accuracy[:5]) + 0.1, accuracy
    assert result.version == 20 and max(h["pipeline/logprob_gap"] for h in result.history) < 1e-4
    # The step compiles once per microbatch count (a power of two), the first time it is seen.
    compiles = [h["pipeline/train_compiles"] for h in result.history]
    assert compiles[0] == 1 and sum(compiles) <= 4 and set(compiles) <= {0, 1}, compiles


def test_sync_mode_is_bitwise_reproducible(sft_params):
    a, b = _run(sft_params), _run(sft_params)
    for x, y in zip(_leaves(a.params), _leaves(b.params)):
        np.testing.assert_array_equal(x, y)
    drop = lambda h: {k: v for k, v in h.items() if k not in ("time",) and "_s" not in k and "per_s" not in k  # noqa: E731
                      and "fraction" not in k and "tokens_per_s" not in k}
    assert [drop(h) for h in a.history] == [drop(h) for h in b.history]


def test_a_small_group_queue_cannot_deadlock_sync_mode(sft_params):
    assert _run(sft_params, steps=1, queue_groups=1).step == 1  # 4 groups per batch, queue of 1


def test_sync_mode_decodes_only_the_batch_whatever_n_async(sft_params):
    # Sync mode has one batch (32 sequences) in flight; slots sized for n_async = 64 would
    # each run every decode step on padding, halving the occupancy.
    sized = _run(sft_params, steps=1)
    oversized = _run(sft_params, steps=1, n_async=64, engine=dataclasses.replace(ENGINE, slots=64))
    assert oversized.history[0]["rollout/slot_occupancy"] == sized.history[0]["rollout/slot_occupancy"] > 0.5
    for x, y in zip(_leaves(sized.params), _leaves(oversized.params)):
        np.testing.assert_array_equal(x, y)


BUCKETS = ("trained", "filtered", "stale", "unconsumed", "cancelled")


def _check_accounting(result):
    # Every finished completion in exactly one bucket, length by length.
    acc = result.accounting
    together = sum((acc[k] for k in BUCKETS), collections.Counter())
    assert together == acc["finished"], ({k: sum(acc[k].values()) for k in BUCKETS}, sum(acc["finished"].values()))
    assert sum(acc["trained"].values()) > 0


def test_async_colocated_learns_spans_versions_and_loses_nothing(sft_params):
    result = _run(sft_params, mode="async", steps=16, n_batch=32, n_async=32, queue_groups=4)
    h = result.history
    assert len(h) == 16 and result.version == sum(r["pipeline/groups_trained"] > 0 for r in h)
    assert result.spanning >= 1  # some sequence continued on new weights mid-flight
    assert max(r["pipeline/lag_versions_spanned_max"] for r in h) >= 1
    reward = [r["reward/mean"] for r in h]  # measured 0.15 -> 0.25..0.32 over three runs
    assert np.mean(reward[-5:]) > np.mean(reward[:5]) + 0.05, reward
    _check_accounting(result)


def test_async_disaggregated_validates_and_delivers_weights(sft_params):
    result = _run(sft_params, mode="async", steps=3, placement="disaggregated", generator_devices=4)
    assert result.version >= 1 and "pipeline/publish_s" in result.history[-1]
    _check_accounting(result)


def test_a_verifier_crash_is_counted_not_fatal(sft_params):
    broken = Problem("math-broken", "math", "Compute 1+1.", answer="2")
    object.__setattr__(broken, "kind", "poetry")  # corrupted after validation: grading it raises
    result = _run(sft_params, problems=[broken] + SUMS[:3], steps=2)
    assert result.history[-1]["verifier/crashes"] > 0


@pytest.mark.parametrize("overrides, message", [
    (dict(n_batch=30), "multiple of group_size"),
    (dict(n_minibatch=3), "must divide"),
    (dict(n_async=96), "off-policy bound"),
    (dict(max_new_tokens=40), "must fit PackingConfig.row_len"),
])
def test_constraint_violations_are_clear_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        _run(None, **overrides)


def test_sync_resume_is_exact(sft_params, tmp_path):
    straight = _run(sft_params, steps=4, run_dir=str(tmp_path / "straight"))
    first = _run(sft_params, steps=2, run_dir=str(tmp_path / "resumed"))
    assert first.step == 2
    second = _run(sft_params, steps=4, run_dir=str(tmp_path / "resumed"))
    assert second.resumed_from == 2 and second.step == 4
    for x, y in zip(_leaves(straight.params), _leaves(second.params)):
        np.testing.assert_array_equal(x, y)
    keys = ("reward/mean", "reward/accuracy", "train/loss", "train/grad_norm", "pipeline/version")
    assert [[h[k] for k in keys] for h in straight.history[2:]] == [[h[k] for k in keys] for h in second.history]


def test_export_writes_a_checkpoint_as_a_hugging_face_directory(sft_params, tmp_path):
    from magjax.cli import main
    from magjax.models import decoder, hf

    result = _run(sft_params, steps=1, run_dir=str(tmp_path / "run"))
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 0
    config, model = hf.load(tmp_path / "hf")
    assert config == MODEL.replace(scan_unroll=1)  # the shape round-trips; how to run it is the loader's choice
    tokens = np.arange(12, dtype=np.int32)[None] % MODEL.vocab_size
    np.testing.assert_array_equal(np.asarray(model(tokens)), np.asarray(decoder.forward(config, result.params, tokens)))


def test_periodic_evaluation_joins_the_step_metrics(sft_params):
    from magjax.evaluate import EvalConfig, evaluate, flatten
    from magjax.models.tokenizer import ByteTokenizer

    seen, summaries = [], []

    def held_out(params):
        seen.append(params)
        summaries.append(evaluate(SUMS[:2], params, MODEL, ByteTokenizer(), ChatFormat("plain", None),
                                  EvalConfig(samples=2, max_new_tokens=24), engine=ENGINE)["summary"])
        return summaries[-1]

    recipe = Recipe(model=MODEL, chat=ChatFormat("plain", None), engine=ENGINE, packing=PACK,
                    run=RunConfig(mode="sync", steps=2, group_size=8, n_batch=32, n_async=32, max_new_tokens=24),
                    optimizer=OptimizerConfig(learning_rate=1e-4))
    result = run(recipe, SUMS, sft_params, console=False, evaluator=held_out, eval_every=2)
    assert len(seen) == 1 and "eval/pass@1" not in result.history[0]
    last = result.history[1]
    expected = flatten(summaries[0])  # every figure of the evaluation, under its row's name, unchanged
    assert "eval/pass@1" in expected and "eval/maj@2/kind=math" in expected and last["pipeline/eval_s"] > 0
    assert {k: last.get(k) for k in expected} == expected
    for x, y in zip(_leaves(seen[0]), _leaves(result.params)):  # it saw the trainer's current weights
        np.testing.assert_array_equal(x, y)


def test_a_run_directory_initialises_a_new_job(sft_params, tmp_path):
    from magjax.jobs.common import load_model

    result = _run(sft_params, steps=1, run_dir=str(tmp_path / "run"))
    config, params = load_model("test", str(tmp_path / "run"), seed=0)  # the checkpoint wins over the preset
    assert config == MODEL
    for x, y in zip(_leaves(params), _leaves(result.params)):
        np.testing.assert_array_equal(x, y)


def test_max_lag_versions_drops_stale_groups_counts_them_and_refills_the_batch(sft_params):
    # n_async = 2 n_batch: while step 1 compiles and trains, the generator finishes groups
    # on version 0; at step 2 the trainer holds version 1, so with a bound of 0 they are
    # stale. Every trained group must then be fresh, and every batch still whole.
    result = _run(sft_params, mode="async", steps=4, n_batch=32, n_async=64, max_lag_versions=0,
                  engine=dataclasses.replace(ENGINE, slots=64))
    h = result.history
    dropped = [r["pipeline/dropped_stale"] for r in h]
    assert sum(dropped) > 0 and dropped[0] == 0, dropped
    assert sum(result.accounting["stale"].values()) == sum(dropped)  # whole groups: a multiple of G
    assert sum(dropped) % 8 == 0
    assert max(r["pipeline/lag_tokens_max"] for r in h) == 0  # nothing trained beyond the bound
    assert all(r["pipeline/groups_trained"] + r["pipeline/groups_filtered"] == 4 for r in h)
    _check_accounting(result)


def test_a_run_stopped_mid_flight_accounts_for_every_completion_and_its_tables_stay_bounded(sft_params):
    # SIGTERM during step 4's evaluation: the run stops at the next batch with groups queued,
    # completions in the verifier and sequences in flight. One verifier thread keeps a backlog.
    from magjax.rewards.pool import LATENCY_WINDOW, PoolConfig

    def stop_after(params):
        signal.raise_signal(signal.SIGTERM)
        return {}

    n_async, group_size, n_batch = 64, 8, 32
    recipe = Recipe(model=MODEL, chat=ChatFormat("plain", None), engine=dataclasses.replace(ENGINE, slots=64),
                    packing=PACK, optimizer=OptimizerConfig(learning_rate=3e-4), pool=PoolConfig(threads=1),
                    run=RunConfig(mode="async", steps=50, group_size=group_size, n_batch=n_batch, n_async=n_async,
                                  max_new_tokens=24))
    result = run(recipe, SUMS, sft_params, console=False, evaluator=stop_after, eval_every=4)
    assert result.preempted and result.step == 4 and len(result.history) == 4
    _check_accounting(result)
    acc = result.accounting
    assert sum(acc["unconsumed"].values()) + sum(acc["cancelled"].values()) > 0  # work was under way
    # The tables kept per request never exceed what can be in flight, however long the run.
    for r in result.history:
        assert r["rollout/open_groups"] <= n_async // group_size + n_batch  # in the generator, or in the verifier
        assert r["rollout/generator_requests"] <= n_async + 2  # slots plus two requests ready
        assert r["verifier/waiting"] <= n_batch  # the pool's back-pressure cap (one batch)
        assert r["verifier/latency_samples"] <= LATENCY_WINDOW


def test_a_resumed_run_accounts_for_what_the_stopped_one_left(sft_params, tmp_path):
    # Stopped mid-flight (async, work queued and in the verifier), then resumed from the
    # checkpoint written at the stop: the second run's books include the first run's
    # completions that were never trained, once, as unconsumed.
    def stop_after(params):
        signal.raise_signal(signal.SIGTERM)
        return {}

    config = dict(mode="async", group_size=8, n_batch=32, n_async=32, max_new_tokens=24, run_dir=str(tmp_path / "run"))
    recipe = Recipe(model=MODEL, chat=ChatFormat("plain", None), engine=ENGINE, packing=PACK,
                    optimizer=OptimizerConfig(learning_rate=3e-4), run=RunConfig(steps=10, **config))
    first = run(recipe, SUMS, sft_params, console=False, evaluator=stop_after, eval_every=2)
    assert first.preempted and first.step == 2
    _check_accounting(first)
    left = first.accounting["unconsumed"] + first.accounting["cancelled"]
    second = run(dataclasses.replace(recipe, run=RunConfig(steps=3, **config)), SUMS, sft_params, console=False)
    assert second.resumed_from == 2 and second.step == 3
    _check_accounting(second)
    assert sum(left.values()) > 0 and not left - second.accounting["unconsumed"]  # all still booked
