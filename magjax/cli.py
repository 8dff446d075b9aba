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


def _bench(args) -> int:
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
        print(f"magjax bench {args.what}: not implemented yet", file=sys.stderr)
        return 2
    print(bench.describe(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


def _train(args, bindings) -> int:
    from magjax import config

    files = args.gin_file or [DEFAULT_GIN["train"]]
    if args.run_dir:
        bindings = bindings + [f"train.run_dir = {args.run_dir!r}"]
    try:
        config.parse(files, bindings)
    except config.ConfigError as err:
        print(f"magjax train: configuration error: {err}", file=sys.stderr)
        return 2
    train = config.configured("train")
    run_dir = args.run_dir or "runs/demo"
    results = train(run_dir=run_dir) if not args.run_dir else train()
    config.save_operative(results["run_dir"])
    print(f"\n[magjax] done. Run directory: {results['run_dir']}")
    print(f"  metrics:   {os.path.join(results['run_dir'], 'rl', 'metrics.jsonl')} (TensorBoard: rl/tensorboard)")
    print(f"  weights:   {os.path.join(results['run_dir'], 'final_hf')} (Hugging Face format)")
    print(f"  checkpoints: {os.path.join(results['run_dir'], 'rl', 'checkpoints')}")
    if results.get("report"):
        print(f"  plots:     {results['report']}")
    if "table" in results:
        print("\nHeld-out accuracy before and after RL:\n" + results["table"])
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
        elif name == "report":
            p.add_argument("run_dir", help="a run directory (with metrics.jsonl, or rl/metrics.jsonl)")
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
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, bindings = _split_gin_bindings(argv)
    args = build_parser().parse_args(argv or ["train"])
    if args.command == "bench":
        return _bench(args)
    if args.command == "report":
        from magjax.report import write_report
        try:
            paths = write_report(args.run_dir)
        except FileNotFoundError as err:
            print(f"magjax report: {err}", file=sys.stderr)
            return 2
        print("\n".join(paths))
        return 0
    if args.command == "train":
        # The demo runs on 8 simulated CPU devices; accelerators ignore this flag.
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_force_host_platform_device_count" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=8".strip()
        return _train(args, bindings)
    print(f"magjax {args.command}: not implemented yet in this version.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
