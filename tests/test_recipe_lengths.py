"""Every shipped experiment's length penalty can fire: in each curriculum stage (and before
the first, where a run starts before it), l_max - l_cache < max_new_tokens <= l_max, so the
longest completions the run allows reach the penalty's ramp and none is cut off before l_max."""

import pytest

from magjax import config
from magjax.data import curriculum
from test_config import EXPERIMENTS, _required


def _stage_settings(built):
    run, reward, stages = built["RunConfig"], built["RewardConfig"], built["RunConfig"].stages
    indices = ([-1] if not stages or stages[0].start_step > 1 else []) + list(range(len(stages)))
    return [(i, *curriculum.settings(stages, i, run, reward)) for i in indices]


@pytest.mark.parametrize("gin_file", EXPERIMENTS)
def test_every_stage_of_every_experiment_can_apply_the_length_penalty(gin_file):
    config.parse([gin_file], _required(gin_file))
    built = config.build_abstract()
    settings = _stage_settings(built)
    assert settings
    for index, run, reward in settings:
        assert reward.l_max - reward.l_cache < run.max_new_tokens <= reward.l_max, (
            f"{gin_file} stage {index}: max_new_tokens {run.max_new_tokens}, l_max {reward.l_max}, "
            f"l_cache {reward.l_cache}")


def test_a_recipe_whose_penalty_cannot_fire_is_caught():
    # The check itself: magistral_small as it shipped before (max_new_tokens = l_max - l_cache).
    config.parse(["experiments/magistral_small.gin"], _required("experiments/magistral_small.gin") +
                 ["RewardConfig.l_max = 32768", "RewardConfig.l_cache = 8192"])
    (_, run, reward), = _stage_settings(config.build_abstract())
    assert not reward.l_max - reward.l_cache < run.max_new_tokens
