"""Every job says what it did with its input: records loaded and skipped (with file:line
reasons), ``--strict`` makes a skip fatal, a binding it would not honour is refused with
the reason, and an expected failure is one line naming the thing at fault."""

import json

import pytest

from magjax.cli import main

GOOD = {"id": "math-ok", "kind": "math", "prompt": "Compute 3+4.", "answer": "7"}


@pytest.fixture
def problems(tmp_path):
    """A problem file as a new user might write one: the second line is truncated JSON,
    the third has a misspelt kind."""
    path = tmp_path / "problems.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + '{"id": "math-cut", "kind": "math", "prom\n'
                    + json.dumps({"id": "code-typo", "kind": "cod", "prompt": "Print 1."}) + "\n")
    return path


def _one_line_error(capsys, *names):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for name in names:
        assert str(name) in err, err
    return err


def _reports_skips(out, path):
    assert f"{path}: loaded 1 records, skipped 2" in out, out
    assert f"{path}:2: bad JSON" in out and f"{path}:3:" in out and "'cod'" in out, out


def test_filter_reports_skipped_records_and_strict_makes_them_fatal(problems, tmp_path, capsys):
    args = ["filter", "--problems", str(problems), "--samples", "2", "--max_new_tokens", "8"]
    assert main(args + ["--out", str(tmp_path / "f")]) == 0
    out = capsys.readouterr().out
    _reports_skips(out, problems)
    assert "kept 0, dropped 1" in out or "kept 1, dropped 0" in out
    assert main(args + ["--out", str(tmp_path / "strict"), "--strict"]) == 2
    _one_line_error(capsys, "--strict", "2 record(s) skipped", f"{problems}:2")
    assert not (tmp_path / "strict").exists()  # nothing sampled


@pytest.mark.parametrize("command", ["filter", "distill"])
def test_a_missing_model_directory_is_one_line(command, problems, tmp_path, capsys):
    assert main([command, "--problems", str(problems), "--out", str(tmp_path / "o"),
                 "--init_from", "/nonexistent"]) == 2
    _one_line_error(capsys, "/nonexistent")


def test_filter_refuses_gin_bindings(problems, tmp_path, capsys):
    assert main(["filter", "--problems", str(problems), "--out", str(tmp_path / "o"),
                 "--gin.SamplingConfig.temperature=0.5"]) == 2
    _one_line_error(capsys, "SamplingConfig.temperature", "no gin bindings")


def test_eval_evaluates_the_held_out_file_it_is_given(problems, tmp_path, capsys):
    run_dir = tmp_path / "e"
    assert main(["eval", "--run_dir", str(run_dir), f"--gin.DataConfig.heldout='{problems}'",
                 "--gin.EvalConfig.samples=1", "--gin.EvalConfig.max_new_tokens=8"]) == 0
    _reports_skips(capsys.readouterr().out, problems)
    assert list(json.loads((run_dir / "eval.json").read_text())["problems"]) == ["math-ok"]
    assert main(["eval", "--run_dir", str(tmp_path / "s"), f"--gin.DataConfig.heldout='{problems}'",
                 "--strict"]) == 2
    _one_line_error(capsys, "--strict")


def test_eval_refuses_a_binding_it_would_ignore(tmp_path, capsys):
    assert main(["eval", "--run_dir", str(tmp_path / "e"), "--gin.SamplingConfig.temperature=0.5"]) == 2
    _one_line_error(capsys, "SamplingConfig", "EvalConfig")  # the reason names what eval does read


def test_train_reports_its_data_and_refuses_what_it_overrides(problems, tmp_path, capsys):
    assert main(["train", "--run_dir", str(tmp_path / "t"), f"--gin.DataConfig.train='{problems}'",
                 "--strict"]) == 2
    _reports_skips(capsys.readouterr().out, problems)
    assert main(["train", "--run_dir", str(tmp_path / "t"), "--gin.SFTConfig.steps=5"]) == 2
    _one_line_error(capsys, "SFTConfig.steps", "train.sft_steps")


def test_sft_refuses_the_rl_optimizer_and_names_a_bad_trace_line(tmp_path, capsys):
    assert main(["sft", "--run_dir", str(tmp_path / "s"), "--gin.OptimizerConfig.learning_rate=0.1"]) == 2
    _one_line_error(capsys, "OptimizerConfig", "Recipe.sft_optimizer")
    traces = tmp_path / "traces.jsonl"
    traces.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n{\"prompt\": \n")
    assert main(["sft", "--run_dir", str(tmp_path / "s"), f"--gin.sft_job.traces='{traces}'"]) == 2
    _one_line_error(capsys, f"{traces}:2")


def test_validate_tests_reports_skipped_records(problems, tmp_path, capsys):
    assert main(["validate-tests", "--problems", str(problems), "--out", str(tmp_path / "v")]) == 0
    _reports_skips(capsys.readouterr().out, problems)
    assert main(["validate-tests", "--problems", str(problems), "--out", str(tmp_path / "v"), "--strict"]) == 2
    _one_line_error(capsys, "--strict")


def test_report_counts_torn_metrics_lines(tmp_path, capsys):
    lines = [json.dumps({"step": s, "reward/mean": 0.1 * s}) for s in (1, 2)] + ['{"step": 3, "rew']
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match="torn write"):
        assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "loaded 2 records, skipped 1" in out and "metrics.jsonl:3" in out
    with pytest.warns(UserWarning):
        assert main(["report", str(tmp_path), "--strict"]) == 2
    _one_line_error(capsys, "--strict")


def test_export_without_checkpoints_is_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nowhere"), "--out", str(tmp_path / "hf")]) == 2
    _one_line_error(capsys, "no checkpoints", tmp_path / "nowhere")


def test_plan_refuses_a_binding_it_does_not_read(capsys):
    assert main(["plan", "--gin.EvalConfig.samples=3"]) == 2
    _one_line_error(capsys, "EvalConfig", "plan")
