"""Problem loaders, the resumable iterator and the built-in demo tasks."""

import os

import pytest

from magjax.data import LoadReport, ProblemFormatError, read_problems
from magjax.data.iterator import ProblemIterator
from magjax.data.loaders import write_problems
from magjax.data.synthetic import generate, wrong_solution
from magjax.models.tokenizer import ByteTokenizer
from magjax.rewards.reward import score


def test_jsonl_and_parquet_give_identical_problems(data_dir):
    jsonl = read_problems(os.path.join(data_dir, "problems", "good.jsonl"))
    parquet = read_problems(os.path.join(data_dir, "problems", "good.parquet"))
    assert len(jsonl) == 4 and jsonl == parquet
    assert jsonl[2].tests[1].stdout == "16\n" and jsonl[3].tests[0].entry_point == "add"


def test_a_datasets_directory_of_arrow_files_loads(data_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(os.path.join(data_dir, "problems", "good.parquet"))
    with pa.OSFile(str(tmp_path / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    assert read_problems(tmp_path) == read_problems(os.path.join(data_dir, "problems", "good.jsonl"))


def test_malformed_lines_are_reported_with_line_numbers(data_dir):
    path = os.path.join(data_dir, "problems", "bad.jsonl")
    report = LoadReport(path)
    problems = read_problems(path, report=report)
    assert [p.id for p in problems] == ["m1", "m2"]
    assert report.skipped == 4
    assert [e.split(": ", 1)[0].rsplit(":", 1)[1] for e in report.errors] == ["2", "3", "4", "5"]
    assert "bad JSON" in report.errors[0] and "'prompt'" in report.errors[1]
    assert "'difficulty'" in report.errors[2] and "needs tests" in report.errors[3]
    with pytest.raises(ProblemFormatError, match=r"bad\.jsonl:2: bad JSON"):
        read_problems(path, strict=True)


def test_written_problems_read_back(tmp_path, data_dir):
    problems = read_problems(os.path.join(data_dir, "problems", "good.jsonl"))
    write_problems(problems, tmp_path / "out.jsonl")
    assert read_problems(tmp_path / "out.jsonl") == problems


@pytest.mark.parametrize("shards", [1, 2])
def test_resumed_iterator_continues_exactly(shards):
    problems = [t.problem for t in generate(23, seed=1)]
    for shard in range(shards):
        straight = ProblemIterator(problems, seed=5, shard_index=shard, shard_count=shards)
        expected = [p.id for p in straight.take(40)]  # crosses epoch boundaries
        first = ProblemIterator(problems, seed=5, shard_index=shard, shard_count=shards)
        head = [p.id for p in first.take(17)]
        state = first.get_state()
        resumed = ProblemIterator(problems, seed=5, shard_index=shard, shard_count=shards)
        resumed.set_state(state)
        assert head + [p.id for p in resumed.take(23)] == expected
    if shards == 2:
        a = ProblemIterator(problems, seed=5, shard_index=0, shard_count=2).take(11)
        b = ProblemIterator(problems, seed=5, shard_index=1, shard_count=2).take(11)
        assert not {p.id for p in a} & {p.id for p in b}
    with pytest.raises(ValueError, match="seed=5"):
        ProblemIterator(problems, seed=6).set_state(ProblemIterator(problems, seed=5).get_state())


def test_demo_tasks_are_deterministic_and_their_solutions_score():
    tasks = generate(16, seed=3, code_languages=("python", "cpp"))
    assert [t.problem for t in tasks] == [t.problem for t in generate(16, seed=3, code_languages=("python", "cpp"))]
    assert {t.problem.kind for t in tasks} == {"math", "code"} and len({t.problem.language for t in tasks}) > 2
    tok = ByteTokenizer()
    for t in tasks:
        assert score(t.problem, t.solution, len(tok.encode(t.solution))).total >= 1.0, t
        assert score(t.problem, wrong_solution(t), 10).total == pytest.approx(0.1), t


@pytest.mark.parametrize("family", ["arith", "words", "larger", "smaller", "equation", "fraction"])
def test_every_math_family_is_well_posed(family):
    tasks = generate(12, seed=7, kinds=("math",), difficulties=(1, 2), math_families=(family,))
    tok = ByteTokenizer()
    for t in tasks:
        assert t.problem.id.startswith(f"math-{family}-")
        assert score(t.problem, t.solution, len(tok.encode(t.solution))).total >= 1.0, t
        assert score(t.problem, wrong_solution(t), 10).total == pytest.approx(0.1), t


def test_the_cold_start_mix_follows_the_data_config():
    from magjax.data.sources import DataConfig, datasets

    problems, heldout, examples = datasets(DataConfig(demo_train_size=200, demo_heldout_size=20,
                                                      sft_languages=("en",), sft_code_fraction=0.2))
    english = [p for p in problems if p.language == "en"]
    by_prompt = {p.prompt: p for p in english}
    kinds = [by_prompt[prompt].kind for prompt, _ in examples]
    assert all(prompt in by_prompt for prompt, _ in examples)  # English worked solutions only
    assert kinds.count("code") == round(kinds.count("math") * 0.2 / 0.8)
    train_math = {p.prompt for p in problems if p.kind == "math"}
    assert heldout and not any(p.prompt in train_math for p in heldout if p.kind == "math")
