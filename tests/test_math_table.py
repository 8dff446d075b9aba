"""The math grader on its answer-pair table (magjax/rewards/answer_pairs.tsv): at least 300
pairs in the forms real RL data uses, every category with positives and near-miss negatives;
every pair agrees, in process and through the worker pool within the per-check deadline."""

import collections

import pytest

from magjax.bench.verifier import answer_pairs
from magjax.rewards.math import equivalent
from magjax.rewards.pool import PoolConfig
from magjax.rewards.workers import WorkerPool

TABLE = answer_pairs()
CATEGORIES = ("latex", "labelled", "relations", "sets", "values", "decimals", "mixed")


def test_the_table_is_large_and_every_category_has_both_sides():
    assert len(TABLE) >= 300
    sides = collections.defaultdict(set)
    for category, _, _, expected in TABLE:
        sides[category].add(expected)
    assert set(CATEGORIES) <= set(sides)
    assert all(sides[c] == {True, False} for c in sides), dict(sides)
    counts = collections.Counter((c, e) for c, *_, e in TABLE)
    assert all(counts[(c, e)] >= 8 for c in CATEGORIES for e in (True, False)), counts


@pytest.mark.parametrize("category, gold, pred, expected", TABLE, ids=[f"{c}:{g}|{p}" for c, g, p, _ in TABLE])
def test_pair(category, gold, pred, expected):
    assert equivalent(gold, pred) is expected


def test_no_pair_hits_an_error_the_grader_would_swallow():
    # equivalent() turns SymPy's odd errors into "not equal"; a bug of ours must not hide there.
    from magjax.rewards.latex import LatexError
    from magjax.rewards.math import answers_equal, parse_answer

    for _, gold, pred, _ in TABLE:
        try:
            answers_equal(parse_answer(gold), parse_answer(pred))
        except LatexError:
            pass


def test_the_known_false_positives_of_other_graders_stay_rejected():
    assert not equivalent("\\frac{1}{2004!}", "\\frac{1}{2006!}")
    assert not equivalent("10^{-20}", "2\\cdot10^{-20}")
    assert not equivalent("\\{1,2\\}", "(1,2)") and not equivalent("(1,2)", "\\{1,2\\}")


def test_every_pair_through_the_worker_pool_agrees_within_its_deadline():
    # The real path: the pool's worker processes with their memory cap and per-check deadline.
    # A check past its deadline raises WorkerTimeout, which fails this test.
    config = PoolConfig()
    pool = WorkerPool(2, memory_mb=config.math_memory_mb)
    try:
        verdicts = [pool.call("math.equivalent", gold, pred, timeout=config.math_timeout_s)
                    for _, gold, pred, _ in TABLE]
    finally:
        pool.close()
    wrong = [(g, p, e) for (_, g, p, e), v in zip(TABLE, verdicts) if v is not e]
    assert not wrong and pool.replaced == 0


def test_a_malformed_table_line_is_named(tmp_path):
    bad = tmp_path / "pairs.tsv"
    bad.write_text("# comment\nlatex\t1\t1\t1\nlatex\t1\t2\n")
    with pytest.raises(ValueError, match=r"pairs\.tsv:3"):
        answer_pairs(str(bad))
