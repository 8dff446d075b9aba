"""Jobs the CLI runs: ``train`` (optional SFT cold start, then RL, with evaluation before,
during and after), ``sft_job`` (``magjax sft``) and ``eval_job`` (``magjax eval``). Gin
configures them from the outside (see config.py)."""

from __future__ import annotations

import dataclasses
import json
import os

import jax

from magjax.checkpoint import Checkpointer, find_checkpoints
from magjax.data import read_problems
from magjax.data.distill import read_traces
from magjax.data.synthetic import MATH_FAMILIES, generate
from magjax.evaluate import EvalConfig, evaluate, format_summary, format_table
from magjax.loop import RunConfig, run
from magjax.metrics import MetricsWriter
from magjax.models import decoder, hf
from magjax.models.config import ModelConfig, preset
from magjax.models.tokenizer import ChatFormat, load_tokenizer
from magjax.rewards.pool import PoolConfig
from magjax.rewards.reward import RewardConfig
from magjax.rl import batching
from magjax.rl.losses import LossConfig
from magjax.rl.optimizer import OptimizerConfig
from magjax.sampling.engine import EngineConfig, SamplingConfig
from magjax.sft import SFTConfig, run_sft
from magjax.types import Problem


@dataclasses.dataclass(frozen=True)
class DataConfig:
    train: str = "demo"  # "demo" (built-in tasks) or a problem file / dataset directory
    heldout: str | None = None  # evaluation problems; with "demo", a disjoint generated split
    demo_train_size: int = 2000
    demo_heldout_size: int = 64
    demo_kinds: tuple[str, ...] = ("math", "code")
    demo_difficulties: tuple[int, ...] = (1,)
    demo_math_families: tuple[str, ...] = MATH_FAMILIES  # see data/synthetic.py
    sft_languages: tuple[str, ...] | None = None  # worked solutions only in these languages (None: all)
    sft_code_fraction: float | None = None  # the cold start's share of code solutions (None: as generated)
    seed: int = 0


def load_model(model: str | ModelConfig, init_from: str | None, seed: int) -> tuple[ModelConfig, dict]:
    """``init_from`` (a magjax run or checkpoint directory, or a Hugging Face directory), else
    a fresh ``model`` preset."""
    if init_from:
        checkpoints = find_checkpoints(init_from)
        if checkpoints:
            from magjax.export import restore_params

            ckpt = Checkpointer(checkpoints)
            try:
                config, params, _ = restore_params(ckpt)
            finally:
                ckpt.close()
            return config, jax.device_get(params)
        config, m = hf.load(init_from)
        return config, m.params()
    config = preset(model) if isinstance(model, str) else model
    return config, decoder.init_params(config, jax.random.key(seed))


def datasets(data: DataConfig) -> tuple[list[Problem], list[Problem], list[tuple[str, str]]]:
    """(training problems, held-out problems, worked (prompt, response) examples)."""
    if data.train != "demo":
        return read_problems(data.train), read_problems(data.heldout) if data.heldout else [], []
    kw = dict(kinds=data.demo_kinds, difficulties=data.demo_difficulties, math_families=data.demo_math_families)
    # The held-out split is drawn first and its math prompts are kept out of training, so
    # it keeps its size however small a task family's space is. The demo's code statements
    # are a small family: held-out code problems share statements but have unseen tests.
    heldout_tasks = generate(data.demo_heldout_size, seed=data.seed + 10_000, **kw)
    seen, heldout = set(), []
    for t in heldout_tasks:
        if t.problem.kind != "math" or t.problem.prompt not in seen:
            heldout.append(t.problem)
            seen.add(t.problem.prompt)
    tasks = [t for t in generate(data.demo_train_size, seed=data.seed, **kw)
             if t.problem.kind != "math" or t.problem.prompt not in seen]
    chosen = [t for t in tasks if data.sft_languages is None or t.problem.language in data.sft_languages]
    if data.sft_code_fraction is not None:  # keep every math solution, enough code ones for the share
        math = [t for t in chosen if t.problem.kind == "math"]
        code = [t for t in chosen if t.problem.kind == "code"]
        want = round(len(math) * data.sft_code_fraction / max(1e-9, 1 - data.sft_code_fraction))
        chosen = math + code[:want]
    examples = [(t.problem.prompt, t.solution) for t in chosen]
    return [t.problem for t in tasks], heldout, examples


