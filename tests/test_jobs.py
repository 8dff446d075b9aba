"""`magjax sft` and `magjax eval` through the CLI, on the demo model and tasks."""

import json

from magjax.cli import main


def test_sft_then_eval_through_the_cli(tmp_path, capsys):
    sft_dir, eval_dir = tmp_path / "sft", tmp_path / "eval"
    assert main(["sft", "--run_dir", str(sft_dir), "--gin.SFTConfig.steps=4", "--gin.SFTConfig.batch_size=8",
                 "--gin.DataConfig.demo_train_size=32", "--gin.SFTConfig.devices_per_process=2"]) == 0
    records = [json.loads(line) for line in (sft_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4] and all("train/loss" in r for r in records)
    assert (sft_dir / "final_hf" / "config.json").exists() and (sft_dir / "operative_config.gin").exists()

    assert main(["eval", "--run_dir", str(eval_dir), f"--gin.INIT_FROM='{sft_dir / 'final_hf'}'",
                 "--gin.DataConfig.demo_heldout_size=6", "--gin.EvalConfig.samples=3",
                 "--gin.EvalConfig.max_new_tokens=8"]) == 0
    out = json.loads((eval_dir / "eval.json").read_text())
    assert out["summary"]["all"]["problems"] == len(out["problems"]) > 0
    assert all(len(p["correct"]) == 3 for p in out["problems"].values())
    assert out["config"]["temperature"] == 0.7  # the paper's evaluation sampling
    printed = capsys.readouterr().out
    assert "pass@3" in printed and "maj@3" in printed and "kind=" in printed


def test_eval_of_a_missing_checkpoint_names_it(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["eval", "--run_dir", str(tmp_path / "e"), f"--gin.INIT_FROM='{missing}'"]) == 2
    assert str(missing) in capsys.readouterr().err


def test_sft_of_a_missing_trace_file_names_it(tmp_path, capsys):
    missing = tmp_path / "traces.jsonl"
    assert main(["sft", "--run_dir", str(tmp_path / "s"), f"--gin.sft_job.traces='{missing}'"]) == 2
    assert str(missing) in capsys.readouterr().err


def test_sft_devices_are_the_first_of_each_process_and_bad_counts_are_named():
    import jax
    import pytest

    from magjax.sft import SFTConfig, sft_devices

    assert sft_devices(-1) is None  # every device, laid out by make_mesh
    assert sft_devices(2) == jax.local_devices()[:2]
    with pytest.raises(ValueError, match="devices_per_process=99"):
        sft_devices(99)
    with pytest.raises(ValueError, match="devices_per_process"):
        SFTConfig(devices_per_process=0)
