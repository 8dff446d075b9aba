"""Orbax checkpoints: cross-mesh restore, corrupt-step fallback, preemption by SIGTERM."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from magjax.checkpoint import Checkpointer, CheckpointConfig, abstract_like
from magjax.models import decoder, preset
from magjax.rl import optimizer, train_step

CONFIG = preset("test")


def _state(mesh, seed=0):
    tx, _ = optimizer.make_optimizer(optimizer.OptimizerConfig())
    params = decoder.init_params(CONFIG, jax.random.key(seed))
    if mesh is not None:
        params = jax.device_put(params, decoder.param_shardings(CONFIG, mesh))
    return train_step.init_state(params, tx)


def _equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_saved_on_1x8_restores_on_2x4_and_one_device(tmp_path, mesh_1x8, mesh_2x4):
    saved = _state(mesh_1x8)
    ckpt = Checkpointer(str(tmp_path), CheckpointConfig(async_save=False))
    ckpt.save(7, saved, {"note": "x"}, wait=True)
    for target_mesh in (mesh_2x4, None):
        target = _state(target_mesh, seed=1)
        step, restored, meta = ckpt.restore_latest(abstract_like(target))
        assert step == 7 and meta["note"] == "x" and "jax" in meta["packages"]
        _equal(saved, restored)
        assert restored.params["layers"]["wq"].sharding == target.params["layers"]["wq"].sharding
    ckpt.close()


def test_a_corrupt_latest_step_falls_back_with_a_warning(tmp_path):
    ckpt = Checkpointer(str(tmp_path), CheckpointConfig(async_save=False))
    first, second = _state(None, 0), _state(None, 1)
    ckpt.save(1, first, {}, wait=True)
    ckpt.save(2, second, {}, wait=True)
    for root, _, files in os.walk(tmp_path / "2" / "state"):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"\0garbage")
    with pytest.warns(UserWarning, match=f"checkpoint {tmp_path}/2 is unreadable"):
        step, restored, _ = ckpt.restore_latest(abstract_like(first))
    assert step == 1
    _equal(first, restored)
    # A half-written step (Orbax's temporary directory) is never taken for a checkpoint.
    os.makedirs(tmp_path / "3.orbax-checkpoint-tmp-123")
    assert 3 not in Checkpointer(str(tmp_path)).steps()
    ckpt.close()


def test_sigterm_during_an_async_run_checkpoints_and_exits_cleanly(tmp_path):
    run_dir = tmp_path / "run"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "magjax.cli", "train", "--run_dir", str(run_dir),
           "--gin.train.sft_steps=0", "--gin.DataConfig.demo_heldout_size=0", "--gin.RunConfig.steps=1000",
           "--gin.DataConfig.demo_train_size=64", "--gin.RunConfig.max_new_tokens=16",
           "--gin.EngineConfig.max_len=128", "--gin.PackingConfig.row_len=128"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = run_dir / "rl" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "the run never reached its first step"
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "stopped by signal" in out
    steps = [int(d) for d in os.listdir(run_dir / "rl" / "checkpoints") if d.isdigit()]
    assert steps and max(steps) >= 1
    last = [json.loads(line) for line in metrics.read_text().splitlines()][-1]
    assert max(steps) == last["step"]
