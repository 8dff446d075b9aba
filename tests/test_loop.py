"""The RL loop end to end on 8 CPU devices: sync and async, colocated and disaggregated."""

import dataclasses

import numpy as np
import pytest

from loop_runs import ENGINE, MODEL, PACK, SUMS, _check_accounting, _leaves, _run
from magjax.loop import RunConfig, run
from magjax.models.tokenizer import ChatFormat
from magjax.recipe import Recipe
from magjax.rl.optimizer import OptimizerConfig
from magjax.types import Problem


def test_sync_mode_learns_the_task(sft_params):
    result = _run(sft_params, steps=20)
    accuracy = [h["reward/accuracy"] for h in result.history]
    assert np.mean(accuracy[-5:]) > np.mean(accuracy[:5]) + 0.1, accuracy
    assert result.version == 20 and max(h["pipeline/logprob_gap"] for h in result.history) < 1e-4
    # The step compiles once per microbatch count (a power of two), the first time this
    # process sees it (an earlier test's trainer of this configuration may have).
    compiles = [h["pipeline/train_compiles"] for h in result.history]
    assert sum(compiles) <= 4 and set(compiles) <= {0, 1}, compiles


@pytest.fixture(scope="module")
def straight(sft_params, tmp_path_factory):
    """Four sync batches, checkpointed in their run directory: the reference for the
    reproducibility and resume tests."""
    return _run(sft_params, steps=4, run_dir=str(tmp_path_factory.mktemp("straight") / "run"))


@pytest.fixture(scope="module")
def one_batch(sft_params, tmp_path_factory):
    """One sync batch and the run directory it leaves (checkpoint and all), for the tests of
    what a finished run leaves behind and of the slots' occupancy."""
    run_dir = tmp_path_factory.mktemp("one_batch") / "run"
    return _run(sft_params, steps=1, run_dir=str(run_dir)), run_dir


def test_sync_mode_is_bitwise_reproducible_with_or_without_a_sampler_copy(sft_params, straight, tmp_path,
                                                                          monkeypatch):
    """Run again with the sampler reading the trainer's arrays (on CPUs it keeps a copy by
    default): the same run, bit for bit, holding no second copy of the weights. A sampler
    that shares them reads the trainer's layout, so XLA's projections: the copy run is
    compared on XLA's kernels too (the native panels sum in another order)."""
    # The copy is in the sampler's layout: the native panels (the suite forces the kernels)
    # pad each product's columns to whole panels, so it is a little larger than the weights.
    [copy_bytes] = {h["rollout/weight_copy_bytes"] for h in straight.history}
    weight_bytes = sum(x.nbytes for x in _leaves(straight.params))
    assert weight_bytes < copy_bytes < 1.1 * weight_bytes
    monkeypatch.setenv("MAGJAX_KERNELS", "xla")
    a = _run(sft_params, steps=4, run_dir=str(tmp_path / "copy"), sampler_weights="copy")
    b = _run(sft_params, steps=4, run_dir=str(tmp_path / "again"), sampler_weights="shared")
    assert {h["rollout/weight_copy_bytes"] for h in a.history} == {weight_bytes}
    assert {h["rollout/weight_copy_bytes"] for h in b.history} == {0}
    for x, y in zip(_leaves(a.params), _leaves(b.params)):
        np.testing.assert_array_equal(x, y)
    # The second run's trainer reuses the first one's compiled step (same configuration).
    assert sum(h["pipeline/train_compiles"] for h in b.history) == 0
    drop = lambda h: {k: v for k, v in h.items()  # noqa: E731
                      if k not in ("time", "rollout/weight_copy_bytes", "pipeline/train_compiles")
                      and "_s" not in k and "per_s" not in k and "fraction" not in k and "tokens_per_s" not in k}
    assert [drop(h) for h in a.history] == [drop(h) for h in b.history]


def test_a_small_group_queue_cannot_deadlock_sync_mode(sft_params):
    assert _run(sft_params, steps=1, queue_groups=1).step == 1  # 4 groups per batch, queue of 1


def test_sync_mode_decodes_only_the_batch_whatever_n_async(sft_params, one_batch):
    # Sync mode has one batch (32 sequences) in flight; slots sized for n_async = 64 would
    # each run every decode step on padding, halving the occupancy.
    sized, _ = one_batch
    oversized = _run(sft_params, steps=1, n_async=64, engine=dataclasses.replace(ENGINE, slots=64))
    assert oversized.history[0]["rollout/slot_occupancy"] == sized.history[0]["rollout/slot_occupancy"] > 0.5
    for x, y in zip(_leaves(sized.params), _leaves(oversized.params)):
        np.testing.assert_array_equal(x, y)


def test_async_colocated_learns_spans_versions_and_loses_nothing(sft_params):
    result = _run(sft_params, mode="async", steps=16, n_batch=32, n_async=32, queue_groups=4)
    h = result.history
    assert len(h) == 16 and result.version == sum(r["pipeline/groups_trained"] > 0 for r in h)
    assert result.spanning >= 1  # some sequence continued on new weights mid-flight
    assert max(r["pipeline/lag_versions_spanned_max"] for r in h) >= 1
    reward = [r["reward/mean"] for r in h]  # measured 0.15 -> 0.25..0.32 over three runs
    assert np.mean(reward[-5:]) > np.mean(reward[:5]) + 0.05, reward
    _check_accounting(result)


def test_async_colocated_on_the_trainers_own_arrays_takes_turns_and_loses_nothing(sft_params):
    """RunConfig.sampler_weights="shared" in an async run: the generator reads the arrays
    each donated train step updates, so it takes turns with the trainer (a use of a
    donated array would fail the run); sequences still continue on new weights mid-flight."""
    result = _run(sft_params, mode="async", steps=6, n_batch=32, n_async=32, queue_groups=4, sampler_weights="shared")
    h = result.history
    assert len(h) == 6 and {r["rollout/weight_copy_bytes"] for r in h} == {0}
    assert h[-1]["rollout/trainer_turn_wait_s"] > 0  # the generator waited out the trainer's steps
    assert result.spanning >= 1 and max(r["pipeline/lag_versions_spanned_max"] for r in h) >= 1
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


def test_sync_resume_is_exact(sft_params, straight, tmp_path):
    first = _run(sft_params, steps=2, run_dir=str(tmp_path / "resumed"))
    assert first.step == 2
    second = _run(sft_params, steps=4, run_dir=str(tmp_path / "resumed"))
    assert second.resumed_from == 2 and second.step == 4
    for x, y in zip(_leaves(straight.params), _leaves(second.params)):
        np.testing.assert_array_equal(x, y)
    keys = ("reward/mean", "reward/accuracy", "train/loss", "train/grad_norm", "pipeline/version")
    assert [[h[k] for k in keys] for h in straight.history[2:]] == [[h[k] for k in keys] for h in second.history]


def test_export_writes_a_checkpoint_as_a_hugging_face_directory(one_batch, tmp_path):
    from magjax.cli import main
    from magjax.models import decoder, hf

    result, run_dir = one_batch
    assert main(["export", str(run_dir), "--out", str(tmp_path / "hf")]) == 0
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


def test_a_run_directory_initialises_a_new_job(one_batch):
    from magjax.jobs.records import load_model

    result, run_dir = one_batch
    config, params = load_model("test", str(run_dir), seed=0)  # the checkpoint wins over the preset
    assert config == MODEL
    for x, y in zip(_leaves(params), _leaves(result.params)):
        np.testing.assert_array_equal(x, y)
