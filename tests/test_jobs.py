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


def test_sft_then_eval_of_a_mistral3_checkpoint_with_only_a_tekken_tokenizer(tmp_path, capsys):
    """A checkpoint laid out as Mistral ships Mistral Small 3.1 / Magistral Small 1.2 (a
    multimodal config.json, prefixed tensors, tekken.json and no tokenizer.json) through the
    CLI with the Mistral chat format: SFT from it, then evaluation of the SFT's final_hf,
    which carries the tokenizer along."""
    import os
    import shutil

    import jax

    from magjax.models import decoder, hf
    from magjax.models.config import ModelConfig
    from magjax.models.safetensors_file import SafetensorsFile, save_file

    text = ModelConfig(family="mistral", vocab_size=3000, hidden_size=32, num_layers=2, num_heads=4,
                       num_kv_heads=2, head_dim=8, intermediate_size=64)
    plain = tmp_path / "plain"
    hf.save(decoder.Decoder(text, params=decoder.init_params(text, jax.random.key(0))), text, plain)
    ckpt = tmp_path / "magistral"
    ckpt.mkdir()
    src = SafetensorsFile(plain / "model.safetensors")
    save_file({"language_model." + k: src.get(k) for k in src.keys()}
              | {"vision_tower.patch_conv.weight": src.get("model.norm.weight")}, ckpt / "model.safetensors")
    text_config = json.loads((plain / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({"architectures": ["Mistral3ForConditionalGeneration"],
                                                  "model_type": "mistral3", "text_config": text_config}))
    shutil.copy(os.path.join(os.path.dirname(__file__), "data", "tekken", "tekken.json"), ckpt)
    mistral = ["--gin.TOKENIZER=%INIT_FROM", "--gin.ChatFormat.style='mistral'"]

    sft = tmp_path / "sft"
    assert main(["sft", "--run_dir", str(sft), f"--gin.INIT_FROM='{ckpt}'", *mistral, "--gin.SFTConfig.steps=2",
                 "--gin.SFTConfig.batch_size=4", "--gin.DataConfig.demo_train_size=16",
                 "--gin.SFTConfig.devices_per_process=1"]) == 0, capsys.readouterr().err
    assert sorted(os.listdir(sft / "final_hf")) == ["config.json", "model.safetensors", "tekken.json"]
    run = tmp_path / "eval"
    assert main(["eval", "--run_dir", str(run), f"--gin.INIT_FROM='{sft / 'final_hf'}'", *mistral,
                 "--gin.DataConfig.demo_heldout_size=4", "--gin.EvalConfig.samples=2",
                 "--gin.EvalConfig.max_new_tokens=6"]) == 0, capsys.readouterr().err
    out = json.loads((run / "eval.json").read_text())
    assert out["summary"]["all"]["problems"] == len(out["problems"]) > 0
    assert all(len(p["correct"]) == 2 for p in out["problems"].values())
