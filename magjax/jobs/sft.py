"""``magjax sft``: supervised fine-tuning on ``sft_job.traces`` (a ``magjax distill`` JSONL
file) or, without one, on the demo tasks' worked solutions; writes RUN_DIR/final_hf."""

from __future__ import annotations

import os

import jax

from magjax.data.distill import read_traces
from magjax.data.sources import datasets
from magjax.jobs.bindings import MODEL_SETTINGS, add_gin_arguments, run_job
from magjax.jobs.errors import JobError
from magjax.jobs.records import load_model, report_loads, write_json
from magjax.jobs.train import save_hf
from magjax.metrics import MetricsWriter
from magjax.models.tokenizer import load_tokenizer
from magjax.recipe import Recipe
from magjax.sft import run_sft

READS = MODEL_SETTINGS | {"DataConfig", "SFTConfig", "PackingConfig", "Recipe.data", "Recipe.sft",
                          "Recipe.packing", "Recipe.sft_optimizer", "sft_job"}


def sft_job(recipe: Recipe, run_dir: str = "runs/sft", *, traces: str | None = None, strict: bool = False) -> dict:
    tok = load_tokenizer(recipe.tokenizer)
    model_config, params = load_model(recipe.model, recipe.init_from, recipe.data.seed)
    model_config = recipe.with_remat(model_config)
    if traces:
        examples = read_traces(traces)  # every line is a trace, or the job stops naming it
        print(f"[magjax] {traces}: loaded {len(examples)} examples (weighted), skipped 0")
    else:
        reports = []
        examples = datasets(recipe.data, reports=reports)[2]
        report_loads(reports, strict)
    if not examples:
        raise JobError("magjax sft: no examples (give sft_job.traces, or DataConfig.train = 'demo')")
    sft = recipe.sft
    print(f"[magjax] SFT: {sft.steps} steps of {sft.batch_size} on {len(examples)} examples")
    primary = jax.process_index() == 0
    os.makedirs(run_dir, exist_ok=True)
    metrics = MetricsWriter(run_dir if primary else None, total_steps=sft.steps, console=primary)
    try:
        params, losses = run_sft(examples, model_config, params, tok, recipe.chat, sft,
                                 optimizer=recipe.sft_optimizer, packing=recipe.packing, metrics=metrics)
    finally:
        metrics.close()
    results = {"run_dir": run_dir, "examples": len(examples), "loss_first_last": [losses[0], losses[-1]]}
    if primary:
        save_hf(model_config, params, os.path.join(run_dir, "final_hf"), recipe.tokenizer)
        write_json(os.path.join(run_dir, "results.json"), results)
    return results


def add_arguments(p) -> None:
    add_gin_arguments(p)


def main(args, bindings: list[str]) -> int:
    from magjax import config

    # The job as gin configures it, looked up once the files are parsed.
    results = run_job("sft", lambda *a, **kw: config.configured("sft_job")(*a, **kw), args, bindings, reads=READS,
                      default_dir="runs/sft")
    if results is not None:
        run_dir = results["run_dir"]
        print(f"  metrics:   {os.path.join(run_dir, 'metrics.jsonl')} (TensorBoard: ./tensorboard)")
        print(f"  weights:   {os.path.join(run_dir, 'final_hf')} (Hugging Face format)")
    return 0
