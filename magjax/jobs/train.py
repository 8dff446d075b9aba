"""``magjax train``: SFT cold start (``sft_steps`` > 0), evaluation, RL (evaluated every
``EvalConfig.every_steps``), evaluation. With no arguments, the CPU demo."""

from __future__ import annotations

import dataclasses
import json
import os

import jax

from magjax.checkpoint import find_checkpoints
from magjax.data.sources import datasets
from magjax.evaluate import evaluate, format_table
from magjax.export import copy_tokenizer
from magjax.jobs.bindings import add_gin_arguments, run_job
from magjax.jobs.errors import JobError
from magjax.jobs.records import load_model, report_loads, write_json
from magjax.loop import run
from magjax.models import decoder, hf
from magjax.models.config import ModelConfig
from magjax.models.tokenizer import load_tokenizer
from magjax.recipe import Recipe
from magjax.sft import run_sft

# train's cold start runs `train.sft_steps` steps, whatever SFTConfig.steps says (that is `magjax sft`'s).
REFUSED = {"SFTConfig.steps": "the cold start runs train.sft_steps steps (SFTConfig.steps is magjax sft's)",
           "sft_job.traces": "train's cold start learns from the demo's worked solutions; use magjax sft"}


def train(recipe: Recipe, run_dir: str = "runs/demo", *, sft_steps: int = 0, smoke: bool = False,
          strict: bool = False) -> dict:
    """Returns the results (evaluations before and after, the SFT losses, where things are).
    ``smoke=True`` shrinks every phase to seconds (a local check of a configuration)."""
    if smoke:
        recipe = dataclasses.replace(
            recipe, data=dataclasses.replace(recipe.data, demo_train_size=min(recipe.data.demo_train_size, 64),
                                             demo_heldout_size=min(recipe.data.demo_heldout_size, 8)),
            run=dataclasses.replace(recipe.run, steps=min(recipe.run.steps, 2)),
            evaluation=dataclasses.replace(recipe.evaluation, samples=1,
                                           every_steps=min(recipe.evaluation.every_steps, 1)))
        sft_steps = min(sft_steps, 3)
    rl, evaluation = recipe.run, recipe.evaluation
    os.makedirs(run_dir, exist_ok=True)
    tok = load_tokenizer(recipe.tokenizer)
    model_config, params = load_model(recipe.model, recipe.init_from, recipe.data.seed)
    model_config = recipe.with_remat(model_config)
    reports = []
    problems, heldout, examples = datasets(recipe.data, strict=False, reports=reports)
    report_loads(reports, strict)
    print(f"[magjax] {len(problems)} training problems, {len(heldout)} held-out"
          + (f", {len(examples)} worked solutions" if examples else ""))
    results: dict = {"run_dir": run_dir}
    rl_dir = os.path.join(run_dir, "rl")
    # A run that already has RL checkpoints resumes its RL phase (loop.run restores the
    # latest): the cold start and the "before" evaluation happened in its first attempt.
    resuming = find_checkpoints(rl_dir) is not None
    before_file = os.path.join(run_dir, "eval_before.json")
    if resuming:
        print(f"[magjax] {rl_dir} has checkpoints: resuming RL (cold start and first evaluation already done)")
        sft_steps = 0
        if os.path.exists(before_file):
            with open(before_file) as f:
                results["eval_before"] = json.load(f)
    if sft_steps:
        if not examples:
            raise JobError("train.sft_steps > 0 needs worked solutions: use the demo data "
                           "(DataConfig.train = 'demo') or `magjax sft` on a trace file")
        print(f"[magjax] SFT cold start: {sft_steps} steps on {len(examples)} worked solutions")
        params, losses = run_sft(examples, model_config, params, tok, recipe.chat,
                                 dataclasses.replace(recipe.sft, steps=sft_steps), optimizer=recipe.sft_optimizer,
                                 packing=recipe.packing)
        results["sft_loss_first_last"] = [losses[0], losses[-1]]

    heldout_eval = _HeldOut(heldout, model_config, tok, recipe)
    if heldout and not resuming:
        print(f"[magjax] evaluating {len(heldout)} held-out problems before RL")
        results["eval_before"] = heldout_eval(params)
        if jax.process_index() == 0:
            write_json(before_file, results["eval_before"])
    print(f"[magjax] RL: {rl.steps} batches of {rl.n_batch} completions, mode={rl.mode}, placement={rl.placement}")
    result = run(dataclasses.replace(recipe, model=model_config, run=dataclasses.replace(rl, run_dir=rl_dir)),
                 problems, params, evaluator=heldout_eval if heldout else None, eval_every=evaluation.every_steps)
    params = result.params
    evaluated_last_step = (evaluation.every_steps and result.step == rl.steps and not result.preempted
                           and rl.steps % evaluation.every_steps == 0 and heldout_eval.latest is not None)
    if heldout and evaluated_last_step:  # the run's own evaluation at its last step saw these params
        results["eval_after"] = heldout_eval.latest
    elif heldout:
        print(f"[magjax] evaluating {len(heldout)} held-out problems after RL")
        results["eval_after"] = heldout_eval(params)
    if "eval_after" in results:
        results["table"] = format_table(results.get("eval_before", {}), results["eval_after"], evaluation.samples)
    if jax.process_index() == 0:  # one writer per job (every process holds the same params)
        _write_outputs(run_dir, model_config, params, results, recipe)
    return results


