"""``magjax report RUN_DIR``: the plots a researcher reads after a run, and an index page.

Reads ``metrics.jsonl`` (the RL phase's, under RUN_DIR/rl when present) and writes PNGs
with matplotlib: reward and accuracy; completion length against the length-penalty
threshold; entropy and clip fractions; policy lag; throughput and idle fractions; and the
reward-versus-length scatter the Magistral authors used. ``index.html`` shows them all.
"""

from __future__ import annotations

import html
import json
import os

import numpy as np

PLOTS = {
    "reward.png": ("Reward and accuracy", ["reward/mean", "reward/accuracy", "reward/format"]),
    "length.png": ("Completion length (tokens)", ["rollout/length_mean", "rollout/length_max"]),
    "entropy_clip.png": ("Entropy and clip fractions", ["train/entropy", "train/clip_low_fraction",
                                                        "train/clip_high_fraction"]),
    "lag.png": ("Policy lag (versions)", ["pipeline/lag_tokens_mean", "pipeline/lag_versions_spanned_mean",
                                          "pipeline/lag_tokens_max"]),
    "throughput.png": ("Throughput and idle fractions", ["rollout/tokens_per_s", "pipeline/trainer_idle_fraction",
                                                        "pipeline/generator_idle_fraction"]),
}


def read_metrics(run_dir: str) -> list[dict]:
    for candidate in (os.path.join(run_dir, "rl", "metrics.jsonl"), os.path.join(run_dir, "metrics.jsonl")):
        if os.path.exists(candidate):
            with open(candidate) as f:
                return [json.loads(line) for line in f if line.strip()]
    raise FileNotFoundError(f"{run_dir}: no metrics.jsonl (looked in rl/ and the directory itself)")


def write_report(run_dir: str, *, length_threshold: float | None = None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    out_dir = os.path.join(run_dir, "report")
    os.makedirs(out_dir, exist_ok=True)
    steps = np.asarray([r["step"] for r in rows])
    written = []
    for filename, (title, keys) in PLOTS.items():
        fig, ax = plt.subplots(figsize=(6, 3.5))
        twin = None
        for key in keys:
            values = np.asarray([r.get(key, np.nan) for r in rows], dtype=float)
            target = ax
            if key == "rollout/tokens_per_s":
                target = ax
            elif filename == "throughput.png":
                twin = twin or ax.twinx()
                target = twin
            target.plot(steps, values, label=key)
        if filename == "length.png" and length_threshold:
            ax.axhline(length_threshold, color="red", linestyle="--", label="length-penalty threshold")
        ax.set_title(title)
        ax.set_xlabel("step")
        handles = ax.get_legend_handles_labels()
        if twin is not None:
            extra = twin.get_legend_handles_labels()
            handles = (handles[0] + extra[0], handles[1] + extra[1])
        ax.legend(*handles, fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, filename), dpi=100)
        plt.close(fig)
        written.append(filename)
    fig, ax = plt.subplots(figsize=(5, 4))
    lengths = [r.get("rollout/length_mean", np.nan) for r in rows]
    rewards = [r.get("reward/mean", np.nan) for r in rows]
    ax.scatter(lengths, rewards, c=steps, cmap="viridis")
    ax.set_xlabel("mean completion length")
    ax.set_ylabel("mean reward")
    ax.set_title("Reward versus length (colour: step)")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "reward_vs_length.png"), dpi=100)
    plt.close(fig)
    written.append("reward_vs_length.png")
    items = "\n".join(f'<figure><img src="{html.escape(f)}"><figcaption>{html.escape(f)}</figcaption></figure>'
                      for f in written)
    with open(os.path.join(out_dir, "index.html"), "w") as f:
        f.write(f"<!doctype html><title>magjax report: {html.escape(run_dir)}</title>"
                f"<h1>{html.escape(run_dir)}</h1><p>{len(rows)} steps</p>{items}")
    return [os.path.join(out_dir, f) for f in written + ["index.html"]]
