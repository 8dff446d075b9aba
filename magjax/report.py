"""``magjax report RUN_DIR``: the plots a researcher reads after a run, and an index page.

Reads ``metrics.jsonl`` (the RL phase's, under RUN_DIR/rl when present) and writes PNGs
with matplotlib: reward and accuracy; completion length against the length-penalty
threshold; entropy and clip fractions; policy lag; throughput and idle fractions; the
reward-versus-length scatter the Magistral authors used; and, when the run evaluated a
held-out set, its pass@1 per kind from before RL (RUN_DIR/eval_before.json) to the last
evaluation. ``index.html`` shows them all.
"""

from __future__ import annotations

import html
import json
import os
import warnings

import numpy as np

from magjax.data.loaders import LoadReport

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


def read_metrics(run_dir: str, report: LoadReport | None = None) -> list[dict]:
    """One record per step, in step order. A run resumed from a checkpoint repeats the steps
    after it (the later record wins), and a process killed mid-write can leave a torn last
    line (skipped with a warning naming it, and counted in ``report``)."""
    for candidate in (os.path.join(run_dir, "rl", "metrics.jsonl"), os.path.join(run_dir, "metrics.jsonl")):
        if os.path.exists(candidate):
            by_step = {}
            with open(candidate) as f:
                for number, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        warnings.warn(f"{candidate}:{number}: not a JSON record (a torn write?); skipped")
                        if report is not None:
                            report.skipped += 1
                            report.errors.append(f"{candidate}:{number}: not a JSON record (a torn write?)")
                        continue
                    by_step[record["step"]] = record
            if report is not None:
                report.path, report.loaded = candidate, len(by_step)
            return [by_step[s] for s in sorted(by_step)]
    raise FileNotFoundError(f"{run_dir}: no metrics.jsonl (looked in rl/ and the directory itself)")


def write_report(run_dir: str, *, length_threshold: float | None = None,
                 load_report: LoadReport | None = None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir, load_report)
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
            if filename == "throughput.png" and key != "rollout/tokens_per_s":  # fractions on their own axis
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
    curves = heldout_curves(run_dir, rows)
    if curves:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for name, (xs, ys) in curves.items():
            ax.plot(xs, 100 * np.asarray(ys), "o-", label=name)
        ax.set(title="Held-out pass@1 (%; step 0: before RL)", xlabel="step", ylim=(0, 100))
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "heldout.png"), dpi=100)
        plt.close(fig)
        written.append("heldout.png")
    items = "\n".join(f'<figure><img src="{html.escape(f)}"><figcaption>{html.escape(f)}</figcaption></figure>'
                      for f in written)
    with open(os.path.join(out_dir, "index.html"), "w") as f:
        f.write(f"<!doctype html><title>magjax report: {html.escape(run_dir)}</title>"
                f"<h1>{html.escape(run_dir)}</h1><p>{len(rows)} steps</p>{items}")
    return [os.path.join(out_dir, f) for f in written + ["index.html"]]


def heldout_curves(run_dir: str, rows: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """Held-out pass@1 over all problems and per kind: {name: (steps, values)}, starting at
    step 0 with RUN_DIR/eval_before.json when the run wrote one. Empty: no evaluations."""
    names = {"eval/pass@1": "all"} | {k: k.rsplit("/", 1)[1] for r in rows for k in r
                                      if k.startswith("eval/pass@1/kind=")}
    before = {}
    before_file = os.path.join(run_dir, "eval_before.json")
    if os.path.exists(before_file):
        with open(before_file) as f:
            before = json.load(f)
    curves = {}
    for key, name in sorted(names.items(), key=lambda kv: kv[1]):
        points = [(r["step"], r[key]) for r in rows if key in r]
        if not points:
            continue
        if "pass@1" in before.get(name, {}):
            points.insert(0, (0, before[name]["pass@1"]))
        curves[name] = ([p[0] for p in points], [p[1] for p in points])
    return curves


def top_directions(x_np: np.ndarray, k: int = 2, oversample: int = 8, power_iters: int = 4, seed: int = 0):
    """Top-k principal directions of the rows of ``x_np`` (checkpoints x parameters), by a
    randomized range finder (Halko et al.): only n x (k+p) and (k+p) x P products are formed,
    never the P x P covariance. Returns (directions [k, P], projections [n, k], singular values)."""
    xc = x_np - x_np.mean(axis=0, keepdims=True)
    rng = np.random.default_rng(seed)
    y = xc @ rng.standard_normal((xc.shape[1], k + oversample)).astype(xc.dtype)
    for _ in range(power_iters):  # sharpen the spectrum: Y <- X X^T Y
        y = xc @ (xc.T @ np.linalg.qr(y)[0])
    q = np.linalg.qr(y)[0]
    _, s, vt = np.linalg.svd(q.T @ xc, full_matrices=False)
    directions = vt[:k]
    return directions, xc @ directions.T, s[:k]


def write_weight_report(run_dir: str) -> list[str]:
    """The Magistral authors' weight-trajectory analysis on a run's checkpoints."""
    import jax
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from magjax.checkpoint import Checkpointer
    from magjax.export import restore_params

    directory = next(d for d in (os.path.join(run_dir, "rl", "checkpoints"), os.path.join(run_dir, "checkpoints"))
                     if os.path.isdir(d))
    ckpt = Checkpointer(directory)
    steps = ckpt.steps()
    if len(steps) < 3:
        raise ValueError(f"{directory}: {len(steps)} checkpoints; the trajectory analysis needs at least 3")
    vectors = []
    for step in steps:
        _, params, _ = restore_params(ckpt, step)
        vectors.append(np.concatenate([np.asarray(x, np.float32).ravel() for x in jax.tree.leaves(params)]))
    ckpt.close()
    _, proj, _ = top_directions(np.stack(vectors))
    by_step = {r["step"]: r for r in read_metrics(run_dir)} if _has_metrics(run_dir) else {}
    reward = [by_step.get(s, {}).get("reward/mean", np.nan) for s in steps]
    length = [by_step.get(s, {}).get("rollout/length_mean", np.nan) for s in steps]
    out_dir = os.path.join(run_dir, "report")
    os.makedirs(out_dir, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].scatter(proj[:, 0], proj[:, 1], c=steps, cmap="viridis")
    axes[0].set(title="Checkpoints on the top two directions", xlabel="PC1", ylabel="PC2")
    axes[1].plot(proj[:, 0], reward, "o-")
    axes[1].set(title="Mean reward along PC1", xlabel="PC1")
    axes[2].plot(proj[:, 0], length, "o-")
    axes[2].set(title="Mean length along PC1", xlabel="PC1")
    fig.tight_layout()
    path = os.path.join(out_dir, "weights_pca.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    with open(os.path.join(out_dir, "weights_pca.json"), "w") as f:
        json.dump({"steps": steps, "projections": proj.tolist()}, f)
    return [path]


def _has_metrics(run_dir: str) -> bool:
    return any(os.path.exists(p) for p in (os.path.join(run_dir, "rl", "metrics.jsonl"),
                                          os.path.join(run_dir, "metrics.jsonl")))
