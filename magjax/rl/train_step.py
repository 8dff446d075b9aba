"""The train step: one jitted, sharded, donated function shared by GRPO and SFT.

``make_train_step`` returns ``step(state, batch) -> (state, metrics)``. Inside, a
``lax.scan`` accumulates float32 gradients over the batch's microbatches; since every token
carries its final loss weight, the sum is the minibatch gradient whatever the split. A
non-finite loss or gradient keeps the old parameters and optimizer state and increments
``state.skipped``: never silently applied.

With the decoupled objective (``LossConfig.decoupled_old_policy``) each batch first passes
through ``make_logprob_step``'s forward-only function, under the parameters at the batch's
start (``recompute_old_logprobs``), which fills the batch's pi_old.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from magjax import distributed, sharding as shd
from magjax.models import decoder
from magjax.models.config import ModelConfig
from magjax.rl import mismatch
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
    """The initial state; optimizer moments take the shardings of the parameters they shadow
    (see ``init_state_fn``)."""
    return init_state_fn(optimizer, params, with_ref=ref_params is not None)(params, ref_params)


def init_state_fn(optimizer: optax.GradientTransformation, params, *, with_ref: bool = False):
    """The jitted ``init(params, ref_params) -> TrainState`` for parameters like ``params``
    (arrays or ``jax.ShapeDtypeStruct``s: their shapes, dtypes and shardings).

    Where the parameters lie on one mesh (NamedShardings), the state leaves it with every
    parameter-shaped optimizer leaf (AdamW's two moments) sharded as its parameter and the
    counters replicated. Left to XLA, a jit with no output shardings replicates the moments:
    a 24B model's 2 x 44 GiB on every chip.
    """
    def init(params, ref_params):
        return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), jnp.zeros((), jnp.int32),
                          ref_params)

    out_shardings = init_state_shardings(optimizer, params, with_ref=with_ref)
    return jax.jit(init) if out_shardings is None else jax.jit(init, out_shardings=out_shardings)


def init_state_shardings(optimizer: optax.GradientTransformation, params, *, with_ref: bool = False):
    """The TrainState of shardings ``init_state_fn`` gives its output, or None where the
    parameters are not all laid out on one mesh."""
    param_shardings = jax.tree.map(lambda x: getattr(x, "sharding", None), params)
    leaves = jax.tree.leaves(param_shardings)
    if (len(leaves) != len(jax.tree.leaves(params))
            or not all(isinstance(s, NamedSharding) and s.mesh == leaves[0].mesh for s in leaves)):
        return None
    replicated = NamedSharding(leaves[0].mesh, PartitionSpec())
    opt_shapes = jax.eval_shape(optimizer.init, params)
    opt_shardings = optax.tree_map_params(optimizer, lambda _, sharding: sharding, opt_shapes, param_shardings,
                                          transform_non_params=lambda _: replicated)
    return TrainState(replicated, param_shardings, opt_shardings, replicated, param_shardings if with_ref else None)


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
    # Leaves already placed (a batch whose pi_old was recomputed) stay as they are.
    return jax.tree.map(lambda x: x if isinstance(x, jax.Array) else distributed.global_array(x, sharding), batch)


def microbatch_loss(model_config: ModelConfig, loss_config: LossConfig, params, mb: TrainBatch,
                    ref_params=None, mesh=None):
    """The weighted loss of one microbatch [b, t] and its token statistics (sums)."""
    hidden = functools.partial(decoder.hidden_states, model_config, mesh=mesh)
    h_btd = hidden(params, mb.tokens_mbt, mb.positions_mbt, mb.segment_ids_mbt)
    logp_bt, entropy_bt = token_logprobs(model_config, params, h_btd, mb.targets_mbt, loss_config.logprob_chunk,
                                         loss_config.temperature)
    w_bt = mb.weights_mbt
    mask_bt = (w_bt > 0).astype(jnp.float32)
    if loss_config.kind == "sft":
        loss = -jnp.sum(w_bt * logp_bt)
        stats = {"tokens": jnp.sum(mask_bt)}
    elif loss_config.decoupled_old_policy:
        # pi_old is the trainer's (recomputed at the batch's start); the sampler's mu only
        # weighs tokens (truncated importance sampling) and masks sequences.
        fix = mismatch.correction(mb.trainer_old_logprobs_mbt, mb.old_logprobs_mbt, mask_bt, mb.segment_ids_mbt,
                                  loss_config.truncation_cap, loss_config.sequence_mask)
        loss, stats = policy_objective(logp_bt, mb.trainer_old_logprobs_mbt, mb.advantages_mbt, w_bt,
                                       loss_config.eps_low, loss_config.eps_high, fix.scale_bt)
        stats |= fix.stats | mismatch.gap_stats(mb.trainer_old_logprobs_mbt, mb.old_logprobs_mbt, mask_bt)
    else:
        loss, stats = policy_objective(logp_bt, mb.old_logprobs_mbt, mb.advantages_mbt, w_bt,
                                       loss_config.eps_low, loss_config.eps_high)
        # The trainer's side of the sampler-trainer gap: pi_theta (at a batch's first step,
        # the parameters the decoupled objective would take as pi_old).
        stats |= mismatch.gap_stats(logp_bt, mb.old_logprobs_mbt, mask_bt)
    if loss_config.kl_coef > 0:
        ref_h = hidden(ref_params, mb.tokens_mbt, mb.positions_mbt, mb.segment_ids_mbt)
        ref_logp_bt, _ = token_logprobs(model_config, ref_params, ref_h, mb.targets_mbt, loss_config.logprob_chunk,
                                        loss_config.temperature)
        kl_bt = k3_kl(logp_bt, jax.lax.stop_gradient(ref_logp_bt))
        loss = loss + loss_config.kl_coef * jnp.sum(w_bt * kl_bt)
        stats["kl_ref_sum"] = jnp.sum(mask_bt * kl_bt)
    if loss_config.entropy_coef > 0:
        loss = loss - loss_config.entropy_coef * jnp.sum(w_bt * entropy_bt)
    stats["entropy_sum"] = jnp.sum(mask_bt * jax.lax.stop_gradient(entropy_bt))
    stats["logp_sum"] = jnp.sum(mask_bt * jax.lax.stop_gradient(logp_bt))
    return loss, stats


def accumulate_gradients(model_config: ModelConfig, loss_config: LossConfig, params, batch: TrainBatch,
                         ref_params=None, mesh=None):
    """Loss, float32 gradient and summed statistics over all microbatches of ``batch``."""
    grad_fn = jax.value_and_grad(
        functools.partial(microbatch_loss, model_config, loss_config, mesh=mesh),
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
    # Sampler vs trainer (mismatch.py): the trainer's side is pi_old with the decoupled
    # objective, else pi_theta; with the decoupled objective the ratio metrics above are
    # pi_theta / pi_old (the trainer's), not to the sampler.
    if "sampler_gap_sum" in stats:
        m |= {"mismatch/logprob_gap": stats["sampler_gap_sum"] / tokens,
              "mismatch/kl": stats["sampler_kl_sum"] / tokens}
    if "truncated" in stats:
        m |= {"mismatch/truncated_fraction": stats["truncated"] / tokens,
              "mismatch/importance_weight_mean": stats["is_weight_sum"] / tokens}
    if "seqs" in stats:
        m["mismatch/masked_sequence_fraction"] = stats["seqs_masked"] / jnp.maximum(stats["seqs"], 1.0)
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
    def step(state: TrainState, batch: TrainBatch):
        wrapped.traces += 1
        loss, grads, stats = accumulate_gradients(model_config, loss_config, state.params, batch,
                                                  state.ref_params, mesh)
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
        if loss_config.decoupled_old_policy and batch.trainer_old_logprobs_mbt is None:
            raise ValueError("LossConfig.decoupled_old_policy: the batch has no trainer_old_logprobs_mbt; call "
                             "train_step.recompute_old_logprobs before the batch's first step")
        return jitted(state, batch)

    wrapped.traces = 0
    wrapped.jitted = jitted
    return wrapped


def make_logprob_step(model_config: ModelConfig, loss_config: LossConfig, *, mesh=None, param_shardings=None):
    """Returns the jitted ``logprobs(params, batch) -> [m, b, t]`` float32: the trainer's
    log-probability of every target, forward only, microbatch by microbatch, at the loss's
    temperature (the decoupled objective's pi_old). Positions without loss weight keep the
    batch's ``old_logprobs`` there, so pi_old / mu is exactly 1 outside completions.

    With a mesh, ``param_shardings`` (e.g. ``state_shardings(state).params``) fixes the
    parameters' layout; the batch and the result are split like the train step's batches.
    """
    if mesh is not None and param_shardings is None:
        raise ValueError("make_logprob_step with a mesh needs param_shardings (state_shardings(state).params)")
    def logprobs(params, batch: TrainBatch):
        def one(mb: TrainBatch):
            h_btd = decoder.hidden_states(model_config, params, mb.tokens_mbt, mb.positions_mbt, mb.segment_ids_mbt, mesh=mesh)
            logp_bt, _ = token_logprobs(model_config, params, h_btd, mb.targets_mbt, loss_config.logprob_chunk,
                                        loss_config.temperature)
            return jnp.where(mb.weights_mbt > 0, logp_bt, mb.old_logprobs_mbt)

        return jax.lax.map(one, dataclasses.replace(batch, trainer_old_logprobs_mbt=None))

    if mesh is None:
        return jax.jit(logprobs)
    return jax.jit(logprobs, in_shardings=(param_shardings, batch_sharding(mesh)), out_shardings=batch_sharding(mesh))


def recompute_old_logprobs(logprob_step, params, batches: list[TrainBatch]) -> list[TrainBatch]:
    """The batches with ``trainer_old_logprobs_mbt`` filled by ``logprob_step`` (see
    ``make_logprob_step``) under ``params``: call it with the parameters at the start of a
    batch, before its first optimizer step (the step donates them)."""
    return [dataclasses.replace(b, trainer_old_logprobs_mbt=logprob_step(params, b)) for b in batches]
