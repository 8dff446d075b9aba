import numpy as np
import pytest

from magjax.rl import advantages as A

# Two groups of G=4. Group means: 0.5 and 0.35.
REWARDS = np.array([[1.0, 0.0, 0.0, 1.0], [1.1, 0.1, 0.1, 0.1]])


def test_dr_grpo_subtracts_the_group_mean():
    # r - mean: [1-.5, 0-.5, ...] and [1.1-.35, .1-.35, ...]
    np.testing.assert_allclose(A.advantages(REWARDS, "dr_grpo"),
                               [[0.5, -0.5, -0.5, 0.5], [0.75, -0.25, -0.25, -0.25]], atol=1e-12)


def test_grpo_divides_by_the_group_std():
    # Group 1: population std 0.5 -> +-1. Group 2: variance (0.75^2 + 3 * 0.25^2) / 4 = 0.1875,
    # std = 0.4330127 -> 0.75 / 0.4330127 = 1.7320508, -0.25 / 0.4330127 = -0.5773503.
    np.testing.assert_allclose(A.advantages(REWARDS, "grpo"),
                               [[1, -1, -1, 1], [1.7320508, -0.5773503, -0.5773503, -0.5773503]], atol=1e-5)


def test_rloo_uses_the_mean_of_the_others():
    # r_1 of group 1: 1 - mean(0, 0, 1) = 2/3; r_2: 0 - mean(1, 0, 1) = -2/3.
    # Group 2: 1.1 - 0.1 = 1.0; 0.1 - mean(1.1, .1, .1) = -1/3.
    np.testing.assert_allclose(A.advantages(REWARDS, "rloo"),
                               [[2 / 3, -2 / 3, -2 / 3, 2 / 3], [1.0, -1 / 3, -1 / 3, -1 / 3]], atol=1e-12)


def test_magistral_normalises_centered_rewards_over_the_minibatch():
    # Centered: [.5, -.5, -.5, .5, .75, -.25, -.25, -.25]; mean 0;
    # variance (4 * .25 + .5625 + 3 * .0625) / 8 = 0.21875; std 0.4677072.
    # .5 / .4677072 = 1.0690450, .75 / .4677072 = 1.6035675, -.25 / .4677072 = -0.5345225.
    np.testing.assert_allclose(
        A.advantages(REWARDS, "magistral"),
        [[1.069045, -1.069045, -1.069045, 1.069045], [1.6035675, -0.5345225, -0.5345225, -0.5345225]], atol=1e-5)


def test_magistral_on_a_minibatch_with_nonzero_mean():
    # One group [0, 1] centered [-.5, .5]; another [2, 2, ...] cannot appear (filtered), so use
    # [[0, 1], [0, 3]] -> centered [-.5, .5, -1.5, 1.5], mean 0, variance (2 * .25 + 2 * 2.25) / 4 = 1.25.
    out = A.advantages(np.array([[0.0, 1.0], [0.0, 3.0]]), "magistral")
    np.testing.assert_allclose(out, np.array([[-0.5, 0.5], [-1.5, 1.5]]) / np.sqrt(1.25), atol=1e-5)


def test_zero_variance_filter_on_reward_and_on_correctness():
    rewards = np.array([[1.0, 1.0, 1.0], [1.0, 0.95, 1.0], [0.1, 0.2, 1.0]])
    correct = np.array([[1, 1, 1], [1, 1, 1], [0, 0, 1]])
    assert A.zero_variance_groups(rewards).tolist() == [True, False, False]
    assert A.zero_variance_groups(rewards, correct, on="correct").tolist() == [True, True, False]
    with pytest.raises(ValueError, match="unknown advantage mode"):
        A.advantages(REWARDS, "ppo")
