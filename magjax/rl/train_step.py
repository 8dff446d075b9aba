"""The train step: one jitted, sharded, donated function shared by GRPO and SFT.

``make_train_step`` returns ``step(state, batch) -> (state, metrics)``. Inside, a
``lax.scan`` accumulates float32 gradients over the batch's microbatches; since every token
carries its final loss weight, the sum is the minibatch gradient whatever the split. A
non-finite loss or gradient keeps the old parameters and optimizer state and increments
``state.skipped``: never silently applied.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from magjax import distributed, sharding as shd
from magjax.kernels import causal_attention
from magjax.models import decoder
from magjax.models.config import ModelConfig
from magjax.rl.losses import LossConfig, k3_kl, policy_objective, token_logprobs
from magjax.types import TrainBatch


@dataclasses.dataclass
class TrainState:
    step: jax.Array  # train_step calls so far (applied or skipped)
    params: dict
    opt_state: optax.OptState
    skipped: jax.Array  # steps whose update was dropped for a non-finite loss/gradient
    ref_params: dict | None = None  # frozen reference policy, only when kl_coef > 0


jax.tree_util.register_dataclass(
    TrainState, data_fields=["step", "params", "opt_state", "skipped", "ref_params"], meta_fields=[])


def init_state(params: dict, optimizer: optax.GradientTransformation, ref_params: dict | None = None) -> TrainState:
    """The initial state; optimizer moments inherit the parameters' shardings."""
    @jax.jit
    def init(params, ref_params):
        return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), jnp.zeros((), jnp.int32),
                          ref_params)
    return init(params, ref_params)


def state_shardings(state: TrainState):
    return jax.tree.map(lambda x: x.sharding, state)


def batch_sharding(mesh) -> NamedSharding:
    """Microbatches [m, b, t]: rows split over the data-parallel axes."""
    return NamedSharding(mesh, shd.logical_to_spec((shd.MICROBATCH, shd.BATCH, shd.SEQUENCE), None, mesh))


def place_batch(batch: TrainBatch, mesh) -> TrainBatch:
    """The host batch, ready for the step. Across processes every process holds the same
    host batch (see distributed.py), placed here as one global array; on one process the
    jit's in_shardings place it."""
    if mesh is None or jax.process_count() == 1:
        return batch
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: distributed.global_array(x, sharding), batch)


def microbatch_loss(model_config: ModelConfig, loss_config: LossConfig, params, mb: TrainBatch,
                    ref_params=None, mesh=None, native_attention: bool = False):
    """The weighted loss of one microbatch [b, t] and its token statistics (sums)."""
    hidden = functools.partial(decoder.hidden_states, model_config, mesh=mesh, native_attention=native_attention)
    h_btd = hidden(params, mb.tokens_mbt, mb.positions_mbt, mb.segment_ids_mbt)
    logp_bt, entropy_bt = token_logprobs(model_config, params, h_btd, mb.targets_mbt, loss_config.logprob_chunk)
    w_bt = mb.weights_mbt
    mask_bt = (w_bt > 0).astype(jnp.float32)
    if loss_config.kind == "sft":
        loss = -jnp.sum(w_bt * logp_bt)
        stats = {"tokens": jnp.sum(mask_bt)}
    else:
        loss, stats = policy_objective(logp_bt, mb.old_logprobs_mbt, mb.advantages_mbt, w_bt,
                                       loss_config.eps_low, loss_config.eps_high)
    if loss_config.kl_coef > 0:
        ref_h = hidden(ref_params, mb.tokens_mbt, mb.positions_mbt, mb.segment_ids_mbt)
        ref_logp_bt, _ = token_logprobs(model_config, ref_params, ref_h, mb.targets_mbt, loss_config.logprob_chunk)
        kl_bt = k3_kl(logp_bt, jax.lax.stop_gradient(ref_logp_bt))
        loss = loss + loss_config.kl_coef * jnp.sum(w_bt * kl_bt)
        stats["kl_ref_sum"] = jnp.sum(mask_bt * kl_bt)
    if loss_config.entropy_coef > 0:
        loss = loss - loss_config.entropy_coef * jnp.sum(w_bt * entropy_bt)
    stats["entropy_sum"] = jnp.sum(mask_bt * jax.lax.stop_gradient(entropy_bt))
    stats["logp_sum"] = jnp.sum(mask_bt * jax.lax.stop_gradient(logp_bt))
    return loss, stats


