"""Difficulty filtering with a fake pass-rate source, and code-test validation on fixtures."""

import json

from magjax.data import read_problems
from magjax.data.filtering import FilterConfig, filter_problems
from magjax.data.validation import validate
from magjax.types import IOTest, Problem

PROBLEMS = [Problem(f"p{i}", "math", f"q{i}", answer=str(i)) for i in range(6)]
# Pass rates out of 8: p0 never, p1 1/8, p2 4/8, p3 7/8, p4 always; p5 mislabelled: 6 of 8 say "41".
RATES = {"p0": 0, "p1": 1, "p2": 4, "p3": 7, "p4": 8, "p5": 1}


def fake_source(problem, k):
    right = RATES[problem.id]
    wrong = "41" if problem.id == "p5" else None
    return [(True, problem.answer)] * right + [(False, wrong)] * (k - right)


def test_filter_keeps_the_window_and_drops_a_mislabelled_problem(tmp_path):
    config = FilterConfig(samples=8, min_pass_rate=0.1, max_pass_rate=0.9)
    report = filter_problems(PROBLEMS, fake_source, str(tmp_path), config)
    kept = read_problems(tmp_path / "kept.jsonl")
    assert [p.id for p in kept] == ["p1", "p2", "p3"]
    dropped = {json.loads(l)["id"]: json.loads(l)["reason"] for l in (tmp_path / "dropped.jsonl").read_text().splitlines()}
    assert set(dropped) == {"p0", "p4", "p5"}
    assert dropped["p5"].startswith("likely mislabelled") and "'41'" in dropped["p5"]
    assert "too hard" in dropped["p0"] and "too easy" in dropped["p4"]
    assert sum(report["histogram"]["counts"]) == 6


def test_filter_resumes_without_resampling(tmp_path):
    calls = []

    def counting(problem, k):
        calls.append(problem.id)
        return fake_source(problem, k)

    filter_problems(PROBLEMS[:3], counting, str(tmp_path), FilterConfig(samples=8))
    filter_problems(PROBLEMS, counting, str(tmp_path), FilterConfig(samples=8))
    assert calls == ["p0", "p1", "p2", "p3", "p4", "p5"]


def test_validation_repairs_a_wrong_label_and_drops_an_inconsistent_test():
    square = "n = int(input())\nprint(n * n)"
    square_abs = "n = int(input())\nprint(abs(n) * abs(n))"
    # The two solutions agree everywhere except where one of them crashes on purpose.
    flaky = "n = int(input())\nassert n != 5\nprint(n * n)"
    problem = Problem("sq", "code", "Square n.", code_language="python", solutions=(square, square_abs, flaky),
                      tests=(IOTest("3\n", "9\n"), IOTest("4\n", "17\n"), IOTest("5\n", "25\n")))
    fixed, report = validate([problem])
    assert [t.stdout for t in fixed[0].tests] == ["9\n", "16\n"]
    assert report.repaired == [{"problem": "sq", "test": 1, "old": "17\n", "new": "16\n"}]
    assert [d["test"] for d in report.dropped_tests] == [2]


def test_validation_drops_problems_left_without_tests():
    problem = Problem("bad", "code", "p", code_language="python", solutions=("print(1)", "print(2)"),
                      tests=(IOTest("", "1\n"),))
    fixed, report = validate([problem])
    assert fixed == [] and report.dropped_problems[0]["problem"] == "bad"


def test_filter_and_validate_commands_run_the_real_path(tmp_path, data_dir):
    import os

    from magjax.cli import main

    problems = os.path.join(data_dir, "problems", "good.jsonl")
    assert main(["filter", "--problems", problems, "--out", str(tmp_path / "f"), "--samples", "2",
                 "--max_new_tokens", "8"]) == 0
    rates = [json.loads(l) for l in (tmp_path / "f" / "pass_rates.jsonl").read_text().splitlines()]
    assert len(rates) == 4 and all(len(r["results"]) == 2 for r in rates)
    assert main(["validate-tests", "--problems", problems, "--out", str(tmp_path / "v")]) == 0
    assert len(read_problems(tmp_path / "v" / "validated.jsonl")) == 4


def test_distill_keeps_verified_traces_capped_and_upweights_hard_problems(tmp_path):
    from magjax.data.distill import DistillConfig, distill, read_traces

    def teacher(problem, k):  # p0: never right; p1: right once in 4; p2: always right
        right = {"p0": 0, "p1": 1, "p2": 4}[problem.id]
        return [(True, f"<think>ok</think>\\boxed{{{problem.answer}}}")] * right + [(False, "wrong")] * (k - right)

    report = distill(PROBLEMS[:3], teacher, str(tmp_path / "traces.jsonl"), DistillConfig(samples=4, cap_per_problem=2))
    assert report == {"traces": 3, "unsolved": ["p0"]}
    rows = [json.loads(l) for l in (tmp_path / "traces.jsonl").read_text().splitlines()]
    assert [(r["problem_id"], r["weight"]) for r in rows] == [("p1", 4.0), ("p2", 1.0), ("p2", 1.0)]
    assert len(read_traces(str(tmp_path / "traces.jsonl"))) == 4 + 1 + 1


def test_distill_command_runs_the_real_path(tmp_path, data_dir):
    import os

    from magjax.cli import main

    problems = os.path.join(data_dir, "problems", "good.jsonl")
    assert main(["distill", "--problems", problems, "--out", str(tmp_path), "--samples", "2",
                 "--max_new_tokens", "8"]) == 0
    assert (tmp_path / "traces.jsonl").exists()  # a random model solves nothing: an empty, valid file


def test_validation_can_state_each_io_problem_in_the_other_code_language():
    from magjax.rewards import code as code_lib
    from magjax.types import AssertTest

    tests = (IOTest("2 3\n", "5\n"), IOTest("-1 1\n", "0\n"))
    named = Problem("sum", "code", "Read two integers and print their sum. (Python)", code_language="python",
                    tests=tests, solutions=("a,b=map(int,input().split())\nprint(a+b)",))
    unnamed = Problem("sum2", "code", "Print the sum of two integers.", code_language="cpp", tests=tests)
    asserted = Problem("f", "code", "Write f(x) returning x+1.", code_language="python",
                       tests=(AssertTest("assert f(1) == 2", "f"),))
    fixed, report = validate([named, unnamed, asserted], duplicate_languages=True)
    by_id = {p.id: p for p in fixed}
    assert set(by_id) == {"sum", "sum2", "f", "sum.cpp", "sum2.python"}
    assert by_id["sum.cpp"].prompt == "Read two integers and print their sum. (C++)"
    assert by_id["sum.cpp"].code_language == "cpp" and by_id["sum.cpp"].solutions == ()
    assert by_id["sum2.python"].prompt.endswith("Write the solution in Python.")
    assert [d["problem"] for d in report.not_duplicated] == ["f"]
    # The twin is a real problem: a C++ solution passes its tests in the sandbox.
    cpp = "#include <iostream>\nint main(){long a,b;std::cin>>a>>b;std::cout<<a+b<<\"\\n\";}\n"
    assert code_lib.run_tests(cpp, "cpp", list(by_id["sum.cpp"].tests)).passed
