"""The demo, shortened: the default `magjax train` job through the CLI, with fewer steps
and problems and in sync mode (bitwise reproducible, so the check is not a coin toss).
RL must lift held-out accuracy above the cold start's."""

import json

from magjax import cli

SHORT = ["--gin.DataConfig.demo_train_size=600", "--gin.DataConfig.demo_heldout_size=48",
         "--gin.train.sft_steps=60", "--gin.RunConfig.mode='sync'", "--gin.RunConfig.steps=12",
         "--gin.EvalConfig.samples=2", "--gin.EvalConfig.every_steps=12"]


def test_a_shortened_demo_improves_on_held_out_problems(tmp_path, capsys):
    assert cli.main(["train", "--run_dir", str(tmp_path), *SHORT]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    before, after = results["eval_before"], results["eval_after"]
    assert before["all"]["problems"] == after["all"]["problems"] >= 40
    assert after["all"]["pass@1"] > before["all"]["pass@1"] + 0.05, (before["all"], after["all"])
    out = capsys.readouterr().out
    assert "pass@1 before" in out and str(tmp_path) in out
