"""Jobs the CLI runs: ``train`` (optional SFT cold start, then RL, with evaluation before
and after) and ``sft``. Gin configures them from the outside (see config.py)."""

from __future__ import annotations

import dataclasses
import json
import os

import jax

from magjax.data import read_problems
from magjax.data.synthetic import generate
from magjax.evaluate import EvalConfig, evaluate, format_table
from magjax.loop import RunConfig, run
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


@dataclasses.dataclass(frozen=True)
class DataConfig:
    train: str = "demo"  # "demo" (built-in tasks) or a problem file / dataset directory
    heldout: str | None = None  # evaluation problems; with "demo", a disjoint generated split
    demo_train_size: int = 2000
    demo_heldout_size: int = 64
    demo_kinds: tuple[str, ...] = ("math", "code")
    demo_difficulties: tuple[int, ...] = (1,)
    seed: int = 0


def _load_model(model: str | ModelConfig, init_from: str | None, seed: int):
    if init_from:
        config, m = hf.load(init_from)
        return config, m.params()
    config = preset(model) if isinstance(model, str) else model
    return config, decoder.init_params(config, jax.random.key(seed))


def train(run_dir: str = "runs/demo", *, model: str | ModelConfig = "demo", init_from: str | None = None,
          tokenizer: str = "byte", chat: ChatFormat = ChatFormat("plain", None), data: DataConfig = DataConfig(),
          sft_steps: int = 0, sft: SFTConfig = SFTConfig(), sft_optimizer: OptimizerConfig = OptimizerConfig(
              learning_rate=3e-3, warmup_steps=10), rl: RunConfig = RunConfig(), evaluation: EvalConfig = EvalConfig(),
          sampling: SamplingConfig = SamplingConfig(), engine: EngineConfig = EngineConfig(
              slots=32, max_len=256, prompt_buckets=(64, 128)), loss: LossConfig = LossConfig(),
          optimizer: OptimizerConfig = OptimizerConfig(learning_rate=3e-4),
          packing: batching.PackingConfig = batching.PackingConfig(rows=8, row_len=256),
          reward: RewardConfig = RewardConfig(l_max=256, l_cache=64), pool: PoolConfig = PoolConfig(),
          smoke: bool = False) -> dict:
    """SFT cold start (``sft_steps`` > 0), evaluation, RL, evaluation; returns the results.

    ``smoke=True`` shrinks every phase to seconds (a local check of a configuration).
    """
    if smoke:
        data = dataclasses.replace(data, demo_train_size=min(data.demo_train_size, 64),
                                   demo_heldout_size=min(data.demo_heldout_size, 8))
        sft_steps = min(sft_steps, 3)
        rl = dataclasses.replace(rl, steps=min(rl.steps, 2))
        evaluation = dataclasses.replace(evaluation, samples=1)
    os.makedirs(run_dir, exist_ok=True)
    tok = load_tokenizer(tokenizer)
    model_config, params = _load_model(model, init_from, data.seed)
    if data.train == "demo":
        tasks = generate(data.demo_train_size, seed=data.seed, kinds=data.demo_kinds,
                         difficulties=data.demo_difficulties)
        heldout_tasks = generate(data.demo_heldout_size, seed=data.seed + 10_000, kinds=data.demo_kinds,
                                 difficulties=data.demo_difficulties)
        # Held-out math problems never appear in training; the demo's code statements are a
        # small family, so held-out code problems share statements but have unseen tests.
        train_prompts = {t.problem.prompt for t in tasks if t.problem.kind == "math"}
        heldout = [t.problem for t in heldout_tasks if t.problem.prompt not in train_prompts]
        problems = [t.problem for t in tasks]
        examples = [(t.problem.prompt, t.solution) for t in tasks]
    else:
        problems = read_problems(data.train)
        heldout = read_problems(data.heldout) if data.heldout else []
        examples = []
    results: dict = {"run_dir": run_dir}
    rl_dir = os.path.join(run_dir, "rl")
    # A run that already has RL checkpoints resumes its RL phase (loop.run restores the
    # latest): the cold start and the "before" evaluation happened in its first attempt.
    resuming = _has_checkpoint(os.path.join(rl_dir, "checkpoints"))
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
    eval_kw = dict(engine=engine, reward=reward, pool=pool)
    if heldout and not resuming:
        print(f"[magjax] evaluating {len(heldout)} held-out problems before RL")
        results["eval_before"] = evaluate(heldout, params, model_config, tok, chat, evaluation, **eval_kw)["summary"]
        if jax.process_index() == 0:
            with open(before_file, "w") as f:
                json.dump(results["eval_before"], f, indent=2)
    print(f"[magjax] RL: {rl.steps} batches of {rl.n_batch} completions, mode={rl.mode}, placement={rl.placement}")
    result = run(dataclasses.replace(rl, run_dir=rl_dir), problems=problems, model=model_config, params=params,
                 tokenizer=tokenizer, chat=chat, sampling=sampling, engine=engine, loss=loss, optimizer=optimizer,
                 packing=packing, reward=reward, pool=pool)
    params = result.params
    if heldout:
        print(f"[magjax] evaluating {len(heldout)} held-out problems after RL")
        results["eval_after"] = evaluate(heldout, params, model_config, tok, chat, evaluation, **eval_kw)["summary"]
        results["table"] = format_table(results.get("eval_before", {}), results["eval_after"], evaluation.samples)
    if jax.process_index() == 0:  # one writer per job (every process holds the same params)
        _write_outputs(run_dir, model_config, params, results, reward)
    return results


def _write_outputs(run_dir: str, model_config: ModelConfig, params: dict, results: dict, reward: RewardConfig):
    hf.save(_as_model(model_config, params), model_config, os.path.join(run_dir, "final_hf"))
    try:
        from magjax.report import write_report

        results["report"] = write_report(run_dir, length_threshold=reward.l_max - reward.l_cache)[-1]
    except ImportError:  # matplotlib is optional: the run itself is done
        results["report"] = None
    with open(os.path.join(run_dir, "results.json"), "w") as f:
        json.dump({k: v for k, v in results.items() if k != "table"}, f, indent=2)


def _has_checkpoint(directory: str) -> bool:
    return os.path.isdir(directory) and any(d.isdigit() for d in os.listdir(directory))


def _as_model(config: ModelConfig, params: dict) -> decoder.Decoder:
    return decoder.Decoder(config, params=jax.tree.map(jax.numpy.asarray, params))
