"""``magjax validate-tests``: runs known solutions on every test of a problem file, repairs
wrong labels and drops inconsistent tests (data/validation.py)."""

from __future__ import annotations

import dataclasses
import os

from magjax.data.loaders import write_problems
from magjax.data.sources import read_reported
from magjax.data.validation import validate
from magjax.jobs.errors import JobError
from magjax.jobs.records import report_loads, write_json


def add_arguments(p) -> None:
    p.add_argument("--problems", required=True, help="a problem file (.jsonl, .parquet) or dataset directory")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--duplicate_languages", action="store_true",
                   help="also state each stdin/stdout problem in the other code language (Python <-> C++)")
    p.add_argument("--strict", action="store_true", help="any skipped problem record is an error")


def main(args, bindings: list[str]) -> int:
    if bindings:
        raise JobError(f"--gin.{bindings[0].split('=')[0].strip()}: `magjax validate-tests` takes no gin "
                       f"bindings; its flags set what it reads")
    reports = []
    problems = read_reported(args.problems, reports=reports)
    report_loads(reports, args.strict)
    fixed, report = validate(problems, duplicate_languages=args.duplicate_languages)
    os.makedirs(args.out, exist_ok=True)
    write_problems(fixed, os.path.join(args.out, "validated.jsonl"))
    write_json(os.path.join(args.out, "report.json"), dataclasses.asdict(report))
    print(f"{len(fixed)} problems kept; {len(report.repaired)} tests repaired, {len(report.dropped_tests)} tests "
          f"and {len(report.dropped_problems)} problems dropped, {len(report.duplicated)} duplicated into the other "
          f"code language; see {args.out}/report.json")
    return 0
