"""kill -9 at random moments, saving included: the latest checkpoint always restores and the
run resumes; then `magjax report` and the tensorboard package read the real run directory."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from magjax.models import decoder, hf, preset

KILLS = 2  # the first during a save, the second at a random moment of the resumed attempt


def _train(run_dir, init_from, steps: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "magjax.cli", "train", "--run_dir", str(run_dir),
           f"--gin.INIT_FROM='{init_from}'", "--gin.train.sft_steps=0",
           "--gin.DataConfig.demo_heldout_size=0", "--gin.DataConfig.demo_train_size=64",
           "--gin.DataConfig.demo_kinds=('math',)", "--gin.RunConfig.mode='sync'", f"--gin.RunConfig.steps={steps}",
           "--gin.RunConfig.n_batch=32", "--gin.RunConfig.n_async=32", "--gin.RunConfig.max_new_tokens=48",
           "--gin.CheckpointConfig.every_steps=1", "--gin.CheckpointConfig.keep_last=2"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _complete_steps(ckpt_dir) -> list[int]:
    return sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()) if ckpt_dir.exists() else []


def _saving(ckpt_dir) -> bool:
    return ckpt_dir.exists() and any("tmp" in d for d in os.listdir(ckpt_dir))


@pytest.fixture(scope="module")
def killed_run(sft_params, tmp_path_factory):
    """A run killed KILLS times (the first mid-save), resumed each time, then finished."""
    root = tmp_path_factory.mktemp("preempted")
    init = root / "init_hf"
    hf.save(decoder.Decoder(preset("demo"), params=jax.tree.map(jax.numpy.asarray, sft_params)), preset("demo"), init)
    run_dir, ckpt_dir = root / "run", root / "run" / "rl" / "checkpoints"
    rng = np.random.default_rng(0)
    kills, outputs = [], []
    for attempt in range(KILLS):
        before = _complete_steps(ckpt_dir)
        proc = _train(run_dir, init, steps=1000)
        deadline = time.monotonic() + 240
        # Wait for progress past what the last attempt left, then kill: the first time at the
        # moment a save is under way, later at a random moment.
        while len(_complete_steps(ckpt_dir)) == 0 or _complete_steps(ckpt_dir)[-1] <= (before or [0])[-1]:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "no checkpoint written"
            time.sleep(0.05)
        if attempt == 0:
            while not _saving(ckpt_dir) and time.monotonic() < deadline:
                time.sleep(0.002)
        else:
            time.sleep(rng.uniform(0.0, 3.0))
        mid_save = _saving(ckpt_dir)
        proc.send_signal(signal.SIGKILL)
        outputs.append(proc.communicate()[0])
        kills.append({"complete_steps": _complete_steps(ckpt_dir), "mid_save": mid_save})
    last = max(_complete_steps(ckpt_dir))
    final = _train(run_dir, init, steps=last + 2)
    out = final.communicate(timeout=300)[0]
    assert final.returncode == 0, out
    return {"run_dir": run_dir, "kills": kills, "outputs": outputs + [out], "last_before_final": last}


def test_every_kill_leaves_a_latest_checkpoint_the_next_attempt_resumes(killed_run):
    kills, outputs = killed_run["kills"], killed_run["outputs"]
    assert kills[0]["mid_save"], "the first kill should land during a save"
    for i, kill in enumerate(kills):
        resumed = re.search(r"resumed from \S+/(\d+) ", outputs[i + 1])
        assert resumed, outputs[i + 1][-3000:]
        # The newest complete step after the kill is exactly where the next attempt resumed.
        assert int(resumed.group(1)) == kill["complete_steps"][-1]
        assert "unreadable" not in outputs[i + 1]
    assert f"RL: {killed_run['last_before_final'] + 2} batches" in outputs[-1]
    assert "[magjax] done." in outputs[-1]


def test_report_and_tensorboard_read_the_real_run(killed_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from magjax.cli import main
    from magjax.report import PLOTS, read_metrics

    run_dir = killed_run["run_dir"]
    assert main(["report", str(run_dir)]) == 0
    for name in [*PLOTS, "reward_vs_length.png", "index.html"]:
        assert (run_dir / "report" / name).stat().st_size > 100, name
    steps = [r["step"] for r in read_metrics(str(run_dir))]
    assert steps == list(range(1, killed_run["last_before_final"] + 3))  # resumed steps replace killed ones
    tb_dir = run_dir / "rl" / "tensorboard"
    events = EventAccumulator(str(tb_dir))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"reward/mean", "pipeline/version", "rollout/length_mean"} <= set(scalars)
    assert {e.step for e in events.Scalars("reward/mean")} == set(steps)
    meta = json.loads((run_dir / "rl" / "checkpoints" / str(steps[-1]) / "meta" / "metadata").read_text())
    assert meta["step"] == steps[-1]
