"""Math equivalence on a table of (gold, pred, expected) pairs, every category both ways."""

import pytest

from magjax.rewards.math import equivalent, last_boxed
from magjax.rewards.workers import WorkerPool, WorkerTimeout

T, F = True, False
PAIRS = [
    # integers, decimals, thousands separators, scientific notation
    ("42", "42", T), ("42", "42.0", T), ("42", "43", F), ("-7", "-7", T), ("-7", "7", F),
    ("0.5", ".5", T), ("0.25", "0.250", T), ("1,234", "1234", T), ("1,234,567", "1234567", T),
    ("1234567", "1,234,568", F), ("1.5e-3", "0.0015", T), ("3\\times10^{5}", "300000", T),
    ("3\\times 10^{5}", "3\\cdot10^5", T), ("2.5\\times10^{-3}", "0.0025", T), ("1e6", "1000000", T),
    ("1e6", "100000", F), ("3.14", "3.1400", T), ("3.14", "3.15", F), ("007", "7", T), ("0", "-0", T),
    # fractions
    ("\\frac{1}{2}", "0.5", T), ("\\frac{1}{2}", "\\dfrac{1}{2}", T), ("\\frac{1}{2}", "\\dfrac12", T),
    ("\\frac{1}{2}", "1/2", T), ("\\frac{2}{4}", "\\frac{1}{2}", T), ("\\frac{1}{3}", "0.333", F),
    ("\\frac{1}{3}", "0.3333333333", F), ("\\frac{3}{4}", "\\tfrac{3}{4}", T), ("-\\frac{1}{2}", "\\frac{-1}{2}", T),
    ("\\frac{1}{2}", "\\frac{1}{3}", F), ("\\frac{7}{2}", "3.5", T), ("\\frac{22}{7}", "\\pi", F),
    ("\\frac{1}{2004!}", "\\frac{1}{2006!}", F), ("\\frac{1}{2004!}", "\\frac{1}{2004!}", T),
    ("\\frac{2005!}{2004!}", "2005", T), ("5!", "120", T), ("5!", "121", F), ("\\frac{10!}{8!}", "90", T),
    # radicals
    ("\\sqrt{2}", "\\sqrt2", T), ("2\\sqrt{2}", "\\sqrt{8}", T), ("\\sqrt{2}", "1.41421356237", T), ("\\sqrt{2}", "1.4142", F),
    ("\\sqrt{12}", "2\\sqrt{3}", T), ("\\sqrt[3]{27}", "3", T), ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}", T),
    ("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}", T), ("\\sqrt{3}", "\\sqrt{2}", F), ("3\\sqrt{5}", "\\sqrt{45}", T),
    ("\\sqrt{5}-1", "-1+\\sqrt{5}", T), ("\\sqrt{5}-1", "1-\\sqrt{5}", F),
    # pi and e
    ("\\pi", "\\pi", T), ("2\\pi", "2 \\pi", T), ("\\frac{\\pi}{2}", "\\frac{1}{2}\\pi", T), ("\\pi", "3.14", F),
    ("\\pi r^2", "r^2\\pi", T), ("e", "\\mathrm{e}", T), ("e^2", "\\mathrm{e}^2", T), ("e", "2.718281828459045", T), ("e", "2.718", F),
    ("1-\\frac{1}{\\mathrm{e}}", "1+\\frac{1}{\\mathrm{e}}", F), ("1-\\frac{1}{e}", "\\frac{e-1}{e}", T),
    ("10^{-20}", "2\\cdot10^{-20}", F), ("10^{-20}", "10^{-20}", T), ("10^{-20}", "0.00000000000000000001", T),
    # expressions
    ("x^2+2x+1", "(x+1)^2", T), ("x^2-1", "(x-1)(x+1)", T), ("x^2-1", "(x-1)^2", F), ("2x+3", "3+2x", T),
    ("\\frac{x}{2}", "0.5x", T), ("a+b", "b+a", T), ("a-b", "b-a", F), ("\\sin^2", "x", F),
    ("\\sin(x)", "\\sin x", T), ("\\ln(e^3)", "3", T), ("\\log(1)", "0", T), ("2^{10}", "1024", T),
    ("2^{-3}", "\\frac{1}{8}", T), ("(2x)^2", "4x^2", T), ("x_1+x_2", "x_2+x_1", T), ("3x", "x3", T),
    # equations
    ("x=3", "3", T), ("3", "x=3", T), ("x=3", "x = 3", T), ("x=3", "x=4", F), ("y=2x+1", "y=1+2x", T),
    ("y=2x+1", "y=2x-1", F), ("x+y=1", "y=1-x", T), ("k=\\frac{1}{2}", "0.5", T),
    # intervals: open/closed matter
    ("[1,2]", "[1, 2]", T), ("[1,2)", "[1,2)", T), ("[1,2)", "(1,2)", F), ("(1,2]", "[1,2]", F),
    ("(-\\infty, 3]", "(-\\infty,3]", T), ("(-\\infty,3]", "(-\\infty,3)", F), ("[0,\\infty)", "[0, \\infty)", T),
    ("\\left[1,2\\right)", "[1,2)", T), ("[\\frac{1}{2}, 1]", "[0.5, 1]", T), ("[1,3]", "[1,2]", F),
    # sets and tuples are distinct
    ("\\{1,2\\}", "\\{2,1\\}", T), ("\\{1,2\\}", "\\{1,2,3\\}", F), ("(1,2)", "\\{1,2\\}", F),
    ("\\{1,2\\}", "(1,2)", F), ("(1,2)", "(1, 2)", T), ("(1,2)", "(2,1)", F), ("(1,2,3)", "(1,2,3)", T),
    ("(\\frac{1}{2}, 3)", "(0.5, 3)", T), ("\\{-1, 1\\}", "\\{1,-1\\}", T), ("\\left\\{3\\right\\}", "\\{3\\}", T),
    ("\\lbrace 1,2\\rbrace", "\\{1,2\\}", T), ("(1,2,3)", "(1,2)", F),
    # matrices
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}", T),
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{pmatrix}1&2\\\\4&3\\end{pmatrix}", F),
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}1&2\\end{pmatrix}", F),
    ("\\begin{pmatrix}\\frac{1}{2}&0\\\\0&1\\end{pmatrix}", "\\begin{pmatrix}0.5&0\\\\0&1\\end{pmatrix}", T),
    # percentages
    ("50\\%", "50", T), ("50\\%", "0.5", T), ("50\\%", "50\\%", T), ("50\\%", "5", F), ("12.5\\%", "0.125", T),
    ("25%", "25", T), ("25%", "0.3", F),
    # degrees
    ("90^\\circ", "90", T), ("90^{\\circ}", "90", T), ("45°", "45", T), ("30^\\circ", "60", F), ("90\\degree", "90^\\circ", T),
    # units in \text{}
    ("10\\text{ cm}", "10", T), ("5 \\text{ dollars}", "5", T), ("12", "12\\text{ units}", T),
    ("10\\text{ cm}", "11", F), ("3\\text{ hours}", "3", T), ("100\\mbox{ meters}", "100", T),
    # multiple answers (unordered)
    ("1, 2", "2, 1", T), ("1, 2", "1, 3", F), ("1, 2", "1", F), ("x=1, x=2", "2, 1", T),
    ("3\\pm\\sqrt{2}", "3+\\sqrt2, 3-\\sqrt2", T), ("\\pm 2", "2, -2", T), ("1 \\text{ and } 2", "2, 1", T),
    ("-1, 1", "\\pm 1", T), ("2, 3", "2, 3, 4", F),
    # plain-text answers
    ("\\text{Monday}", "monday", T), ("\\text{(B)}", "B", T), ("Paris", "\\text{paris}", T), ("\\text{yes}", "no", F),
    ("\\text{even}", "\\text{odd}", F), ("\\text{Alice}", "Alice", T), ("\\text{none}", "\\text{None}", T),
    # dollar signs, spacing, trailing dots
    ("$5$", "5", T), ("\\$5", "5", F), ("5.", "5", T), ("\\displaystyle\\frac{1}{2}", "0.5", T),
    ("1\\,000", "1000", T), ("\\left(1,2\\right)", "(1,2)", T),
    # garbage and hostile input is simply not equal
    ("5", "", F), ("5", "\\boxed{", F), ("5", "__import__('os').system('true')", F), ("5", "lambda: 5", F),
    ("5", "{" * 3000 + "5" + "}" * 3000, F), ("5", "2^{2^{2^{2^{100}}}}", F), ("1", "9^{9^{9^{9}}}", F),
    ("5", "100000!", F), ("5", "\\frac{1}{0}", F), ("0", "x-x", T),
]


