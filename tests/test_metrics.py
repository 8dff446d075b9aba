"""The metrics writer: one JSON line per step, and a console line that shows what the step has."""

import io
import json

from magjax.metrics import MetricsWriter


def test_console_lines_show_rl_rollouts_and_supervised_losses(tmp_path):
    stream = io.StringIO()
    writer = MetricsWriter(str(tmp_path), total_steps=4, tensorboard=False, stream=stream)
    writer.write(1, {"train/loss": 2.5, "train/grad_norm": 0.75, "train/learning_rate": 3e-4})
    writer.write(2, {"reward/mean": 0.25, "reward/accuracy": 0.5, "rollout/length_mean": 40.0,
                     "rollout/tokens_per_s": 900.0, "pipeline/lag_tokens_mean": 0.1, "train/loss": 0.01})
    writer.close()
    sft_line, rl_line = stream.getvalue().splitlines()
    assert sft_line.startswith("step 1/4  loss 2.5000  grad norm 0.750  lr 3.00e-04")
    assert "nan" not in sft_line and "reward" not in sft_line
    assert rl_line.startswith("step 2/4  reward 0.250  acc 0.500  len 40  tok/s 900  lag 0.10")
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and records[0]["train/loss"] == 2.5
