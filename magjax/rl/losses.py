"""The per-token losses: Magistral's clipped GRPO objective and SFT cross-entropy.

Every token carries a precomputed weight (see batching.py), so a loss is always
``sum(weight * per_token_term)``: summing over microbatches in any order, or packing
sequences differently, gives the same value and gradient.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

from magjax.models import decoder
from magjax.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """The objective (SPEC.md §1). Defaults are Magistral's."""

    kind: Literal["grpo", "sft"] = "grpo"
    eps_low: float = 0.2  # lower clip: rho >= 1 - eps_low
    eps_high: float = 0.28  # clip-higher (DAPO): rho <= 1 + eps_high
    # How advantages and token weights are made from scored groups is host-side work:
    # rl/batching.py's AdvantageConfig.
    kl_coef: float = 0.0  # k3 KL to a frozen reference (off in Magistral)
    entropy_coef: float = 0.0  # entropy bonus (off in Magistral)
    logprob_chunk: int = 256  # sequence chunk for the float32 log-softmax
    # The sampler's temperature: the trainer's log-probs are those of softmax(logits / T),
    # the distribution the tokens were drawn from. Set it with ``for_sampling``.
    temperature: float = 1.0
    # Decoupled old policy (off in Magistral, which takes the sampler's log-probs mu as
    # pi_old): pi_old is recomputed by the trainer with the parameters at the start of each
    # batch (train_step.recompute_old_logprobs), the clipped ratio is pi_theta / pi_old, and
    # mu only enters through the truncated importance weight min(pi_old / mu, truncation_cap).
    decoupled_old_policy: bool = False
    truncation_cap: float = 2.0
    # With the decoupled old policy: a sequence whose geometric-mean ratio
    # exp(mean over its completion tokens of log(pi_old / mu)) leaves [lo, hi] is left out
    # of the policy term. None = no sequence masking.
    sequence_mask: tuple[float, float] | None = None

    def __post_init__(self):
        if self.kind not in ("grpo", "sft"):
            raise ValueError(f"LossConfig.kind must be 'grpo' or 'sft', got {self.kind!r}")
        if not (0 <= self.eps_low < 1 and self.eps_high >= 0):
            raise ValueError(f"LossConfig: need 0 <= eps_low < 1 and eps_high >= 0, got {self.eps_low}, {self.eps_high}")
        if self.logprob_chunk < 1:
            raise ValueError("LossConfig.logprob_chunk must be positive")
        if not self.temperature > 0:
            raise ValueError(f"LossConfig.temperature must be positive, got {self.temperature}")
        if self.decoupled_old_policy and self.kind != "grpo":
            raise ValueError("LossConfig.decoupled_old_policy applies to kind='grpo' only")
        if not self.truncation_cap >= 1:
            raise ValueError(f"LossConfig.truncation_cap must be >= 1, got {self.truncation_cap}")
        if self.sequence_mask is not None:
            if not self.decoupled_old_policy:
                raise ValueError("LossConfig.sequence_mask needs decoupled_old_policy=True (without it pi_old is "
                                 "the sampler's and the ratio is 1)")
            if len(self.sequence_mask) != 2 or not 0 <= self.sequence_mask[0] <= 1 <= self.sequence_mask[1]:
                raise ValueError(f"LossConfig.sequence_mask must be (lo, hi) with 0 <= lo <= 1 <= hi, "
                                 f"got {self.sequence_mask}")


def check_sampling_for_training(sampling) -> None:
    """Refuses a SamplingConfig whose log-probs the trainer cannot reproduce.

    The trainer scores tokens under softmax(logits / T). Top-k and top-p renormalise over a
    truncated vocabulary that the trainer does not rebuild, so every ratio would be biased;
    greedy decoding (T = 0) samples nothing.
    """
    if sampling.top_k:
        raise ValueError(f"SamplingConfig.top_k={sampling.top_k}: RL training needs top_k=0 (the trainer's "
                         "log-probs are of the untruncated distribution)")
    if sampling.top_p < 1.0:
        raise ValueError(f"SamplingConfig.top_p={sampling.top_p}: RL training needs top_p=1.0 (the trainer's "
                         "log-probs are of the untruncated distribution)")
    if sampling.temperature <= 0:
        raise ValueError(f"SamplingConfig.temperature={sampling.temperature}: RL training needs a positive "
                         "temperature (greedy decoding gives a group no variance to learn from)")