def train(run_dir: str = "runs/demo", *, model: str | ModelConfig = "demo", init_from: str | None = None,
          tokenizer: str = "byte", chat: ChatFormat = ChatFormat("plain", None), data: DataConfig = DataConfig(),
          sft_steps: int = 0, sft: SFTConfig = SFTConfig(), sft_optimizer: OptimizerConfig = OptimizerConfig(
              learning_rate=3e-3, warmup_steps=10), rl: RunConfig = RunConfig(), evaluation: EvalConfig = EvalConfig(),
          sampling: SamplingConfig = SamplingConfig(), engine: EngineConfig = EngineConfig(
              slots=32, max_len=256, prompt_buckets=(64, 128)), loss: LossConfig = LossConfig(),
          optimizer: OptimizerConfig = OptimizerConfig(learning_rate=3e-4),
          packing: batching.PackingConfig = batching.PackingConfig(rows=8, row_len=256),
          reward: RewardConfig = RewardConfig(l_max=256, l_cache=64), pool: PoolConfig = PoolConfig(),
          remat: bool | str | None = None, smoke: bool = False) -> dict:
    """SFT cold start (``sft_steps`` > 0), evaluation, RL (evaluated every
    ``EvalConfig.every_steps``), evaluation; returns the results.

    ``remat``: the trainer's rematerialisation (``ModelConfig.remat``: "none", "layer",
    "save_matmuls", "offload"), set by the recipe for its row length and slice; None keeps
    the model's own (a checkpoint's config.json says nothing about memory).

    ``smoke=True`` shrinks every phase to seconds (a local check of a configuration).
    """
    if smoke:
        data = dataclasses.replace(data, demo_train_size=min(data.demo_train_size, 64),
                                   demo_heldout_size=min(data.demo_heldout_size, 8))
        sft_steps = min(sft_steps, 3)
        rl = dataclasses.replace(rl, steps=min(rl.steps, 2))
        evaluation = dataclasses.replace(evaluation, samples=1, every_steps=min(evaluation.every_steps, 1))
    os.makedirs(run_dir, exist_ok=True)
    tok = load_tokenizer(tokenizer)
    model_config, params = load_model(model, init_from, data.seed)
    if remat is not None:
        model_config = model_config.replace(remat=remat)
    problems, heldout, examples = datasets(data)
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
            raise ValueError("sft_steps > 0 needs worked solutions: use the demo data or `magjax sft` on a trace file")
        print(f"[magjax] SFT cold start: {sft_steps} steps on {len(examples)} worked solutions")
        params, losses = run_sft(examples, model_config, params, tok, chat, dataclasses.replace(sft, steps=sft_steps),
                                 optimizer=sft_optimizer, packing=packing)
        results["sft_loss_first_last"] = [losses[0], losses[-1]]

    latest: list[dict] = []  # the last evaluation's summary

    def held_out(params) -> dict:
        latest[:] = [evaluate(heldout, params, model_config, tok, chat, evaluation, engine=engine, reward=reward,
                              pool=pool)["summary"]]
        return latest[0]

    if heldout and not resuming:
        print(f"[magjax] evaluating {len(heldout)} held-out problems before RL")
        results["eval_before"] = held_out(params)
        if jax.process_index() == 0:
            with open(before_file, "w") as f:
                json.dump(results["eval_before"], f, indent=2)
    print(f"[magjax] RL: {rl.steps} batches of {rl.n_batch} completions, mode={rl.mode}, placement={rl.placement}")
    result = run(dataclasses.replace(rl, run_dir=rl_dir), problems=problems, model=model_config, params=params,
                 tokenizer=tokenizer, chat=chat, sampling=sampling, engine=engine, loss=loss, optimizer=optimizer,
                 packing=packing, reward=reward, pool=pool, evaluator=held_out if heldout else None,
                 eval_every=evaluation.every_steps)
    params = result.params
    evaluated_last_step = (evaluation.every_steps and result.step == rl.steps and not result.preempted
                           and rl.steps % evaluation.every_steps == 0 and latest)
    if heldout and evaluated_last_step:  # the run's own evaluation at its last step saw these params
        results["eval_after"] = latest[0]
    elif heldout:
        print(f"[magjax] evaluating {len(heldout)} held-out problems after RL")
        results["eval_after"] = held_out(params)
    if "eval_after" in results:
        results["table"] = format_table(results.get("eval_before", {}), results["eval_after"], evaluation.samples)
    if jax.process_index() == 0:  # one writer per job (every process holds the same params)
        _write_outputs(run_dir, model_config, params, results, reward)
    return results


