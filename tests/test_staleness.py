"""The per-sample lag bound: a group with a member whose oldest token is too old is dropped whole."""

import pytest

from magjax.loop import RunConfig
from magjax.rl.staleness import lag, split_stale
from magjax.types import Completion, ScoredGroup


def _group(uid, *token_versions):
    completions = [Completion("p", i, [1], [7] * len(v), [-1.0] * len(v), list(v), uid=uid)
                   for i, v in enumerate(token_versions)]
    return ScoredGroup("p", completions, [float(i) for i in range(len(completions))])


def test_a_group_is_as_old_as_its_oldest_token():
    # At trainer version 5: one member started at version 2 and continued mid-flight to 5.
    assert lag(_group(1, [4, 4], [2, 3, 5]), 5) == 3
    assert lag(_group(2, [5], [5, 5]), 5) == 0


def test_split_drops_whole_groups_beyond_the_bound_and_none_when_off():
    fresh_g, edge_g, stale_g = _group(1, [5], [5]), _group(2, [3, 4], [5]), _group(3, [5], [2, 5])
    fresh, stale = split_stale([fresh_g, edge_g, stale_g], 5, 2)
    assert [g.completions[0].uid for g in fresh] == [1, 2]  # lag 2 is allowed, 3 is not
    assert [g.completions[0].uid for g in stale] == [3]  # its fresh member goes with it
    assert split_stale([fresh_g, stale_g], 5, 0) == ([fresh_g], [stale_g])
    assert split_stale([fresh_g, stale_g], 5, None) == ([fresh_g, stale_g], [])


def test_a_negative_bound_is_refused():
    with pytest.raises(ValueError, match="max_lag_versions"):
        RunConfig(max_lag_versions=-1)
