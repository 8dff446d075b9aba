"""``magjax eval``: k samples per problem of ``DataConfig.heldout`` (or the demo's held-out
split); writes RUN_DIR/eval.json (summary and per-problem results) and prints a table."""

from __future__ import annotations

import dataclasses
import os

import jax

from magjax.data.sources import heldout_problems
from magjax.evaluate import evaluate, format_summary
from magjax.jobs.bindings import MODEL_SETTINGS, add_gin_arguments, run_job
from magjax.jobs.errors import JobError
from magjax.jobs.records import load_model, report_loads, write_json
from magjax.models.tokenizer import load_tokenizer
from magjax.recipe import Recipe

# Evaluation samples with EvalConfig's temperature and top-p, not SamplingConfig's (RL's).
READS = MODEL_SETTINGS | {"DataConfig", "EvalConfig", "EngineConfig", "RewardConfig", "PoolConfig", "Recipe.data",
                          "Recipe.evaluation", "Recipe.engine", "Recipe.reward", "Recipe.pool"}
REFUSED = {f"DataConfig.{name}": "eval reads only the held-out problems" for name in
           ("demo_train_size", "sft_languages", "sft_code_fraction")}


def eval_job(recipe: Recipe, run_dir: str = "runs/eval", *, strict: bool = False) -> dict:
    tok = load_tokenizer(recipe.tokenizer)
    reports = []
    heldout = heldout_problems(recipe.data, reports=reports)
    report_loads(reports, strict)
    if not heldout:
        raise JobError("no problems to evaluate (set DataConfig.heldout to a problem file)")
    model_config, params = load_model(recipe.model, recipe.init_from, recipe.data.seed)
    model_config = recipe.with_remat(model_config)
    evaluation = recipe.evaluation
    print(f"[magjax] evaluating {len(heldout)} problems, {evaluation.samples} samples each")
    out = evaluate(heldout, params, model_config, tok, recipe.chat, evaluation, engine=recipe.engine,
                   reward=recipe.reward, pool=recipe.pool)
    out["table"] = format_summary(out["summary"], evaluation.samples)
    out["run_dir"] = run_dir
    if jax.process_index() == 0:
        write_json(os.path.join(run_dir, "eval.json"), {"summary": out["summary"], "problems": out["problems"],
                                                        "config": dataclasses.asdict(evaluation)})
    return out


def add_arguments(p) -> None:
    add_gin_arguments(p)


def main(args, bindings: list[str]) -> int:
    results = run_job("eval", eval_job, args, bindings, reads=READS, refused=REFUSED, default_dir="runs/eval")
    if results is not None:
        print(f"  results: {os.path.join(results['run_dir'], 'eval.json')}\n\n{results['table']}")
    return 0
