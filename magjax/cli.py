"""The ``magjax`` command line.

    magjax train | sft | eval | filter | validate-tests | distill | export | report | plan | bench
"""

from __future__ import annotations

import argparse
import json
import sys

COMMANDS = ("train", "sft", "eval", "filter", "validate-tests", "distill", "export", "report", "plan", "bench")


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
        else:
            p.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable)")
            p.add_argument("--run_dir", help="where checkpoints, metrics and plots go")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest = build_parser().parse_known_args(argv or ["train"])
    if args.command == "bench":
        return _bench(args)
    print(f"magjax {args.command}: not implemented yet in this version.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
