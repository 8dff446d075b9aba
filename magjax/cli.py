"""The ``magjax`` command line.

    magjax train | sft | eval | filter | validate-tests | distill | export | report | plan | bench

Every gin job (train, sft, eval, plan) takes ``--gin_file`` (repeatable; searched in the
working directory and the repository's gin/ folder) and ``--gin.NAME=VALUE`` bindings;
train, sft and eval take ``--run_dir``; every job that reads records takes ``--strict``.
``magjax train`` with no arguments runs the CPU demo (gin/experiments/demo_cpu.gin).
Each command is a module of magjax/jobs/; an expected failure ends as one line naming
the thing at fault, with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> the job module that defines its arguments and runs it
COMMANDS = {"train": "train", "sft": "sft", "eval": "eval", "filter": "filter", "validate-tests": "validate",
            "distill": "filter", "export": "export", "report": "report", "plan": "plan", "bench": "bench"}


def _job(command: str):
    return importlib.import_module(f"magjax.jobs.{COMMANDS[command]}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="magjax", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    for command in COMMANDS:
        _job(command).add_arguments(sub.add_parser(command))
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
    from magjax.aot import topology

    topology.quiet_libtpu_off_tpu()  # before JAX starts: libtpu's metadata warnings off TPU hosts
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, bindings = _split_gin_bindings(argv)
    args = build_parser().parse_args(argv or ["train"])
    from magjax.jobs.errors import EXPECTED, one_line

    try:
        return _job(args.command).main(args, bindings)
    except EXPECTED as err:  # bad input, named by the error: one line, no traceback
        print(f"magjax {args.command}: {one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
