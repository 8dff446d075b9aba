"""Test setup: eight CPU devices, forced once before anything imports jax."""

import atexit
import fcntl
import os
import pickle
import shutil
import tempfile

# XLA compiles every test's programs without LLVM's optimisation passes: compilation is
# most of the suite's time on two cores, and the programs (the same HLO) run fast enough
# unoptimised. Numerical comparisons in the tests are between programs compiled alike. The
# tests that run `magjax` itself in a subprocess (the demo, the local launcher) start it
# without these flags, so it runs as users run it.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
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
LONGEST_FIRST = ("test_demo.py",  # 408: the demo in a subprocess
                 "test_multiprocess.py",  # 329: two jax.distributed processes
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
    """A cold start shared by the loop tests: 60 SFT steps on demo arithmetic teach the demo
    model the response format and a little arithmetic, so rewards vary within groups.

    Under pytest-xdist the first worker to need it trains it and leaves it (NumPy arrays, as
    training returns them) in the session's shared temporary directory; the other worker
    waits for that file instead of training the same 60 steps again."""
    if worker_id == "master":
        return _train_sft_params()
    shared = tmp_path_factory.getbasetemp().parent / "sft_params.pickle"
    with open(f"{shared}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held while training: the other worker waits here
        if shared.exists():
            with open(shared, "rb") as f:
                return pickle.load(f)
        params = _train_sft_params()
        with open(f"{shared}.tmp", "wb") as f:
            pickle.dump(params, f)
        os.replace(f"{shared}.tmp", shared)
        return params


def _train_sft_params():
    from magjax.data.synthetic import generate
    from magjax.models import preset
    from magjax.models.tokenizer import ByteTokenizer, ChatFormat
    from magjax.rl.batching import PackingConfig
    from magjax.sft import SFTConfig, run_sft

    tasks = generate(400, seed=0, kinds=("math",), difficulties=(1,))
    params, losses = run_sft([(t.problem.prompt, t.solution) for t in tasks], preset("demo"), None, ByteTokenizer(),
                             ChatFormat("plain", None), SFTConfig(steps=60, batch_size=32),
                             packing=PackingConfig(rows=8, row_len=128))
    assert losses[-1] < 0.5 * losses[0]
    return params