def test_table_is_large_and_balanced():
    assert len(PAIRS) >= 150
    assert sum(e for *_, e in PAIRS) > 60 and sum(not e for *_, e in PAIRS) > 50


@pytest.mark.parametrize("gold, pred, expected", PAIRS)
def test_equivalence(gold, pred, expected):
    assert equivalent(gold, pred) is expected


def test_last_boxed_takes_the_last_balanced_box():
    assert last_boxed("a \\boxed{1} then \\boxed{\\frac{1}{2}} end") == "\\frac{1}{2}"
    assert last_boxed("no box") is None and last_boxed("\\boxed{unclosed") is None


@pytest.fixture(scope="module")
def workers():
    pool = WorkerPool(1, memory_mb=512)
    yield pool
    pool.close()


@pytest.mark.parametrize("pred", ["2^{2^{2^{2^{2^{100}}}}}", "(" * 3000 + "1" + ")" * 3000, "99999!",
                                  "\\frac{(10^{9999})!}{2}", "x^{x^{x^{x^{x}}}}-1",
                                  # the relation, label and collection paths
                                  "x^{9999} < (x+1)^{9999}", "y = (x+1)^{9999}", "(x+1)^{9999} = (x-1)^{9999}",
                                  "\\binom{10^{9}}{10^{5}}", "0 < x^{x^{x}} < 1", ", ".join(["x^{x^{x}}"] * 200),
                                  "\\sin^{99999}(10^{100})", "y = 1 = 2 = 3 = 4 = 5 = 6 = 7"])
