"""``magjax bench pipeline``: the demo configuration in sync and in async mode, for the same
number of trained completions; wall time per batch, trainer busy fraction, and the ratio.

Both modes start from the same cold start (a short SFT, so that rewards vary and batches
train) and run the same number of batches. Batches during which the train step compiled
(the first, and the first of each new microbatch count: a few seconds each on two cores,
as much as several steady batches) are left out of the timings, which measure the steady
pipeline; how many batches were timed is reported. On a machine whose cores the generator
and trainer share, async gains only what one of them leaves idle (host-side work, verifier
round trips, small decode batches): ``describe`` prints the time split so the ratio can be
read against it.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np


def run(steps: int = 12, sft_steps: int = 60, gin_file: str = "experiments/demo_cpu.gin",
        bindings: tuple[str, ...] = ()) -> dict:
    from magjax import config
    from magjax.data.sources import datasets
    from magjax.loop import run as run_loop
    from magjax.models.tokenizer import load_tokenizer
    from magjax.sft import run_sft

    config.parse([gin_file], list(bindings))
    recipe = config.recipe()
    model, rl = recipe.model_config, recipe.run
    problems, _, examples = datasets(dataclasses.replace(recipe.data, demo_heldout_size=0))
    t0 = time.perf_counter()
    params, _ = run_sft(examples, model, None, load_tokenizer(recipe.tokenizer), recipe.chat,
                        dataclasses.replace(recipe.sft, steps=sft_steps), packing=recipe.packing)
    sft_s = time.perf_counter() - t0
    out = {"bench": "pipeline", "gin_file": gin_file, "steps": steps, "n_batch": rl.n_batch,
           "n_async": rl.n_async, "sft_s": sft_s}
    for mode in ("sync", "async"):
        result = run_loop(dataclasses.replace(recipe, run=dataclasses.replace(rl, mode=mode, steps=steps,
                                                                             run_dir=None)),
                          problems, params, console=False)
        steady = [h for h in result.history[1:] if not h["pipeline/train_compiles"]]
        if not steady:  # a run too short to have any: time what there is, compilation and all
            steady = result.history[1:] or result.history
        step_s = np.asarray([h["pipeline/step_s"] for h in steady])
        wait_s = np.asarray([h["pipeline/trainer_wait_s"] for h in steady])
        out[mode] = {"wall_s_per_batch": float(step_s.mean()), "wall_s": float(step_s.sum()),
                     "trainer_busy_fraction": float(1 - wait_s.sum() / step_s.sum()),
                     "trainer_s_per_batch": float((step_s - wait_s).mean()),
                     "generator_idle_fraction": float(result.history[-1]["pipeline/generator_idle_fraction"]),
                     "tokens_per_batch": float(np.mean([h["rollout/length_mean"] for h in steady]) * rl.n_batch),
                     "groups_trained": int(sum(h["pipeline/groups_trained"] for h in steady)),
                     "timed_batches": len(steady),
                     "lag_tokens_mean": float(np.mean([h["pipeline/lag_tokens_mean"] for h in steady]))}
    out["async_over_sync"] = out["sync"]["wall_s_per_batch"] / out["async"]["wall_s_per_batch"]
    return out


def describe(r: dict) -> str:
    lines = [f"pipeline  {r['gin_file']}: {r['steps']} batches of {r['n_batch']} completions per mode "
             f"(n_async {r['n_async']}), after an SFT cold start of {r['sft_s']:.0f} s; timed: the batches "
             f"without compilation"]
    for mode in ("sync", "async"):
        m = r[mode]
        lines.append(f"  {mode:<5}  {m['timed_batches']} timed: {m['wall_s_per_batch']:.2f} s/batch "
                     f"({m['wall_s']:.1f} s), trainer busy "
                     f"{100 * m['trainer_busy_fraction']:.0f}% ({m['trainer_s_per_batch']:.2f} s/batch training), "
                     f"{m['tokens_per_batch']:.0f} tokens/batch, lag {m['lag_tokens_mean']:.2f} versions")
    lines.append(f"  async/sync speed ratio: {r['async_over_sync']:.2f}x")
    return "\n".join(lines)
