"""Test setup: eight CPU devices, forced once before anything imports jax."""

import atexit
import fcntl
import os
import pickle
import shutil
import subprocess
import sys
import tempfile

# XLA compiles every test's programs without LLVM's optimisation passes and with its loop
# emitters instead of the MLIR fusion emitters: compilation is most of the suite's time on
# two cores, and the fusion emitters' was much of it (tests/test_train_step.py cold: 61-67 s
# with them, 38 s without; the whole suite 887 s -> 664 s). The programs (the same HLO) run
# fast enough either way for tests that compile many short programs. Numerical comparisons
# in the tests are between programs compiled alike. What runs one program many times runs
# in a subprocess without these flags: the loop tests' cold start (cold_start.py) and the
# demo, which runs as users run it.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), TEST_XLA_FLAGS, "--xla_force_host_platform_device_count=8"]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the whole session, inherited by the subprocesses the
# tests start (CLI runs, multi-process jobs, preempted attempts): many tests build the same
# demo-model programs, and XLA compilation is most of their cost on two cores. A fresh
# directory per session, so nothing compiled by another version of the code is reused.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="magjax-test-xla-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
# Huge pages for the host allocator, as the magjax command gives itself (magjax/host_memory.py):
# glibc reads the setting when a process starts, so it reaches the xdist workers (started
# after this file is loaded) and the processes the tests start, not this one. XLA:CPU maps
# its temporaries anew on every call; the workers fault them in 2 MiB at a time instead of
# 4 KiB (4 compile-heavy files under -n 2: 115.7 and 116.2 s -> 107.5 and 113.4 s).
from magjax import host_memory  # noqa: E402  (imports no JAX)

os.environ.update(host_memory.tuned_environment(dict(os.environ)) or {})
# Native kernels or XLA's: tests never leave the choice to a timed race (its outcome
# depends on the machine and its load); tests of either path force it themselves.
os.environ.setdefault("MAGJAX_KERNELS", "native")

import jax  # noqa: E402
import pytest  # noqa: E402

from magjax.mesh import MeshConfig, make_mesh  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "data")


# The files that take longest, longest first (seconds of one two-worker run on two busy
# cores). With `-n 2 --dist loadfile` each file goes whole to the next free worker, in
# collection order (setup.cfg turns off xdist's reordering by test count, which put these
# few-test files last and left one worker idle while the other finished the demo). Started
# first, they run beside the many short files instead of after them.
LONGEST_FIRST = ("test_demo.py",  # 232: the demo in a subprocess
                 "test_multiprocess.py",  # 86: two jax.distributed processes, after the cold start
                 "test_loop.py", "test_preemption.py", "test_launch.py", "test_engine.py", "test_curriculum.py",
                 "test_train_step.py", "test_aot.py", "test_bench.py", "test_host_memory.py", "test_offpolicy.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: other files keep their order


@pytest.fixture(scope="session")
def mesh_1x8():
    """Eight-way data parallelism."""
    assert jax.device_count() == 8, "tests expect 8 CPU devices (see conftest.py)"
    return make_mesh(MeshConfig(data=8, fsdp=1, model=1))


@pytest.fixture(scope="session")
def mesh_2x4():
    """Two-way FSDP by four-way tensor parallelism."""
    return make_mesh(MeshConfig(data=1, fsdp=2, model=4))


@pytest.fixture
def data_dir():
    return DATA


@pytest.fixture(scope="session")
def sft_params(tmp_path_factory, worker_id):
    """A cold start shared by the loop tests (tests/cold_start.py, in its own process).

    Under pytest-xdist the first worker to need it trains it and leaves it (NumPy arrays, as
    training returns them) in the session's shared temporary directory; the other worker
    waits for that file instead of training the same 60 steps again."""
    base = tmp_path_factory.getbasetemp()
    shared = (base if worker_id == "master" else base.parent) / "sft_params.pickle"
    with open(f"{shared}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held while training: the other worker waits here
        if not shared.exists():
            # Without the suite's XLA flags (see cold_start.py); on the process's one device.
            env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
            result = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "cold_start.py"),
                                     str(shared)], capture_output=True, text=True, env=env, timeout=600)
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        with open(shared, "rb") as f:
            return pickle.load(f)
