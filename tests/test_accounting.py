"""The run's books under stress: a per-sample lag bound, a run stopped mid-flight, and a
resumed run, each accounting for every completion in exactly one bucket."""

import dataclasses
import signal

from loop_runs import ENGINE, MODEL, PACK, SUMS, _check_accounting, _run
from magjax.loop import RunConfig, run
from magjax.models.tokenizer import ChatFormat
from magjax.recipe import Recipe
from magjax.rl.optimizer import OptimizerConfig


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
    # completions that were never trained, once, as unconsumed. As above, the generator
    # runs a batch ahead and one verifier thread keeps a backlog, so that work is left
    # over however fast the trainer is (its step may be compiled already).
    from magjax.rewards.pool import PoolConfig

    def stop_after(params):
        signal.raise_signal(signal.SIGTERM)
        return {}

    config = dict(mode="async", group_size=8, n_batch=32, n_async=64, max_new_tokens=24, run_dir=str(tmp_path / "run"))
    recipe = Recipe(model=MODEL, chat=ChatFormat("plain", None), engine=dataclasses.replace(ENGINE, slots=64),
                    packing=PACK, optimizer=OptimizerConfig(learning_rate=3e-4), pool=PoolConfig(threads=1),
                    run=RunConfig(steps=10, **config))
    first = run(recipe, SUMS, sft_params, console=False, evaluator=stop_after, eval_every=2)
    assert first.preempted and first.step == 2
    _check_accounting(first)
    left = first.accounting["unconsumed"] + first.accounting["cancelled"]
    second = run(dataclasses.replace(recipe, run=RunConfig(steps=3, **config)), SUMS, sft_params, console=False)
    assert second.resumed_from == 2 and second.step == 3
    _check_accounting(second)
    assert sum(left.values()) > 0 and not left - second.accounting["unconsumed"]  # all still booked