def sft_job(run_dir: str = "runs/sft", *, model: str | ModelConfig = "demo", init_from: str | None = None,
            tokenizer: str = "byte", chat: ChatFormat = ChatFormat("plain", None), data: DataConfig = DataConfig(),
            traces: str | None = None, sft: SFTConfig = SFTConfig(), optimizer: OptimizerConfig = OptimizerConfig(
                learning_rate=3e-3, warmup_steps=10),
            packing: batching.PackingConfig = batching.PackingConfig(rows=8, row_len=256)) -> dict:
    """``magjax sft``: supervised fine-tuning on ``traces`` (a ``magjax distill`` JSONL file) or,
    without one, on the demo tasks' worked solutions; writes RUN_DIR/final_hf."""
    tok = load_tokenizer(tokenizer)
    model_config, params = load_model(model, init_from, data.seed)
    examples = read_traces(traces) if traces else datasets(data)[2]
    if not examples:
        raise ValueError("magjax sft: no examples (give sft_job.traces, or DataConfig.train = 'demo')")
    print(f"[magjax] SFT: {sft.steps} steps of {sft.batch_size} on {len(examples)} examples")
    primary = jax.process_index() == 0
    os.makedirs(run_dir, exist_ok=True)
    metrics = MetricsWriter(run_dir if primary else None, total_steps=sft.steps, console=primary)
    try:
        params, losses = run_sft(examples, model_config, params, tok, chat, sft, optimizer=optimizer,
                                 packing=packing, metrics=metrics)
    finally:
        metrics.close()
    results = {"run_dir": run_dir, "examples": len(examples), "loss_first_last": [losses[0], losses[-1]]}
    if primary:
        hf.save(_as_model(model_config, params), model_config, os.path.join(run_dir, "final_hf"))
        with open(os.path.join(run_dir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
    return results


def eval_job(run_dir: str = "runs/eval", *, model: str | ModelConfig = "demo", init_from: str | None = None,
             tokenizer: str = "byte", chat: ChatFormat = ChatFormat("plain", None), data: DataConfig = DataConfig(),
             evaluation: EvalConfig = EvalConfig(), engine: EngineConfig = EngineConfig(
                 slots=32, max_len=256, prompt_buckets=(64, 128)),
             reward: RewardConfig = RewardConfig(l_max=256, l_cache=64), pool: PoolConfig = PoolConfig()) -> dict:
    """``magjax eval``: k samples per problem of ``DataConfig.heldout`` (or the demo's held-out
    split); writes RUN_DIR/eval.json (summary and per-problem results) and prints a table."""
    tok = load_tokenizer(tokenizer)
    model_config, params = load_model(model, init_from, data.seed)
    heldout = datasets(data)[1]
    if not heldout:
        raise ValueError("magjax eval: no problems (set DataConfig.heldout to a problem file)")
    print(f"[magjax] evaluating {len(heldout)} problems, {evaluation.samples} samples each")
    out = evaluate(heldout, params, model_config, tok, chat, evaluation, engine=engine, reward=reward, pool=pool)
    out["table"] = format_summary(out["summary"], evaluation.samples)
    out["run_dir"] = run_dir
    if jax.process_index() == 0:
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "eval.json"), "w") as f:
            json.dump({"summary": out["summary"], "problems": out["problems"],
                       "config": dataclasses.asdict(evaluation)}, f, indent=2)
    return out


def _write_outputs(run_dir: str, model_config: ModelConfig, params: dict, results: dict, reward: RewardConfig):
    hf.save(_as_model(model_config, params), model_config, os.path.join(run_dir, "final_hf"))
    try:
        from magjax.report import write_report

        results["report"] = write_report(run_dir, length_threshold=reward.l_max - reward.l_cache)[-1]
    except ImportError:  # matplotlib is optional: the run itself is done
        results["report"] = None
    with open(os.path.join(run_dir, "results.json"), "w") as f:
        json.dump({k: v for k, v in results.items() if k != "table"}, f, indent=2)


def _as_model(config: ModelConfig, params: dict) -> decoder.Decoder:
    return decoder.Decoder(config, params=jax.tree.map(jax.numpy.asarray, params))
