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


def test_pass_at_k_refuses_more_draws_than_samples():
    # Four wrong samples say nothing about eight draws; the old answer was 1.0.
    with pytest.raises(ValueError, match="pass@8.*at least 8 samples.*got 4"):
        pass_at_k(n=4, c=0, k=8)
    with pytest.raises(ValueError, match="0 <= correct <= samples"):
        pass_at_k(4, 5, 2)
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 1, 4) == 1.0


def test_majority_votes_by_the_graders_equivalence():
    # 1/2, 0.5 and \frac{1}{2} are one answer: three votes against two for 3.
    answers = ["3", "1/2", "0.5", "3", "\\frac{1}{2}"]
    correct = [False, True, True, False, True]
    assert majority(answers, correct) is False  # raw strings split the vote: "3" wins
    from magjax.rewards.pool import PoolConfig, answer_equality

    with answer_equality(PoolConfig(math_timeout_s=5.0)) as same:  # the grader, in a worker process
        assert majority(answers, correct, same) is True
        assert same("0.5", "\\frac{1}{2}") and not same("0.5", "3")
        per_problem = {"p": {"kind": "math", "language": "en", "correct": correct, "answers": answers,
                             "lengths": [1] * 5}}
        assert summarize(per_problem, 5, same)["all"]["maj@5"] == 1.0
        assert summarize(per_problem, 5)["all"]["maj@5"] == 0.0


def test_majority_ties_between_classes_go_to_the_earliest():
    from magjax.rewards.math import equivalent

    # Two classes of two: {0.5, 1/2} came first.
    assert majority(["0.5", "2", "1/2", "2.0"], [True, False, True, False], equivalent) is True
    assert majority(["2", "0.5", "1/2", "2.0"], [False, True, True, False], equivalent) is False
