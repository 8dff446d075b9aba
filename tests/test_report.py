"""``magjax report`` on a run directory: every plot written and non-empty, plus the index."""

import json

from magjax.cli import main
from magjax.report import PLOTS


def test_report_writes_every_plot(tmp_path):
    rows = [{"step": s, "reward/mean": 0.1 * s, "reward/accuracy": 0.05 * s, "reward/format": 1.0,
             "rollout/length_mean": 20 + s, "rollout/length_max": 40, "train/entropy": 1.0 / s,
             "train/clip_low_fraction": 0.01, "train/clip_high_fraction": 0.02, "pipeline/lag_tokens_mean": 1.0,
             "pipeline/lag_versions_spanned_mean": 0.5, "pipeline/lag_tokens_max": 2, "rollout/tokens_per_s": 300,
             "pipeline/trainer_idle_fraction": 0.3, "pipeline/generator_idle_fraction": 0.1} for s in range(1, 6)]
    (tmp_path / "rl").mkdir()
    (tmp_path / "rl" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert main(["report", str(tmp_path)]) == 0
    for name in [*PLOTS, "reward_vs_length.png", "index.html"]:
        path = tmp_path / "report" / name
        assert path.exists() and path.stat().st_size > 100, name
    assert main(["report", str(tmp_path / "missing")]) == 2
