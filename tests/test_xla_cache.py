"""JAX's persistent compilation cache for magjax's jobs (magjax/xla_cache.py): a repeated
job loads its programs from the cache directory instead of compiling them again."""

import os
import re
import subprocess
import sys

from magjax import build_cache, xla_cache


def _sft(run_dir, env) -> str:
    result = subprocess.run([sys.executable, "-m", "magjax.cli", "sft", "--run_dir", str(run_dir),
                             "--gin.SFTConfig.steps=2", "--gin.SFTConfig.batch_size=8",
                             "--gin.DataConfig.demo_train_size=16", "--gin.SFTConfig.devices_per_process=1"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_a_repeated_job_loads_its_programs_from_the_default_cache(tmp_path):
    # Not the suite's own cache: the job's default, under MAGJAX_CACHE_DIR.
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env |= {"MAGJAX_CACHE_DIR": str(tmp_path / "cache"), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    first, second = _sft(tmp_path / "a", env), _sft(tmp_path / "b", env)
    pattern = r"XLA compilation cache (\S+): (\d+) of (\d+) programs loaded from it"
    (where, hits, asked), (where_again, hits_again, asked_again) = (
        re.search(pattern, out).groups() for out in (first, second))
    assert where == where_again and where.startswith(str(tmp_path / "cache" / "xla") + os.sep)
    assert int(hits) == 0 and int(asked) > 0
    assert len(os.listdir(where)) > 0
    # Every program of the second run was compiled, identically, by the first.
    assert int(hits_again) == int(asked_again) > 0


def test_jaxs_own_settings_win_and_hosts_of_different_cpus_never_share(monkeypatch, tmp_path):
    choose = xla_cache.choose_directory
    assert choose("gs://bucket/xla", True, run_dir="runs/a", processes=4) == "gs://bucket/xla"
    assert choose("/somewhere", False, run_dir="runs/a", processes=1) is None
    assert choose(None, False, run_dir="runs/a", processes=1) is None
    host = choose(None, True, run_dir="runs/a", processes=1)
    assert os.path.dirname(host) == os.path.join(build_cache.root(), "xla")
    # Several processes: the run directory every host sees (JAX writes from process 0 only).
    shared = choose(None, True, run_dir=str(tmp_path), processes=2)
    assert os.path.dirname(shared) == str(tmp_path / "xla_cache")
    assert os.path.basename(shared) == os.path.basename(host)
    monkeypatch.setattr(build_cache, "cpu_identity", lambda: "model name\t: AMD EPYC\nflags\t: avx2\n")
    other = choose(None, True, run_dir="runs/a", processes=1)
    assert os.path.dirname(other) == os.path.dirname(host) and other != host  # another instruction set