def accumulate_gradients(model_config: ModelConfig, loss_config: LossConfig, params, batch: TrainBatch,
                         ref_params=None, mesh=None, native_attention: bool = False):
    """Loss, float32 gradient and summed statistics over all microbatches of ``batch``."""
    grad_fn = jax.value_and_grad(
        functools.partial(microbatch_loss, model_config, loss_config, mesh=mesh, native_attention=native_attention),
        has_aux=True)

    def body(carry, mb):
        loss_acc, grads_acc, stats_acc = carry
        (loss, stats), grads = grad_fn(params, mb, ref_params)
        grads_acc = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grads_acc, grads)
        stats_acc = {k: (jnp.maximum if k == "ratio_max" else jnp.add)(stats_acc[k], v) for k, v in stats.items()}
        return (loss_acc + loss, grads_acc, stats_acc), None

    zero_grads = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    first = jax.tree.map(lambda x: x[0], batch)
    stats_shape = jax.eval_shape(lambda: grad_fn(params, first, ref_params)[0][1])
    zero_stats = {k: jnp.full(v.shape, -jnp.inf if k == "ratio_max" else 0.0, v.dtype)
                  for k, v in stats_shape.items()}
    (loss, grads, stats), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zero_grads, zero_stats), batch)
    return loss, grads, stats


def _metrics(loss, grads, stats, lr, applied) -> dict:
    tokens = jnp.maximum(stats["tokens"], 1.0)
    m = {"train/loss": loss, "train/grad_norm": optax.tree.norm(grads), "train/learning_rate": lr,
         "train/tokens": stats["tokens"], "train/entropy": stats["entropy_sum"] / tokens,
         "train/logprob": stats["logp_sum"] / tokens, "train/applied": applied.astype(jnp.int32)}
    if "ratio_sum" in stats:
        m |= {"train/clip_low_fraction": stats["clip_low"] / tokens,
              "train/clip_high_fraction": stats["clip_high"] / tokens,
              "train/ratio_mean": stats["ratio_sum"] / tokens, "train/ratio_max": stats["ratio_max"],
              "train/kl_to_sampler": stats["kl_old_sum"] / tokens,
              "pipeline/logprob_gap": stats["logp_gap_sum"] / tokens}
    if "kl_ref_sum" in stats:
        m["train/kl_to_reference"] = stats["kl_ref_sum"] / tokens
    return m


def make_train_step(model_config: ModelConfig, loss_config: LossConfig, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, *, mesh=None, shardings: TrainState | None = None):
    """Returns the jitted ``step(state, batch) -> (state, metrics)``; ``state`` is donated.

    With a mesh, ``shardings`` (see ``state_shardings``) fixes the state's layout on the
    way in and out, and batches are split over the data-parallel axes. ``step.traces``
    counts how often it was traced (tests check it stays 1).
    """
    if loss_config.kl_coef > 0 and shardings is not None and shardings.ref_params is None:
        raise ValueError("kl_coef > 0 needs a TrainState with ref_params")
    # On one CPU device attention runs in magjax's native kernel (forward and backward);
    # sharded and accelerator steps keep XLA's.
    native_attention = causal_attention.applies(model_config, mesh)

    def step(state: TrainState, batch: TrainBatch):
        wrapped.traces += 1
        loss, grads, stats = accumulate_gradients(model_config, loss_config, state.params, batch,
                                                  state.ref_params, mesh, native_attention)
        finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))

        def update(params, opt_state):
            updates, new_opt = optimizer.update(grads, opt_state, params)
            # The state keeps its dtypes (bfloat16 weights and moments take float32 updates).
            same_dtypes = lambda new, old: jax.tree.map(lambda n, o: n.astype(o.dtype), new, old)  # noqa: E731
            return same_dtypes(optax.apply_updates(params, updates), params), same_dtypes(new_opt, opt_state)

        # A branch, not a select between old and new: a select needs the old parameters and
        # moments alive beside the new ones, so XLA copies every donated buffer first.
        new_params, new_opt = jax.lax.cond(finite, update, lambda params, opt_state: (params, opt_state),
                                           state.params, state.opt_state)
        new_state = TrainState(state.step + 1, new_params, new_opt, state.skipped + (~finite).astype(jnp.int32),
                               state.ref_params)
        lr = schedule(state.step - state.skipped)
        return new_state, _metrics(loss, grads, stats, lr, finite)

    if mesh is None:
        jitted = jax.jit(step, donate_argnums=0)
    else:
        replicated = NamedSharding(mesh, PartitionSpec())
        jitted = jax.jit(step, in_shardings=(shardings, batch_sharding(mesh)),
                         out_shardings=(shardings, replicated), donate_argnums=0)

    def wrapped(state, batch):
        return jitted(state, batch)

    wrapped.traces = 0
    wrapped.jitted = jitted
    wrapped.native_attention = native_attention
    return wrapped
