import jax.numpy as jnp
import numpy as np
import pytest

from magjax.rl import batching
from magjax.rl.losses import policy_objective
from rollouts import random_groups

PACK = batching.PackingConfig(rows=4, row_len=16)


def _loss_at_ratio_one(groups, loss_config):
    """With pi_theta = pi_old every ratio is 1 and the loss is -sum(w * A) over tokens."""
    (batch,), _ = batching.make_minibatches(groups, loss_config, PACK)
    loss, _ = policy_objective(jnp.asarray(batch.old_logprobs_mbt), batch.old_logprobs_mbt, batch.advantages_mbt,
                               batch.weights_mbt, 0.2, 0.28)
    return float(loss)


@pytest.mark.parametrize("aggregation, expected", [
    # Groups of G=2 with rewards [1, 0] and completion lengths [1, 3] and [4, 4].
    # Dr. GRPO advantages: [+.5, -.5] in both groups. Per-sequence sums of A over tokens:
    # group 1: .5 * 1 - .5 * 3 = -1; group 2: .5 * 4 - .5 * 4 = 0.
    # group:     w = 1 / (2 groups * 4 tokens) for group 1 -> loss = -(-1 / 8)  = 0.125
    # minibatch: w = 1 / 12 tokens                         -> loss = -(-1 / 12) = 0.0833
    # constant:  w = 1 / (C=10 * 4 sequences)              -> loss = -(-1 / 40) = 0.025
    ("group", 0.125), ("minibatch", 1 / 12), ("constant", 0.025),
])
def test_aggregation_modes_on_groups_of_unequal_length(aggregation, expected):
    groups = random_groups(2, 2, rewards=[[1, 0], [1, 0]])
    for c, n in zip([*groups[0].completions, *groups[1].completions], [1, 3, 4, 4]):
        c.tokens, c.logprobs, c.versions = c.tokens[:1] * n, [-1.0] * n, [0] * n
    config = batching.AdvantageConfig(aggregation=aggregation, advantage_mode="dr_grpo", constant_normalizer=10)
    assert _loss_at_ratio_one(groups, config) == pytest.approx(expected, abs=1e-7)


def test_a_filtered_group_contributes_to_no_denominator():
    live = random_groups(3, 4, seed=1)
    dead = random_groups(1, 4, seed=2, rewards=[[0.1, 0.1, 0.1, 0.1]])
    dead[0].problem_id = "dead"
    for aggregation in ("group", "minibatch", "constant"):
        config = batching.AdvantageConfig(aggregation=aggregation)
        (with_dead,), stats = batching.make_minibatches(live + dead, config, PACK)
        (without,), _ = batching.make_minibatches(live, config, PACK)
        assert stats["groups_filtered"] == 1 and stats["removed"] == ["dead"]
        for a, b in zip(vars(with_dead).values(), vars(without).values()):
            np.testing.assert_array_equal(a, b)


def test_packing_is_first_fit_decreasing_and_keeps_sequences_apart():
    assert batching.first_fit_decreasing([5, 9, 3, 7, 4], 12) == [[1, 2], [3, 0], [4]]  # 9, 7, 5, 4, 3 in turn
    groups = random_groups(4, 4, seed=3)
    (batch,), stats = batching.make_minibatches(groups, batching.AdvantageConfig(), PACK)
    m, b, t = batch.tokens_mbt.shape
    assert (b, t) == (4, 16) and m & (m - 1) == 0  # a power of two
    seqs = [c for g in groups for c in g.completions]
    used = sum(len(c.prompt_tokens) + len(c.tokens) - 1 for c in seqs)
    assert stats["padding_fraction"] == pytest.approx(1 - used / (m * b * t))
    assert int((batch.weights_mbt > 0).sum()) == sum(len(c.tokens) for c in seqs)
    # Positions restart at every segment start.
    seg = batch.segment_ids_mbt.reshape(-1, t)
    pos = batch.positions_mbt.reshape(-1, t)
    starts = (seg != np.roll(seg, 1, axis=1)) | (np.arange(t) == 0)
    assert (pos[starts & (seg > 0)] == 0).all()


def test_minibatches_hold_whole_groups_and_oversized_sequences_fail_clearly():
    groups = random_groups(5, 2, seed=4)
    parts = batching.split_minibatches(groups, 2)
    assert [len(p) for p in parts] == [2, 3] or [len(p) for p in parts] == [3, 2]
    long = random_groups(1, 2, seed=5, completion_len=(30, 31), rewards=[[0, 1]])
    with pytest.raises(ValueError, match="does not fit rows of 16"):
        batching.make_minibatches(long, batching.AdvantageConfig(), PACK)


def test_rows_from_a_per_chip_token_budget():
    budget = batching.PackingConfig(row_len=16, tokens_per_chip=40)  # two whole rows per shard
    assert budget.for_mesh(4) == batching.PackingConfig(rows=8, row_len=16)
    assert budget.for_mesh(1).rows == 2
    assert PACK.for_mesh(8) is PACK  # no budget: rows as configured
    with pytest.raises(ValueError, match="tokens_per_chip"):
        batching.PackingConfig(row_len=16, tokens_per_chip=8)
    # Packing with a budget not yet resolved for a mesh is refused, never guessed.
    with pytest.raises(ValueError, match="for_mesh"):
        batching.make_minibatches(random_groups(1, 2), batching.AdvantageConfig(), budget)
    (batch,), _ = batching.make_minibatches(random_groups(4, 2, seed=3), batching.AdvantageConfig(), budget.for_mesh(2))
    assert batch.tokens_mbt.shape[1:] == (4, 16)
