"""The ``magjax`` command line.

    magjax train | sft | eval | filter | validate-tests | distill | export | report | plan | bench

Every job command takes ``--gin_file`` (repeatable; searched in the working directory and
the repository's gin/ folder), ``--gin.NAME=VALUE`` bindings and ``--run_dir``. ``magjax
train`` with no arguments runs the CPU demo (gin/experiments/demo_cpu.gin).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

COMMANDS = ("train", "sft", "eval", "filter", "validate-tests", "distill", "export", "report", "plan", "bench")
DEFAULT_GIN = {"train": "experiments/demo_cpu.gin"}


def _bench(args, bindings=()) -> int:
    if args.what == "train":
        from magjax.bench import train as bench
        result = bench.run(args.preset, dtype=args.dtype)
    elif args.what == "sampler":
        from magjax.bench import sampler as bench
        result = bench.run(args.preset, dtype=args.dtype)
    elif args.what == "verifier":
        from magjax.bench import verifier as bench
        result = bench.run()
    else:
        from magjax.bench import pipeline as bench
        result = bench.run(steps=args.steps, bindings=tuple(bindings))
    print(bench.describe(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


JOBS = {"train": "train", "sft": "sft_job", "eval": "eval_job"}  # command -> gin-configured function


def _job(args, bindings) -> int:
    """``train``, ``sft`` and ``eval``: parse the gin files, run the configured job, save the
    operative config beside its outputs."""
    from magjax import config

    command, name = args.command, JOBS[args.command]
    files = args.gin_file or [DEFAULT_GIN["train"]]
    if args.run_dir:
        bindings = bindings + [f"{name}.run_dir = {args.run_dir!r}"]
    try:
        config.parse(files, bindings)
    except config.ConfigError as err:
        print(f"magjax {command}: configuration error: {err}", file=sys.stderr)
        return 2
    job = config.configured(name)
    try:
        results = job() if args.run_dir else job(run_dir=f"runs/{'demo' if command == 'train' else command}")
    except (FileNotFoundError, ValueError) as err:  # a missing file or a bad input, named by the error
        print(f"magjax {command}: {err}", file=sys.stderr)
        return 2
    import jax

    if jax.process_index() != 0:  # process 0 speaks for a multi-process job
        return 0
    run_dir = results["run_dir"]
    config.save_operative(run_dir)
    print(f"\n[magjax] done. Run directory: {run_dir}")
    if command == "eval":
        print(f"  results: {os.path.join(run_dir, 'eval.json')}\n\n{results['table']}")
        return 0
    metrics = "metrics.jsonl" if command == "sft" else os.path.join("rl", "metrics.jsonl")
    print(f"  metrics:   {os.path.join(run_dir, metrics)} (TensorBoard: {os.path.dirname(metrics) or '.'}/tensorboard)")
    print(f"  weights:   {os.path.join(run_dir, 'final_hf')} (Hugging Face format)")
    if command == "train":
        print(f"  checkpoints: {os.path.join(run_dir, 'rl', 'checkpoints')}")
    if results.get("report"):
        print(f"  plots:     {results['report']}")
    if "table" in results:
        print("\nHeld-out accuracy before and after RL:\n" + results["table"])
    return 0


def _filter(args) -> int:
    """``magjax filter`` and ``magjax distill``: both sample the given model on every problem."""
    import jax

    from magjax.data import read_problems
    from magjax.data.filtering import FilterConfig, filter_problems, sampler_source
    from magjax.models import decoder, hf, preset
    from magjax.models.tokenizer import ChatFormat, check_vocab, load_tokenizer
    from magjax.rewards.reward import RewardConfig
    from magjax.sampling.engine import EngineConfig, SamplingConfig

    problems = read_problems(args.problems)
    if args.init_from:
        model_config, model = hf.load(args.init_from)
        params = model.params()
    else:
        model_config = preset(args.model)
        params = decoder.init_params(model_config, jax.random.key(0))
    tok = load_tokenizer(args.tokenizer)
    check_vocab(tok, model_config.vocab_size)
    slots = max(args.samples, 1)
    engine = EngineConfig(slots=slots, max_len=512 + args.max_new_tokens, prompt_buckets=(64, 128, 256, 512))
    source = sampler_source(model_config, params, tok, ChatFormat("plain", None), engine=engine,
                            sampling=SamplingConfig(temperature=1.0), reward=RewardConfig(),
                            max_new_tokens=args.max_new_tokens, with_text=args.command == "distill")
    if args.command == "distill":
        from magjax.data.distill import DistillConfig, distill

        try:
            report = distill(problems, source, os.path.join(args.out, "traces.jsonl"),
                             DistillConfig(args.samples, args.cap_per_problem))
        finally:
            source.close()
        print(f"{report['traces']} verified traces in {args.out}/traces.jsonl; "
              f"{len(report['unsolved'])} problems never solved")
        return 0
    try:
        report = filter_problems(problems, source, args.out, FilterConfig(args.samples, args.min_pass_rate,
                                                                           args.max_pass_rate))
    finally:
        source.close()
    print(f"kept {report['kept']}, dropped {report['dropped']}; see {args.out}/kept.jsonl, dropped.jsonl, histogram.json")
    return 0


def _validate(args) -> int:
    import dataclasses as dc

    from magjax.data import read_problems
    from magjax.data.loaders import write_problems
    from magjax.data.validation import validate

    problems = read_problems(args.problems)
    fixed, report = validate(problems, duplicate_languages=args.duplicate_languages)
    os.makedirs(args.out, exist_ok=True)
    write_problems(fixed, os.path.join(args.out, "validated.jsonl"))
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(dc.asdict(report), f, indent=2)
    print(f"{len(fixed)} problems kept; {len(report.repaired)} tests repaired, {len(report.dropped_tests)} tests "
          f"and {len(report.dropped_problems)} problems dropped, {len(report.duplicated)} duplicated into the other "
          f"code language; see {args.out}/report.json")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="magjax", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    for name in COMMANDS:
        p = sub.add_parser(name)
        if name == "bench":
            p.add_argument("what", choices=("train", "sampler", "verifier", "pipeline"))
            p.add_argument("--preset", default="tiny", help="model preset (magjax.models.PRESETS)")
            p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
            p.add_argument("--json", help="also write the result as JSON to this path")
            p.add_argument("--steps", type=int, default=12,
                           help="pipeline: batches per mode (those that compile the train step are untimed)")
        elif name == "report":
            p.add_argument("run_dir", help="a run directory (with metrics.jsonl, or rl/metrics.jsonl)")
            p.add_argument("--weights", action="store_true",
                           help="also the weight-trajectory analysis over the run's checkpoints")
        elif name == "plan":
            p.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable)")
            p.add_argument("--devices", type=int,
                           help="devices the mesh spans (default: the slice's chips, or the mesh file's MESH_DEVICES)")
            p.add_argument("--device_memory_gb", type=float, help="estimate: memory per device, to check the fit")
            p.add_argument("--topology", help="a TPU slice (v5p-64, v5e-16, v4-32, v6e-8, v5p:2x4x4): compile the "
                                              "experiment for it and report XLA's per-chip memory (needs libtpu)")
            p.add_argument("--json", help="also write the report as JSON to this path")
        elif name == "export":
            p.add_argument("run_dir", help="a run directory (its rl/checkpoints) or a checkpoints directory")
            p.add_argument("--out", required=True, help="the Hugging Face directory to write")
            p.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
        elif name in ("filter", "validate-tests", "distill"):
            p.add_argument("--problems", required=True, help="a problem file (.jsonl, .parquet) or dataset directory")
            p.add_argument("--out", required=True, help="output directory")
            if name in ("filter", "distill"):
                p.add_argument("--init_from", help="a Hugging Face model directory to sample from")
                p.add_argument("--model", default="demo", help="a preset, when --init_from is not given")
                p.add_argument("--tokenizer", default="byte", help='"byte" or a tokenizer.json (or its folder)')
                p.add_argument("--samples", type=int, default=16)
                p.add_argument("--min_pass_rate", type=float, default=1 / 16)
                p.add_argument("--max_pass_rate", type=float, default=0.875)
                p.add_argument("--max_new_tokens", type=int, default=256)
                p.add_argument("--cap_per_problem", type=int, default=2, help="distill: correct traces kept per problem")
            if name == "validate-tests":
                p.add_argument("--duplicate_languages", action="store_true",
                               help="also state each stdin/stdout problem in the other code language (Python <-> C++)")
        else:
            p.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable)")
            p.add_argument("--run_dir", help="where checkpoints, metrics and plots go")
    return parser


def _split_gin_bindings(argv: list[str]) -> tuple[list[str], list[str]]:
    """Pulls ``--gin.NAME=VALUE`` (or ``--gin.NAME VALUE``) out of argv as gin bindings."""
    rest, bindings, i = [], [], 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--gin."):
            name, eq, value = a[len("--gin."):].partition("=")
            if not eq:
                i += 1
                value = argv[i] if i < len(argv) else ""
            bindings.append(f"{name} = {value}")
        else:
            rest.append(a)
        i += 1
    return rest, bindings


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # a program, not a call: huge pages for the host allocator first (host_memory.py)
        from magjax import host_memory

        host_memory.reexec_with_huge_pages()
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, bindings = _split_gin_bindings(argv)
    args = build_parser().parse_args(argv or ["train"])
    if args.command == "bench":
        if args.what == "pipeline":  # the demo's 8 simulated CPU devices (accelerators ignore it)
            flags = os.environ.get("XLA_FLAGS", "")
            if "xla_force_host_platform_device_count" not in flags:
                os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=8".strip()
        return _bench(args, bindings)
    if args.command == "plan":
        from magjax.aot import command as plan_command

        return plan_command.run(args, bindings)
    if args.command == "export":
        from magjax.export import export
        from magjax.checkpoint import find_checkpoints
        directory = find_checkpoints(args.run_dir)
        if directory is None:
            print(f"magjax export: no checkpoints under {args.run_dir}", file=sys.stderr)
            return 2
        print(export(directory, args.out, args.step))
        return 0
    if args.command in ("filter", "distill"):
        return _filter(args)
    if args.command == "validate-tests":
        return _validate(args)
    if args.command == "report":
        from magjax.report import write_report, write_weight_report
        try:
            paths = write_report(args.run_dir)
            if args.weights:
                paths += write_weight_report(args.run_dir)
        except (FileNotFoundError, ValueError, StopIteration) as err:
            print(f"magjax report: {err}", file=sys.stderr)
            return 2
        print("\n".join(paths))
        return 0
    if args.command in JOBS:
        # The demo runs on 8 simulated CPU devices; accelerators ignore this flag.
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_force_host_platform_device_count" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=8".strip()
        from magjax.mesh import initialize_distributed

        initialize_distributed()  # a no-op unless launch/ (or the environment) describes a cluster
        return _job(args, bindings)
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
