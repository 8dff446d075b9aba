"""The per-sample lag bound (``RunConfig.max_lag_versions``): groups too far off-policy out.

A completion's lag is how many policy versions its oldest token is behind the weights the
trainer holds when its batch is trained: ``version - min(completion.versions)``. A sequence
that continued on new weights mid-flight is judged by its first token, the oldest.

A group with one stale member is dropped whole. GRPO's advantages are relative to the
group (reward minus the group's mean, SPEC.md §1): dropping one member changes every other
member's advantage and leaves a group of a different size, whose baseline was estimated
from fewer samples than the recipe asked for. Re-weighting the remaining members would
need a correction no peer system agrees on; dropping the group keeps every trained group
exactly as the recipe defines it, at the cost of the group's fresh members (counted).
"""

from __future__ import annotations

from magjax.types import ScoredGroup


def lag(group: ScoredGroup, version: int) -> int:
    """Versions between ``version`` and the group's oldest token."""
    return version - min(min(c.versions) for c in group.completions)


def split_stale(groups: list[ScoredGroup], version: int,
                max_lag_versions: int | None) -> tuple[list[ScoredGroup], list[ScoredGroup]]:
    """(fresh, stale): a group is stale when any member's oldest token lags ``version`` by
    more than ``max_lag_versions`` (None: no bound, nothing is stale)."""
    if max_lag_versions is None:
        return list(groups), []
    fresh, stale = [], []
    for g in groups:
        (stale if lag(g, version) > max_lag_versions else fresh).append(g)
    return fresh, stale
