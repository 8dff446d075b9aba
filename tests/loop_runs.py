"""The RL loop tests' shared setup: the demo model on four fixed sums, a short run, and
the books every run must balance."""

import collections

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

MODEL = preset("demo")
# A task the demo model learns in a few steps: four fixed sums, eight samples each.
SUMS = [Problem(f"math-p{i}", "math", f"Compute {a}+{b}.", answer=str(a + b))
        for i, (a, b) in enumerate([(3, 4), (2, 5), (6, 1), (4, 4)])]
ENGINE = EngineConfig(slots=32, max_len=64, prompt_buckets=(32,), chunk_steps=8)
PACK = PackingConfig(rows=8, row_len=64)


def _run(params, problems=SUMS, engine=ENGINE, **overrides):
    config = dict(mode="sync", steps=3, group_size=8, n_batch=32, n_async=32, max_new_tokens=24)
    config |= overrides
    recipe = Recipe(model=MODEL, chat=ChatFormat("plain", None), run=RunConfig(**config), engine=engine,
                    optimizer=OptimizerConfig(learning_rate=3e-4), packing=PACK)
    return run(recipe, problems, params, console=False)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


BUCKETS = ("trained", "filtered", "stale", "unconsumed", "cancelled")


def _check_accounting(result):
    # Every finished completion in exactly one bucket, length by length.
    acc = result.accounting
    together = sum((acc[k] for k in BUCKETS), collections.Counter())
    assert together == acc["finished"], ({k: sum(acc[k].values()) for k in BUCKETS}, sum(acc["finished"].values()))
    assert sum(acc["trained"].values()) > 0