class _HeldOut:
    """The held-out evaluation, remembering its last summary."""

    def __init__(self, problems, model_config, tokenizer, recipe: Recipe):
        self.problems, self.model_config, self.tokenizer, self.recipe = problems, model_config, tokenizer, recipe
        self.latest: dict | None = None

    def __call__(self, params) -> dict:
        r = self.recipe
        self.latest = evaluate(self.problems, params, self.model_config, self.tokenizer, r.chat, r.evaluation,
                               engine=r.engine, reward=r.reward, pool=r.pool)["summary"]
        return self.latest


def _write_outputs(run_dir: str, model_config: ModelConfig, params: dict, results: dict, recipe: Recipe):
    save_hf(model_config, params, os.path.join(run_dir, "final_hf"), recipe.tokenizer)
    try:
        from magjax.report import write_report

        results["report"] = write_report(run_dir, length_threshold=recipe.reward.l_max - recipe.reward.l_cache)[-1]
    except ImportError:  # matplotlib is optional: the run itself is done
        results["report"] = None
    write_json(os.path.join(run_dir, "results.json"), {k: v for k, v in results.items() if k != "table"})


def save_hf(config: ModelConfig, params: dict, out_dir: str, tokenizer: str):
    """The weights as a Hugging Face directory, with the tokenizer's files: it loads on its own."""
    hf.save(decoder.Decoder(config, params=jax.tree.map(jax.numpy.asarray, params)), config, out_dir)
    copy_tokenizer(tokenizer, out_dir)


def add_arguments(p) -> None:
    add_gin_arguments(p)


def main(args, bindings: list[str]) -> int:
    from magjax import config

    # The job as gin configures it, looked up once the files are parsed.
    results = run_job("train", lambda *a, **kw: config.configured("train")(*a, **kw), args, bindings, reads=None,
                      refused=REFUSED, default_dir="runs/demo")
    if results is None:
        return 0
    run_dir = results["run_dir"]
    metrics = os.path.join("rl", "metrics.jsonl")
    print(f"  metrics:   {os.path.join(run_dir, metrics)} (TensorBoard: rl/tensorboard)")
    print(f"  weights:   {os.path.join(run_dir, 'final_hf')} (Hugging Face format)")
    print(f"  checkpoints: {os.path.join(run_dir, 'rl', 'checkpoints')}")
    if results.get("report"):
        print(f"  plots:     {results['report']}")
    if "table" in results:
        print("\nHeld-out accuracy before and after RL:\n" + results["table"])
    return 0
