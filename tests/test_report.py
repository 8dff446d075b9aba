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
    assert not (tmp_path / "report" / "heldout.png").exists()  # the run evaluated nothing
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_report_plots_held_out_accuracy_from_before_rl(tmp_path):
    from magjax.report import heldout_curves, read_metrics

    rows = [{"step": s, "reward/mean": 0.5} for s in range(1, 5)]
    rows[1] |= {"eval/pass@1": 0.5, "eval/pass@1/kind=code": 0.75, "eval/pass@1/kind=math": 0.25,
                "eval/pass@1/language=en": 0.5}
    rows[3] |= {"eval/pass@1": 0.625, "eval/pass@1/kind=code": 1.0, "eval/pass@1/kind=math": 0.25,
                "eval/pass@1/language=en": 0.625}
    (tmp_path / "rl").mkdir()
    (tmp_path / "rl" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "eval_before.json").write_text(json.dumps(
        {"all": {"pass@1": 0.25}, "kind=code": {"pass@1": 0.5}, "kind=math": {"pass@1": 0.0}}))
    assert heldout_curves(str(tmp_path), read_metrics(str(tmp_path))) == {
        "all": ([0, 2, 4], [0.25, 0.5, 0.625]), "kind=code": ([0, 2, 4], [0.5, 0.75, 1.0]),
        "kind=math": ([0, 2, 4], [0.0, 0.25, 0.25])}
    assert main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "report" / "heldout.png").stat().st_size > 100
    assert "heldout.png" in (tmp_path / "report" / "index.html").read_text()


def test_randomized_directions_match_a_dense_svd():
    import numpy as np

    from magjax.report import top_directions

    rng = np.random.default_rng(0)
    # A trajectory of 7 checkpoints drifting along two directions plus a little noise.
    steps = np.arange(7, dtype=np.float64)[:, None]
    a, b = rng.standard_normal(5000), rng.standard_normal(5000)
    x = steps * a + np.sin(steps) * b + 0.01 * rng.standard_normal((7, 5000))
    directions, proj, _ = top_directions(x)
    xc = x - x.mean(0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    for i in range(2):
        sign = np.sign(directions[i] @ vt[i])
        np.testing.assert_allclose(sign * directions[i], vt[i], atol=1e-4)
    np.testing.assert_allclose(np.abs(proj), np.abs(xc @ vt[:2].T), atol=1e-4)


def test_weight_report_on_a_run_with_checkpoints(tmp_path):
    import dataclasses

    import jax

    from magjax.checkpoint import CheckpointConfig, Checkpointer
    from magjax.models import decoder, preset
    from magjax.rl import optimizer, train_step

    config = preset("test")
    opt = optimizer.OptimizerConfig()
    tx, _ = optimizer.make_optimizer(opt)
    ckpt = Checkpointer(str(tmp_path / "checkpoints"), CheckpointConfig(keep_last=None, async_save=False))
    for step in range(1, 7):
        params = decoder.init_params(config, jax.random.key(step))
        meta = {"model_config": dataclasses.asdict(config), "optimizer_config": dataclasses.asdict(opt)}
        ckpt.save(step, train_step.init_state(params, tx), meta, wait=True)
    ckpt.close()
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "reward/mean": s / 10}) + "\n"
                                                    for s in range(1, 7)))
    assert main(["report", str(tmp_path), "--weights"]) == 0
    assert (tmp_path / "report" / "weights_pca.png").stat().st_size > 100
    assert len(json.loads((tmp_path / "report" / "weights_pca.json").read_text())["steps"]) == 6
