"""Two processes x four CPU devices run one job together through jax.distributed (gloo)."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import TEST_XLA_FLAGS

HERE = os.path.dirname(__file__)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(script: list[str], processes: int = 2, timeout: float = 400, env: dict | None = None) -> list[str]:
    """Runs ``script`` as ``processes`` cooperating processes; returns each one's output."""
    port = _free_port()
    # The suite's compile flags, not its device count: each process sets its own.
    base = os.environ | {"XLA_FLAGS": TEST_XLA_FLAGS} | (env or {})
    procs = [subprocess.Popen([sys.executable, *script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=base | {"MAGJAX_COORDINATOR": f"127.0.0.1:{port}",
                                          "MAGJAX_NUM_PROCESSES": str(processes), "MAGJAX_PROCESS_ID": str(i)})
             for i in range(processes)]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            p.kill()
    for i, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"process {i} exited {p.returncode}:\n{out[-6000:]}"
    return outputs


@pytest.fixture(scope="module")
def two_process_runs(sft_params, tmp_path_factory):
    out = tmp_path_factory.mktemp("multiprocess")
    flat = {"/".join(str(k.key) for k in path): np.asarray(x)
            for path, x in jax.tree_util.tree_flatten_with_path(sft_params)[0]}
    np.savez(out / "params.npz", **flat)
    launch([os.path.join(HERE, "multiprocess", "rl_job.py"), str(out), str(out / "params.npz")])
    return out


def _load(out, name):
    params = [dict(np.load(out / f"{name}.{i}.npz")) for i in range(2)]
    records = [json.loads((out / f"{name}.{i}.json").read_text()) for i in range(2)]
    return params, records


def _assert_same_params(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("name", ["sync", "async"])
def test_two_processes_train_one_model(two_process_runs, name):
    params, records = _load(two_process_runs, name)
    _assert_same_params(params[0], params[1])
    assert records[0]["history"] == records[1]["history"]
    assert records[0]["version"] >= 1
    # Both processes trained: the parameters moved away from the cold start.
    start = dict(np.load(two_process_runs / "params.npz"))
    assert any(not np.array_equal(params[0][k], start[k.strip("[]'").replace("']['", "/")]) for k in params[0])
    acc = records[0]["accounting"]
    total = lambda key: sum(acc[key].values())  # noqa: E731
    buckets = ("trained", "filtered", "stale", "unconsumed", "cancelled")
    assert sum(total(k) for k in buckets) == total("finished"), {k: total(k) for k in buckets + ("finished",)}


def test_two_process_sync_resume_is_exact(two_process_runs):
    straight, _ = _load(two_process_runs, "sync")
    resumed, records = _load(two_process_runs, "resumed")
    first, first_records = _load(two_process_runs, "first_half")
    assert first_records[0]["step"] == 1 and records[0]["resumed_from"] == 1 and records[0]["step"] == 3
    for i in range(2):
        _assert_same_params(straight[i], resumed[i])
    sync_history = json.loads((two_process_runs / "sync.0.json").read_text())["history"]
    assert sync_history[1:] == records[0]["history"] == records[1]["history"]