def test_inputs_built_to_hang_sympy_come_back_within_the_deadline(workers, pred):
    # Either the guards refuse it at once, or the worker is killed at the deadline: both "incorrect".
    try:
        result = workers.call("math.equivalent", "7", pred, timeout=5.0)
    except WorkerTimeout:
        result = False
    assert result is False
    assert workers.call("math.equivalent", "1/2", "0.5") is True  # the pool is healthy afterwards


def test_the_outermost_box_is_the_answer():
    # The inner box is part of the answer, not the answer: \boxed{\boxed{1/2}+1} answers 3/2.
    text = "so \\boxed{\\boxed{\\frac{1}{2}}+1}."
    assert last_boxed(text) == "\\boxed{\\frac{1}{2}}+1"
    assert equivalent("\\frac{3}{2}", last_boxed(text)) and not equivalent("\\frac{1}{2}", last_boxed(text))
    assert last_boxed("\\boxed{1} and \\boxed{\\boxed{2}} then \\boxed{3 + \\boxed{4}}") == "3 + \\boxed{4}"
    assert last_boxed("\\boxed{2} then \\boxed{\\frac{1}{2}") == "2"  # an unclosed last box


def test_fbox_is_neither_an_answer_nor_a_format_pass():
    # One policy in both places: only \boxed counts (SPEC.md §2.1).
    from magjax.rewards import reward
    from magjax.rewards.format import check_format
    from magjax.types import Problem

    assert last_boxed("\\fbox{7}") is None and last_boxed("\\boxed{7} \\fbox{8}") == "7"
    assert not check_format("math", "<think>x</think>\\fbox{7}").ok
    problem = Problem("p", "math", "What is three plus four?", answer="7")
    assert reward.score(problem, "<think>x</think>\\fbox{7}", 10).total == 0.0
    assert reward.score(problem, "<think>x</think>\\boxed{7} \\fbox{8}", 10).is_correct
