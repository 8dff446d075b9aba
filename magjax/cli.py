"""The ``magjax`` command line: train | sft | eval | filter | report | plan | bench."""

from __future__ import annotations

import argparse
import sys

COMMANDS = ("train", "sft", "eval", "filter", "validate-tests", "distill", "export", "report", "plan", "bench")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="magjax", description=__doc__)
    parser.add_argument("command", nargs="?", default="train", choices=COMMANDS)
    args, _ = parser.parse_known_args(argv)
    print(f"magjax {args.command}: not implemented yet in this version "
          "(the foundation is in place: models, mesh, sharding, Hugging Face checkpoints).",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
