"""Evaluation metrics against hand-made tables."""

import math

import pytest

from magjax.evaluate import majority, pass_at_k, summarize


@pytest.mark.parametrize("n, c, k", [(4, 0, 1), (4, 1, 1), (4, 2, 2), (10, 3, 4), (16, 16, 8), (5, 4, 3)])
def test_pass_at_k_is_the_unbiased_estimator(n, c, k):
    # 1 - C(n-c, k) / C(n, k): the chance that k of the n samples, drawn without
    # replacement, include at least one correct one. By hand for (10, 3, 4): 1 - 35/210.
    expected = 1.0 if n - c < k else 1 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(expected)
    assert pass_at_k(10, 3, 4) == pytest.approx(1 - 35 / 210)


def test_majority_breaks_ties_by_the_earliest_sample():
    # "3" and "4" both appear twice: "3" came first, and it is wrong.
    assert majority(["3", "4", "4", "3"], [False, True, True, False]) is False
    assert majority(["4", "3", "4", "3"], [True, False, True, False]) is True
    assert majority([None, "5", None], [False, True, False]) is True
    assert majority([None, None, None], [True, True, False]) is True  # programs: majority passed
    assert majority([None, None], [True, False]) is False


def test_summary_by_kind_and_language():
    per_problem = {
        "a": {"kind": "math", "language": "en", "correct": [True, False], "answers": ["1", "2"], "lengths": [4, 6]},
        "b": {"kind": "math", "language": "fr", "correct": [False, False], "answers": ["3", "3"], "lengths": [5, 5]},
        "c": {"kind": "code", "language": "en", "correct": [True, True], "answers": [None, None], "lengths": [9, 9]},
    }
    s = summarize(per_problem, 2)
    assert s["all"]["pass@1"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert s["all"]["pass@2"] == pytest.approx((1 + 0 + 1) / 3)
    assert s["kind=math"]["maj@2"] == pytest.approx(0.5) and s["kind=code"]["maj@2"] == 1.0
    assert s["language=fr"]["problems"] == 1 and s["all"]["length_mean"] == pytest.approx((4 + 6 + 5 + 5 + 9 + 9) / 6)
