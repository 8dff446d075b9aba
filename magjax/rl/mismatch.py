"""Sampler/trainer mismatch: the correction of the decoupled objective and its measurements.

The sampler's log-probs (mu) and the trainer's (pi_old, recomputed with the parameters at
the start of the batch) differ by numerics (bfloat16, other kernels, other reduction
orders) and by staleness (tokens sampled by earlier policy versions). With the decoupled
objective the clipped ratio is taken against pi_old, and mu only enters through a
per-token importance weight ``min(pi_old / mu, C)`` (truncated importance sampling) and,
optionally, a per-sequence mask that drops a sequence whose geometric-mean ratio
``exp(mean log(pi_old / mu))`` over its completion tokens leaves ``[lo, hi]``.

Rows are packed: a row holds several sequences, told apart by ``segment_ids`` (0 =
padding). Per-sequence means are segment sums over (row, segment) pairs, so memory stays
``[b * (t + 1)]`` whatever the packing.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass
class Correction:
    scale_bt: jax.Array  # per-token factor on the policy term: importance weight x sequence mask
    stats: dict  # sums over the microbatch (see train_step._metrics)


jax.tree_util.register_dataclass(Correction, data_fields=["scale_bt", "stats"], meta_fields=[])


def _log_ratio(old_logp_bt, sampler_logp_bt, mask_bt):
    """log(pi_old / mu) on completion tokens, 0 elsewhere (prompt and padding positions hold
    no sampler log-prob, and exp of whatever is there must not overflow into the loss)."""
    return jnp.where(mask_bt > 0, old_logp_bt - sampler_logp_bt, 0.0)


def sequence_sums(values_bt, mask_bt, segment_ids_bt):
    """Per sequence of a packed microbatch, a (row, segment) pair: the sum of ``values`` over
    its ``mask``ed tokens and the number of those tokens, both [b * (t + 1)]; and each
    token's index into them, [b, t]."""
    b, t = segment_ids_bt.shape
    # Segment ids within a row are at most t (each sequence takes at least one position).
    seq_bt = segment_ids_bt + (t + 1) * jnp.arange(b, dtype=segment_ids_bt.dtype)[:, None]
    flat = seq_bt.reshape(-1)
    sums_s = jax.ops.segment_sum((values_bt * mask_bt).reshape(-1), flat, num_segments=b * (t + 1))
    counts_s = jax.ops.segment_sum(mask_bt.reshape(-1), flat, num_segments=b * (t + 1))
    return sums_s, counts_s, seq_bt


def correction(old_logp_bt, sampler_logp_bt, mask_bt, segment_ids_bt, cap: float,
               bounds: tuple[float, float] | None) -> Correction:
    """The decoupled objective's per-token factor (no gradient flows through it) and counts.

    ``mask_bt`` marks the completion tokens (loss weight > 0). Returns the factor
    ``min(pi_old / mu, cap) * keep`` where ``keep`` is 0 for every token of a sequence whose
    geometric-mean ratio is outside ``bounds`` (when given).
    """
    log_ratio_bt = jax.lax.stop_gradient(_log_ratio(old_logp_bt, sampler_logp_bt, mask_bt))
    ratio_bt = jnp.exp(log_ratio_bt)
    weight_bt = jnp.minimum(ratio_bt, cap)
    stats = {"truncated": jnp.sum(mask_bt * (ratio_bt > cap)), "is_weight_sum": jnp.sum(mask_bt * weight_bt)}
    if bounds is None:
        return Correction(weight_bt, stats)
    sums_s, counts_s, seq_bt = sequence_sums(log_ratio_bt, mask_bt, segment_ids_bt)
    mean_s = sums_s / jnp.maximum(counts_s, 1.0)
    lo, hi = bounds
    # Compared in log space: exp(mean) can overflow where the mean itself is fine.
    keep_s = (mean_s >= jnp.log(lo)) & (mean_s <= jnp.log(hi))
    present_s = counts_s > 0  # sequences with completion tokens (not padding, not empty)
    stats |= {"seqs": jnp.sum(present_s.astype(jnp.float32)),
              "seqs_masked": jnp.sum((present_s & ~keep_s).astype(jnp.float32))}
    return Correction(weight_bt * keep_s[seq_bt].astype(jnp.float32), stats)


def gap_stats(trainer_logp_bt, sampler_logp_bt, mask_bt) -> dict:
    """Sums of |log pi - log mu| and of the k3 estimate of KL(mu || pi) over completion
    tokens (drawn from mu): r - 1 - log r with r = pi / mu."""
    log_r_bt = jax.lax.stop_gradient(_log_ratio(trainer_logp_bt, sampler_logp_bt, mask_bt))
    return {"sampler_gap_sum": jnp.sum(mask_bt * jnp.abs(log_r_bt)),
            "sampler_kl_sum": jnp.sum(mask_bt * (jnp.exp(log_r_bt) - 1.0 - log_r_bt))}