def for_sampling(loss: LossConfig, sampling) -> LossConfig:
    """``loss`` with the trainer's temperature set to the sampler's, after refusing what the
    trainer cannot reproduce (``check_sampling_for_training``). SFT losses pass unchanged."""
    if loss.kind != "grpo":
        return loss
    check_sampling_for_training(sampling)
    if loss.temperature not in (1.0, sampling.temperature):  # 1.0: the default, left to follow the sampler
        raise ValueError(f"LossConfig.temperature={loss.temperature} differs from SamplingConfig.temperature="
                         f"{sampling.temperature}; leave LossConfig.temperature unset, it follows the sampler")
    return dataclasses.replace(loss, temperature=float(sampling.temperature))


def _chunk_size(t: int, chunk: int) -> int:
    c = min(chunk, t)
    while t % c:
        c -= 1
    return c


def token_logprobs(config: ModelConfig, params: dict, h_btd, targets_bt, chunk: int = 256,
                   temperature: float = 1.0):
    """log pi(target) and the entropy of pi at every position, both float32 [b, t], where
    pi = softmax(logits / temperature): the distribution the sampler draws from.

    Logits come out of the model in its compute dtype (bfloat16 on accelerators); each
    sequence chunk is upcast to float32 once, and the chunk is rematerialised in the
    backward pass, so a [tokens, vocab] float32 array never exists for the whole batch.
    """
    b, t, d = h_btd.shape
    c = _chunk_size(t, chunk)
    h_nbcd = h_btd.reshape(b, t // c, c, d).swapaxes(0, 1)
    targets_nbc = targets_bt.reshape(b, t // c, c).swapaxes(0, 1)

    def one_chunk(h_bcd, targets_bc):
        logits_bcv = decoder.unembed(config, params, h_bcd).astype(jnp.float32)
        if temperature != 1.0:  # scaled in float32 after the upcast, as the sampler does
            logits_bcv = logits_bcv / temperature
        lse_bc = jax.nn.logsumexp(logits_bcv, axis=-1)
        logp_bc = jnp.take_along_axis(logits_bcv, targets_bc[..., None], axis=-1)[..., 0] - lse_bc
        entropy_bc = lse_bc - jnp.sum(jax.nn.softmax(logits_bcv, axis=-1) * logits_bcv, axis=-1)
        return logp_bc, entropy_bc

    if t // c > 1:  # with one chunk there is nothing to save by recomputing
        one_chunk = jax.checkpoint(one_chunk)
    logp_nbc, entropy_nbc = jax.lax.map(lambda x: one_chunk(*x), (h_nbcd, targets_nbc))
    return logp_nbc.swapaxes(0, 1).reshape(b, t), entropy_nbc.swapaxes(0, 1).reshape(b, t)


def policy_objective(logp_bt, old_logp_bt, adv_bt, weight_bt, eps_low: float, eps_high: float,
                     scale_bt=None):
    """Magistral's clipped surrogate, as a loss to minimise, plus token statistics.

    rho = pi_theta / pi_old per token (pi_old as the sampler reported it, or as the trainer
    recomputed it with the decoupled objective); the term is
    min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A) and the loss is -sum(w * term), or
    -sum(w * scale * term) with a per-token ``scale`` (the decoupled objective's truncated
    importance weight and sequence mask, see mismatch.py).
    """
    ratio_bt = jnp.exp(logp_bt - old_logp_bt)
    clipped_bt = jnp.clip(ratio_bt, 1.0 - eps_low, 1.0 + eps_high)
    term_bt = jnp.minimum(ratio_bt * adv_bt, clipped_bt * adv_bt)
    loss = -jnp.sum(weight_bt * term_bt) if scale_bt is None else -jnp.sum(weight_bt * scale_bt * term_bt)
    mask_bt = (weight_bt > 0).astype(jnp.float32)
    log_ratio_bt = logp_bt - old_logp_bt
    stats = {
        "tokens": jnp.sum(mask_bt),
        "clip_low": jnp.sum(mask_bt * ((ratio_bt < 1.0 - eps_low) & (adv_bt < 0))),
        "clip_high": jnp.sum(mask_bt * ((ratio_bt > 1.0 + eps_high) & (adv_bt > 0))),
        "ratio_sum": jnp.sum(mask_bt * ratio_bt),
        "ratio_max": jnp.max(jnp.where(mask_bt > 0, ratio_bt, -jnp.inf)),
        # k3 estimate of KL(pi_old || pi_theta) over tokens sampled from pi_old.
        "kl_old_sum": jnp.sum(mask_bt * (jnp.exp(log_ratio_bt) - 1.0 - log_ratio_bt)),
        "logp_gap_sum": jnp.sum(mask_bt * jnp.abs(log_ratio_bt)),
    }
    return loss, stats


def k3_kl(logp_bt, ref_logp_bt):
    """Per-token k3 estimator of KL(pi_theta || pi_ref) (Schulman): r - log r - 1, r = pi_ref/pi_theta."""
    log_r = ref_logp_bt - logp_bt
    return jnp.exp(log_r) - log_r - 1.0
