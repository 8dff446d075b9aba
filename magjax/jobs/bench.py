"""``magjax bench train|sampler|verifier|pipeline|accelerator``: throughput against this
machine's measured limits (magjax/bench/); ``accelerator`` also checks a GPU's or TPU's
bfloat16 log-probs against a float32 CPU reference."""

from __future__ import annotations

import importlib
import json



def add_arguments(p) -> None:
    p.add_argument("what", choices=("train", "sampler", "verifier", "pipeline", "accelerator"))
    p.add_argument("--preset", default="tiny", help="model preset (magjax.models.PRESETS)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--json", help="also write the result as JSON to this path")
    p.add_argument("--steps", type=int, default=12,
                   help="pipeline: batches per mode (those that compile the train step are untimed)")
    p.add_argument("--cases", default="all", choices=("all", "batches", "long-context"),
                   help="sampler: the batch sizes' rows, the long-context case (mixed lengths, dense and "
                        "paged cache), or both")
    p.add_argument("--max-len", type=int, default=2048, help="sampler: the long-context case's max_len")
    p.add_argument("--devices", type=int, default=1,
                   help="train, sampler: on a data-parallel mesh of this many devices (on a CPU, simulated ones "
                        "sharing its cores: what the demo's roles run on); the rows or slots must split evenly")
    p.add_argument("--page-size", type=int, default=64,
                   help="sampler: positions per page of the paged cache (batch 16's paged row, the long-context case)")


def main(args, bindings: list[str]) -> int:
    if args.devices < 1:
        raise ValueError(f"--devices must be at least 1, got {args.devices}")
    if args.what == "pipeline" or args.devices > 1:  # simulated CPU devices (accelerators ignore it)
        from magjax.jobs.bindings import simulated_cpu_devices

        simulated_cpu_devices(max(8, args.devices))
    bench = importlib.import_module(f"magjax.bench.{args.what}")
    if args.what == "sampler":
        from magjax.bench.long_context import Case

        only_long = {"batches": ()} if args.cases == "long-context" else {}
        case = None if args.cases == "batches" else Case(max_len=args.max_len, page_size=args.page_size)
        result = bench.run(args.preset, dtype=args.dtype, long_context=case, page_size=args.page_size,
                           devices=args.devices, **only_long)
    elif args.what == "train":
        result = bench.run(args.preset, dtype=args.dtype, devices=args.devices)
    elif args.what == "accelerator":
        result = bench.run(args.preset)
    elif args.what == "verifier":
        result = bench.run()
    else:
        result = bench.run(steps=args.steps, bindings=tuple(bindings))
    print(bench.describe(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0
