"""``magjax report RUN_DIR``: plots of a run's metrics (report.py), optionally the
weight-trajectory analysis over its checkpoints."""

from __future__ import annotations

from magjax.data.loaders import LoadReport
from magjax.jobs.errors import JobError
from magjax.jobs.records import report_loads


def add_arguments(p) -> None:
    p.add_argument("run_dir", help="a run directory (with metrics.jsonl, or rl/metrics.jsonl)")
    p.add_argument("--weights", action="store_true", help="also the weight-trajectory analysis over the run's checkpoints")
    p.add_argument("--strict", action="store_true", help="any skipped metrics record is an error")


def main(args, bindings: list[str]) -> int:
    from magjax.report import write_report, write_weight_report

    if bindings:
        raise JobError(f"--gin.{bindings[0].split('=')[0].strip()}: `magjax report` takes no gin bindings")
    loads = LoadReport(args.run_dir)
    try:
        paths = write_report(args.run_dir, load_report=loads)
        report_loads([loads], args.strict)
        if args.weights:
            paths += write_weight_report(args.run_dir)
    except StopIteration:  # no checkpoints directory for the weight analysis
        raise JobError(f"{args.run_dir}: no checkpoints (looked in rl/checkpoints and checkpoints)") from None
    print("\n".join(paths))
    return 0
