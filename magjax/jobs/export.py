"""``magjax export RUN_DIR --out D``: a checkpoint's policy as a Hugging Face directory."""

from __future__ import annotations

from magjax.jobs.errors import JobError


def add_arguments(p) -> None:
    p.add_argument("run_dir", help="a run directory (its rl/checkpoints) or a checkpoints directory")
    p.add_argument("--out", required=True, help="the Hugging Face directory to write")
    p.add_argument("--step", type=int, help="checkpoint step (default: the latest)")


def main(args, bindings: list[str]) -> int:
    from magjax.checkpoint import Checkpointer, find_checkpoints
    from magjax.export import export

    if bindings:
        raise JobError(f"--gin.{bindings[0].split('=')[0].strip()}: `magjax export` takes no gin bindings")
    directory = find_checkpoints(args.run_dir)
    if directory is None:
        raise JobError(f"no checkpoints under {args.run_dir}")
    ckpt = Checkpointer(directory)
    try:
        steps = ckpt.steps()
    finally:
        ckpt.close()
    step = args.step if args.step is not None else (steps[-1] if steps else None)
    if step not in steps:
        raise JobError(f"{directory}: no complete checkpoint step {step} (steps: {', '.join(map(str, steps)) or 'none'})")
    print(f"[magjax] {directory}: {len(steps)} checkpoints, exporting step {step}")
    print(export(directory, args.out, step))
    return 0
