"""launch/: dry runs print the right commands; the local launcher runs a 2-process demo."""

import json
import os
import shlex
import subprocess
import sys

import pytest
from conftest import TEST_XLA_FLAGS

from magjax import mesh

LAUNCH = os.path.join(os.path.dirname(__file__), "..", "launch")


def _dry(script: str, *args: str, env: dict | None = None) -> list[str]:
    out = subprocess.run(["bash", os.path.join(LAUNCH, script), *args], capture_output=True, text=True,
                         env=dict(os.environ) | (env or {}), check=True).stdout
    return [line for line in out.splitlines() if line and not line.startswith("#")]


def test_local_dry_run_starts_one_process_per_rank_on_one_coordinator():
    lines = _dry("local.sh", "--processes", "3", "--devices_per_process", "2", "--port", "4321", "--dry-run",
                 "--log_dir", "L", "--", "train", "--run_dir", "runs/x",
                 env={"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"})
    assert len(lines) == 3
    for i, line in enumerate(lines):
        words = shlex.split(line)
        assert words[0] == "env" and "MAGJAX_COORDINATOR=127.0.0.1:4321" in words
        assert f"MAGJAX_PROCESS_ID={i}" in words and "MAGJAX_NUM_PROCESSES=3" in words
        # The caller's own XLA flags survive; the device count comes last, so it is the one that holds.
        assert "XLA_FLAGS=--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=2" in words
        assert words[words.index("magjax"):words.index(">")] == ["magjax", "train", "--run_dir", "runs/x"]
        assert words[-2:] == [f"L/process_{i}.log", "2>&1"]


def test_slurm_dry_run_takes_the_coordinator_from_the_node_list():
    (line,) = _dry("slurm_gpu.sbatch", "--dry-run", "--gin_file", "experiments/magistral_small.gin",
                   "--run_dir", "/shared/run", env={"SLURM_JOB_NODELIST": "gpu[07-10,12]", "SLURM_NNODES": "5",
                                                    "PATH": "/usr/bin:/bin"})
    words = shlex.split(line)
    assert words[:4] == ["srun", "--nodes=5", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    task = words[-1]
    assert "MAGJAX_COORDINATOR=gpu07:29500" in task and "MAGJAX_NUM_PROCESSES=5" in task
    assert "MAGJAX_PROCESS_ID=$SLURM_PROCID" in task  # each task's own rank, expanded on its host
    assert "magjax train --gin_file experiments/magistral_small.gin --run_dir /shared/run" in task


def test_slurm_outside_an_allocation_is_a_clear_error():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    result = subprocess.run(["bash", os.path.join(LAUNCH, "slurm_gpu.sbatch"), "--dry-run"], capture_output=True,
                            text=True, env=env)
    assert result.returncode != 0 and "SLURM_JOB_NODELIST" in result.stderr


def test_tpu_pod_dry_run_creates_installs_and_starts_on_every_worker():
    lines = _dry("tpu_pod.sh", "--name", "mg", "--zone", "us-east5-a", "--type", "v5p-64", "--project", "p1",
                 "--dry-run", "--", "--gin_file", "experiments/magistral_small.gin", "--run_dir", "/mnt/r")
    commands = [shlex.split(line) for line in lines]
    create, tar, scp, install, start = commands
    assert create[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "mg"]
    assert "--accelerator-type=v5p-64" in create and "--version=v2-alpha-tpuv5" in create
    assert "--zone=us-east5-a" in create and "--project=p1" in create
    assert tar[0] == "tar" and scp[4] == "scp" and "--worker=all" in scp
    assert install[4] == "ssh" and "--worker=all" in install and "pip install" in install[-1]
    assert start[4] == "ssh" and "--worker=all" in start
    assert "MAGJAX_DISTRIBUTED=auto" in start[-1]
    assert "magjax.cli train --gin_file experiments/magistral_small.gin --run_dir /mnt/r" in start[-1]


def test_tpu_pod_needs_its_slice_named():
    result = subprocess.run(["bash", os.path.join(LAUNCH, "tpu_pod.sh"), "--zone", "z", "--type", "v4-32",
                             "--dry-run"], capture_output=True, text=True)
    assert result.returncode == 2 and "--name is required" in result.stderr


def test_a_coordinator_without_a_process_count_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(mesh.ENV_COORDINATOR, "127.0.0.1:1")
    monkeypatch.delenv(mesh.ENV_NUM, raising=False)
    with pytest.raises(ValueError, match="MAGJAX_NUM_PROCESSES"):
        mesh.initialize_distributed()


def test_local_launcher_runs_the_demo_smoke_with_two_processes(tmp_path):
    run_dir, logs = tmp_path / "run", tmp_path / "logs"
    # The suite's compile flags, which local.sh keeps, not its device count: local.sh sets each process's.
    env = os.environ | {"XLA_FLAGS": TEST_XLA_FLAGS, "MAGJAX": f"{sys.executable} -m magjax.cli"}
    env.pop("JAX_COMPILATION_CACHE_DIR")  # the job's own default: for several processes, in the run directory
    result = subprocess.run(["bash", os.path.join(LAUNCH, "local.sh"), "--processes", "2", "--log_dir", str(logs),
                             # No cold start: what the launcher is checked on is RL and evaluation across processes.
                             "--", "train", "--gin.train.smoke=True", "--gin.train.sft_steps=0",
                             "--run_dir", str(run_dir),
                             "--gin.RunConfig.n_batch=16", "--gin.RunConfig.n_async=16",
                             "--gin.RunConfig.max_new_tokens=32", "--gin.EvalConfig.max_new_tokens=32"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "[magjax] done." in result.stdout  # process 0's output streams through
    for i in range(2):
        assert "RL: 2 batches" in (logs / f"process_{i}.log").read_text()
    results = json.loads((run_dir / "results.json").read_text())
    assert (run_dir / "final_hf" / "config.json").exists()
    # Each process evaluated half of the held-out problems; both halves are in the summary.
    from magjax.data.sources import DataConfig, datasets

    heldout = datasets(DataConfig(demo_train_size=64, demo_heldout_size=8))[1]
    assert results["eval_after"]["all"]["problems"] == results["eval_before"]["all"]["problems"] == len(heldout)
    assert any(d.isdigit() for d in os.listdir(run_dir / "rl" / "checkpoints"))
    records = [json.loads(line) for line in (run_dir / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]  # one writer for the job, not one per process
    # The smoke evaluates every batch: the last step's evaluation is the "after" one, not redone.
    assert records[-1]["eval/pass@1"] == results["eval_after"]["all"]["pass@1"]
    log = (logs / "process_0.log").read_text()
    assert "held-out problems after RL" not in log  # no second evaluation
    assert "Held-out accuracy before and after RL" in log  # but the table, from the reused one
    # Compiled programs went where every host of a pod would find them (process 0 writes).
    (cache,) = (run_dir / "xla_cache").iterdir()
    assert any(cache.iterdir()) and f"XLA compilation cache {cache}:" in log
