"""Metrics: one writer fanning out to RUN_DIR/metrics.jsonl, TensorBoard and the console.

``metrics.jsonl`` always gets one JSON object per step, with its ``step``. TensorBoard
event files are written through tensorboardX when it is installed. The console shows a
progress line per step (RL: step, reward, accuracy, length, tokens/s, lag, ETA; supervised
steps: loss, gradient norm, learning rate, ETA); on a terminal it
rewrites one line, elsewhere it prints plain lines. Names are grouped: ``reward/…``,
``train/…``, ``rollout/…``, ``pipeline/…``, ``verifier/…``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import numpy as np


def _plain(value):
    if isinstance(value, (np.generic, np.ndarray)) or hasattr(value, "dtype"):
        value = np.asarray(value).item() if np.asarray(value).size == 1 else np.asarray(value).tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsWriter:
    def __init__(self, run_dir: str | None, *, total_steps: int | None = None, console: bool = True,
                 tensorboard: bool = True, stream=None):
        self.run_dir, self.total_steps, self.console = run_dir, total_steps, console
        self.stream = stream or sys.stdout
        self._jsonl = None
        self._tb = None
        self._start = time.perf_counter()
        self.history: list[dict] = []
        if run_dir:
            os.makedirs(run_dir, exist_ok=True)
            self._jsonl = open(os.path.join(run_dir, "metrics.jsonl"), "a", encoding="utf-8")
            if tensorboard:
                try:
                    from tensorboardX import SummaryWriter

                    self._tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))
                except ImportError:
                    self._tb = None

    def write(self, step: int, metrics: dict):
        record = {"step": int(step), "time": time.time()} | {k: _plain(v) for k, v in metrics.items()}
        self.history.append(record)
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        if self._tb is not None:
            for k, v in record.items():
                if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self.console:
            self._progress(step, record)

    def _progress(self, step: int, r: dict):
        elapsed = time.perf_counter() - self._start
        eta = ""
        if self.total_steps:
            eta = f" eta {max(self.total_steps - step, 0) * elapsed / max(step, 1):.0f}s"
        line = f"step {step}{'/' + str(self.total_steps) if self.total_steps else ''}"
        if "reward/mean" in r:  # an RL step: what its rollouts earned
            line += (f"  reward {r['reward/mean']:.3f}  acc {r.get('reward/accuracy', float('nan')):.3f}"
                     f"  len {r.get('rollout/length_mean', float('nan')):.0f}"
                     f"  tok/s {r.get('rollout/tokens_per_s', 0):.0f}  lag {r.get('pipeline/lag_tokens_mean', 0):.2f}")
        else:  # a supervised step (the SFT cold start): no rollouts, its loss
            line += (f"  loss {r.get('train/loss', float('nan')):.4f}  grad norm {r.get('train/grad_norm', float('nan')):.3f}"
                     f"  lr {r.get('train/learning_rate', float('nan')):.2e}")
        line += eta
        if self.stream.isatty():
            self.stream.write("\r" + line.ljust(100))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self):
        if self.console and self.stream.isatty():
            self.stream.write("\n")
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
