"""``magjax filter`` and ``magjax distill``: sample a model k times on every problem of a
file. ``filter`` keeps problems inside a pass-rate window (data/filtering.py); ``distill``
keeps a teacher's verified traces as an SFT dataset (data/distill.py)."""

from __future__ import annotations

import os

from magjax.data.distill import DistillConfig, distill
from magjax.data.filtering import FilterConfig, filter_problems
from magjax.data.sources import read_reported
from magjax.jobs.errors import JobError
from magjax.jobs.records import load_model, report_loads
from magjax.models.tokenizer import ChatFormat, check_vocab, load_tokenizer
from magjax.recipe import Recipe
from magjax.rewards.pool import PoolConfig
from magjax.rewards.reward import RewardConfig
from magjax.roles.rollout import Rollout, pass_rate_source
from magjax.sampling.engine import EngineConfig, SamplingConfig


def recipe_from_flags(args) -> Recipe:
    """The recipe these flags describe: the model to sample, at temperature 1, plain chat."""
    return Recipe(model=args.model, tokenizer=args.tokenizer, init_from=args.init_from, chat=ChatFormat("plain", None),
                  engine=EngineConfig(slots=max(args.samples, 1), max_len=512 + args.max_new_tokens,
                                      prompt_buckets=(64, 128, 256, 512)),
                  sampling=SamplingConfig(temperature=1.0), reward=RewardConfig(), pool=PoolConfig())


def sample_problems(command: str, recipe: Recipe, problems_path: str, out: str, samples: int, max_new_tokens: int,
                    *, strict: bool = False, filter_config: FilterConfig | None = None,
                    distill_config: DistillConfig | None = None) -> dict:
    reports = []
    problems = read_reported(problems_path, reports=reports)
    report_loads(reports, strict)
    if not problems:
        raise JobError(f"{problems_path}: no valid problems")
    model_config, params = load_model(recipe.model, recipe.init_from, seed=0)
    tok = load_tokenizer(recipe.tokenizer)
    check_vocab(tok, model_config.vocab_size)
    rollout = Rollout(model_config, tok, recipe.chat, engine=recipe.engine, sampling=recipe.sampling,
                      reward=recipe.reward, pool=recipe.pool, params=params)
    try:
        source = pass_rate_source(rollout, max_new_tokens, with_text=command == "distill")
        if command == "distill":
            return distill(problems, source, os.path.join(out, "traces.jsonl"), distill_config)
        return filter_problems(problems, source, out, filter_config)
    finally:
        rollout.close()


def add_arguments(p) -> None:
    p.add_argument("--problems", required=True, help="a problem file (.jsonl, .parquet) or dataset directory")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--init_from", help="a Hugging Face model directory (or a magjax run) to sample from")
    p.add_argument("--model", default="demo", help="a preset, when --init_from is not given")
    p.add_argument("--tokenizer", default="byte", help='"byte", or a tokenizer.json or tekken.json (or its folder)')
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--min_pass_rate", type=float, default=1 / 16)
    p.add_argument("--max_pass_rate", type=float, default=0.875)
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--cap_per_problem", type=int, default=2, help="distill: correct traces kept per problem")
    p.add_argument("--strict", action="store_true", help="any skipped problem record is an error")


def main(args, bindings: list[str]) -> int:
    if bindings:
        raise JobError(f"--gin.{bindings[0].split('=')[0].strip()}: `magjax {args.command}` takes no gin "
                       f"bindings; its flags set what it reads")
    recipe = recipe_from_flags(args)
    if args.command == "distill":
        report = sample_problems("distill", recipe, args.problems, args.out, args.samples, args.max_new_tokens,
                                 strict=args.strict, distill_config=DistillConfig(args.samples, args.cap_per_problem))
        print(f"{report['traces']} verified traces in {args.out}/traces.jsonl; "
              f"{len(report['unsolved'])} problems never solved")
        return 0
    report = sample_problems("filter", recipe, args.problems, args.out, args.samples, args.max_new_tokens,
                             strict=args.strict, filter_config=FilterConfig(args.samples, args.min_pass_rate,
                                                                            args.max_pass_rate))
    print(f"kept {report['kept']}, dropped {report['dropped']}; see {args.out}/kept.jsonl, dropped.jsonl, "
          f"histogram.json")
    return 0
