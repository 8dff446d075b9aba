"""Advantages and the zero-variance group filter (SPEC.md §1). Pure NumPy, host side.

Every function maps rewards ``[n, G]`` (n groups of G samples) to advantages ``[n, G]``.
"""

from __future__ import annotations

import numpy as np

MODES = ("magistral", "grpo", "dr_grpo", "rloo")


def group_centered(rewards_nG: np.ndarray) -> np.ndarray:
    """A_i = r_i - mean_j r_j within each group (Dr. GRPO; Magistral's first stage)."""
    r = np.asarray(rewards_nG, np.float64)
    return r - r.mean(axis=1, keepdims=True)


def group_normalized(rewards_nG: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Classic GRPO (DeepSeekMath): (r_i - mean) / (std + eps), population std per group."""
    r = np.asarray(rewards_nG, np.float64)
    return group_centered(r) / (r.std(axis=1, keepdims=True) + eps)


def leave_one_out(rewards_nG: np.ndarray) -> np.ndarray:
    """RLOO: r_i minus the mean of the other G-1 rewards, = G/(G-1) * (r_i - mean)."""
    r = np.asarray(rewards_nG, np.float64)
    g = r.shape[1]
    if g < 2:
        raise ValueError("RLOO needs at least 2 samples per group")
    return (r * g - r.sum(axis=1, keepdims=True)) / (g - 1)


def minibatch_normalized(adv_nG: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Magistral's second stage: normalise over every sequence of the minibatch,
    A <- (A - mean) / (std + eps), population std."""
    a = np.asarray(adv_nG, np.float64)
    return (a - a.mean()) / (a.std() + eps)


def advantages(rewards_nG: np.ndarray, mode: str = "magistral", eps: float = 1e-6) -> np.ndarray:
    """Advantages for one minibatch of (already filtered) groups, by named mode."""
    if mode == "magistral":
        return minibatch_normalized(group_centered(rewards_nG), eps)
    if mode == "grpo":
        return group_normalized(rewards_nG, eps)
    if mode == "dr_grpo":
        return group_centered(rewards_nG)
    if mode == "rloo":
        return leave_one_out(rewards_nG)
    raise ValueError(f"unknown advantage mode {mode!r}; known: {MODES}")


def zero_variance_groups(rewards_nG: np.ndarray, correct_nG: np.ndarray | None = None,
                         on: str = "reward") -> np.ndarray:
    """A boolean mask [n] of groups carrying no signal, to be removed (not zeroed).

    ``on="reward"`` compares the full shaped reward; ``on="correct"`` compares correctness
    only (a group all-correct but differing in length penalty is then removed too).
    """
    if on == "reward":
        r = np.asarray(rewards_nG, np.float64)
    elif on == "correct":
        if correct_nG is None:
            raise ValueError("filtering on correctness needs the correctness array")
        r = np.asarray(correct_nG, np.float64)
    else:
        raise ValueError(f"filter_on must be 'reward' or 'correct', got {on!r}")
    return np.all(r == r[:, :1], axis=1)
