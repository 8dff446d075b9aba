"""One process of a multi-process RL job, for tests/test_multiprocess.py.

    MAGJAX_COORDINATOR=127.0.0.1:PORT MAGJAX_NUM_PROCESSES=2 MAGJAX_PROCESS_ID=i \\
        python tests/multiprocess/rl_job.py OUT_DIR PARAMS.npz

Runs, in one jax.distributed job: sync 3 steps; sync 1 step then a resume to 3 (same
run directory); async 2 steps. Each process writes its final parameters and metrics.
"""

import json
import os
import sys

# The suite's own flags (tests/conftest.py passes them), then four CPU devices per process.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
os.environ["JAX_PLATFORMS"] = "cpu"


def main(out: str, params_file: str):
    from magjax.mesh import initialize_distributed

    initialize_distributed()
    import jax
    import numpy as np

    from magjax.loop import RunConfig, run
    from magjax.models import preset
    from magjax.models.tokenizer import ChatFormat
    from magjax.recipe import Recipe
    from magjax.rl.batching import PackingConfig
    from magjax.rl.optimizer import OptimizerConfig
    from magjax.sampling.engine import EngineConfig
    from magjax.types import Problem

    assert jax.process_count() == 2 and jax.device_count() == 8 and jax.local_device_count() == 4
    pid = jax.process_index()
    sums = [Problem(f"math-p{i}", "math", f"Compute {a}+{b}.", answer=str(a + b))
            for i, (a, b) in enumerate([(3, 4), (2, 5), (6, 1), (4, 4)])]
    with np.load(params_file) as f:
        flat = {k: f[k] for k in f.files}
    params = {}
    for key, value in flat.items():  # "a/b/c" paths back into a nested dict
        *parents, leaf = key.split("/")
        node = params
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value

    def job(name, **overrides):
        config = dict(mode="sync", steps=3, group_size=8, n_batch=32, n_async=32, max_new_tokens=24) | overrides
        recipe = Recipe(model=preset("demo"), chat=ChatFormat("plain", None), run=RunConfig(**config),
                        engine=EngineConfig(slots=32, max_len=64, prompt_buckets=(32,), chunk_steps=8),
                        optimizer=OptimizerConfig(learning_rate=3e-4), packing=PackingConfig(rows=8, row_len=64))
        result = run(recipe, sums, params, console=False)
        leaves = {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(result.params)[0]}
        np.savez(os.path.join(out, f"{name}.{pid}.npz"), **leaves)
        keep = ("reward/mean", "reward/accuracy", "train/loss", "train/grad_norm", "pipeline/version")
        record = {"history": [{k: h.get(k) for k in keep} for h in result.history], "version": result.version,
                  "step": result.step, "resumed_from": result.resumed_from, "spanning": result.spanning,
                  "accounting": {k: {str(n): c for n, c in v.items()} for k, v in result.accounting.items()}}
        with open(os.path.join(out, f"{name}.{pid}.json"), "w") as f:
            json.dump(record, f)

    job("sync")
    job("first_half", steps=1, run_dir=os.path.join(out, "resumed"))
    job("resumed", steps=3, run_dir=os.path.join(out, "resumed"))
    job("async", mode="async", steps=2, n_batch=16, n_async=32, queue_groups=2)


if __name__ == "__main__":
    main(*sys.argv[1:])
