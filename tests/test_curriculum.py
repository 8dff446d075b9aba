"""Curriculum stages: settings inherit in order, windows select problems, and a run switches
data, lengths and batch sizes at the configured steps, resuming exactly across a switch."""

import dataclasses

import jax
import numpy as np
import pytest

from magjax.data import curriculum
from magjax.data.loaders import write_problems
from magjax.loop import RunConfig, run
from magjax.models.tokenizer import ChatFormat
from magjax.recipe import Recipe
from magjax.models import preset
from magjax.rewards.reward import RewardConfig
from magjax.rl.batching import PackingConfig
from magjax.rl.optimizer import OptimizerConfig
from magjax.sampling.engine import EngineConfig
from magjax.types import IOTest, Problem

Stage = curriculum.Stage
SUMS = [Problem(f"math-p{i}", "math", f"Compute {a}+{b}.", answer=str(a + b), difficulty=1.0)
        for i, (a, b) in enumerate([(3, 4), (2, 5), (6, 1), (4, 4)])]
HARD = [Problem(f"math-h{i}", "math", f"Compute {a}*{b}.", answer=str(a * b), difficulty=3.0)
        for i, (a, b) in enumerate([(13, 4), (12, 5), (16, 3), (14, 7)])]
CODE = [Problem(f"code-c{i}", "code", "Read two integers and print their sum. (Python)", language="en", code_language="python",
                tests=(IOTest(f"{i} 2\n", f"{i + 2}\n"),), difficulty=2.0) for i in range(4)]


def test_stages_inherit_what_they_leave_out():
    stages = (Stage(1, n_batch=64, l_max=100), Stage(5, max_new_tokens=48), Stage(9, n_batch=16, l_cache=8))
    base, reward = RunConfig(n_batch=32, group_size=8, n_async=32), RewardConfig(l_max=64, l_cache=16)
    assert [curriculum.index_at(stages, s) for s in (1, 4, 5, 8, 9, 100)] == [0, 0, 1, 1, 2, 2]
    run_cfg, rew = curriculum.settings(stages, 1, base, reward)
    assert (run_cfg.n_batch, run_cfg.max_new_tokens, rew.l_max, rew.l_cache) == (64, 48, 100, 16)
    run_cfg, rew = curriculum.settings(stages, 2, base, reward)
    assert (run_cfg.n_batch, run_cfg.max_new_tokens, rew.l_max, rew.l_cache) == (16, 48, 100, 8)
    assert curriculum.index_at((Stage(3),), 2) == -1  # before the first stage: the run's own settings


def test_bad_stages_are_clear_errors():
    with pytest.raises(ValueError, match="strictly increase"):
        RunConfig(stages=(Stage(5), Stage(5)))
    with pytest.raises(ValueError, match="multiple of group_size"):  # a stage cannot break a constraint unseen
        curriculum.settings((Stage(1, n_batch=30),), 0, RunConfig(group_size=8, n_batch=32, n_async=32),
                            RewardConfig())
    with pytest.raises(ValueError, match=r"stages\[1\].*no problem inside"):
        curriculum.select(SUMS, Stage(4, min_difficulty=5), "stages[1]")
    rated = [dataclasses.replace(p, pass_rate=r) for p, r in zip(SUMS, (0.1, 0.5, 0.9, None))]
    chosen = curriculum.select(rated, Stage(1, max_pass_rate=0.5), "s")
    assert [p.id for p in chosen] == ["math-p0", "math-p1", "math-p3"]  # unrated problems stay


def _run(params, tmp_path, steps, run_dir=None):
    write_problems(CODE + HARD, str(tmp_path / "stage2.jsonl"))
    stages = (Stage(1, max_difficulty=1), Stage(3, data=str(tmp_path / "stage2.jsonl"), min_difficulty=2,
                                              max_difficulty=2, n_batch=16, max_new_tokens=8, l_max=8, l_cache=2))
    config = RunConfig(mode="sync", steps=steps, group_size=8, n_batch=32, n_async=32, max_new_tokens=24,
                       stages=stages, run_dir=run_dir)
    recipe = Recipe(model=preset("demo"), chat=ChatFormat("plain", None), run=config,
                    engine=EngineConfig(slots=32, max_len=96, prompt_buckets=(32, 72), chunk_steps=8),
                    optimizer=OptimizerConfig(learning_rate=3e-4), packing=PackingConfig(rows=8, row_len=96),
                    reward=RewardConfig(l_max=24, l_cache=8))
    return run(recipe, SUMS + HARD, params, console=False)


def test_a_run_switches_stage_and_resumes_exactly_across_the_switch(sft_params, tmp_path):
    straight = _run(sft_params, tmp_path, 4)
    h = straight.history
    assert [r["pipeline/stage"] for r in h] == [0, 0, 1, 1]
    groups = [r["pipeline/groups_trained"] + r["pipeline/groups_filtered"] for r in h]
    assert groups == [4, 4, 2, 2]  # n_batch 32 -> 16 with groups of 8
    # Stage 0: only the difficulty-1 sums; stage 1: only the file's difficulty-2 code problems.
    assert all("reward/accuracy_code" not in r for r in h[:2]) and all("reward/accuracy_math" in r for r in h[:2])
    assert all("reward/accuracy_code" in r and "reward/accuracy_math" not in r for r in h[2:])
    assert max(r["rollout/length_max"] for r in h[2:]) <= 8 < max(r["rollout/length_max"] for r in h[:2])

    _run(sft_params, tmp_path, 3, run_dir=str(tmp_path / "resumed"))  # stops inside stage 1
    resumed = _run(sft_params, tmp_path, 4, run_dir=str(tmp_path / "resumed"))
    assert resumed.resumed_from == 3
    for x, y in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
