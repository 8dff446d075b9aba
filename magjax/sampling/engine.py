"""Jitted prefill and decode over an explicit slot KV cache.

The cache is a pytree passed in and returned (donated), never hidden state: slot ``b``
holds one sequence, ``lengths_b`` tokens of it in the cache and ``last_token_b`` sampled
but not yet fed. It holds one array per layer, and the weights come in as ``prepare``
lays them out (one dict per layer, once per weight version): a decode step is bound by
memory traffic and kernel count, and slicing a stacked layer axis copies on every step.
``prefill`` runs one prompt (padded to a length bucket) once and copies its keys and
values into the G slots of its samples; ``decode`` advances every active slot
by up to ``chunk_steps`` tokens inside one compiled loop. Params are arguments: handing
the next chunk new weights is the whole in-flight weight update; entries already in the
cache stay as they were.

Randomness is a function of (seed, request uid, sample index, position) only, so a
sequence's tokens do not depend on its slot, its batch-mates or the chunking. The
sampling settings (temperature, top-p, top-k, seed) are per slot, set by each prompt's
prefill: values in the state, not constants of the compiled programs, so one engine
serves requests sampled differently (evaluation's math and code, greedy checks beside
sampled ones) without compiling again. Sampling
draws one uniform per token and inverts the CDF (in two levels: blocks, then within the
block): far cheaper on CPU than a Gumbel draw over the whole vocabulary, and exactly as
random.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from magjax import backends, sharding as shd
from magjax.models import decoder
from magjax.models.config import ModelConfig

RUNNING, EOS, LENGTH = 0, 1, 2  # finish codes on the device


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0  # nucleus sampling; 1 = off
    top_k: int = 0  # 0 = off
    seed: int = 0

    def __post_init__(self):
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError(f"SamplingConfig: need temperature >= 0, 0 < top_p <= 1, top_k >= 0; got {self}")
        if not 0 <= self.seed < 2**31:  # a slot holds it as an int32
            raise ValueError(f"SamplingConfig.seed must be in [0, 2**31), got {self.seed}")

    def values(self) -> tuple:
        """The settings as the compiled prefill takes them (one request's): temperature,
        top-p, top-k, seed."""
        return (np.float32(self.temperature), np.float32(self.top_p), np.int32(self.top_k), np.int32(self.seed))


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    slots: int = 16  # sequences decoded together (a multiple of the data-parallel size)
    max_len: int = 512  # cache positions per slot: prompt + completion
    prompt_buckets: tuple[int, ...] = (32, 64, 128, 256)  # prompts are padded up to one of these
    chunk_steps: int = 16  # decode steps per compiled call (weights can change between calls)
    # The paged cache: positions per page (0: no pages, every slot owns max_len positions)
    # and pages in the pool, all layers alike (0: enough for every slot at max_len).
    page_size: int = 0
    pages: int = 0

    def __post_init__(self):
        if self.slots < 1 or self.chunk_steps < 1:
            raise ValueError(f"EngineConfig: slots and chunk_steps must be positive, got {self}")
        if list(self.prompt_buckets) != sorted(self.prompt_buckets) or self.prompt_buckets[-1] >= self.max_len:
            raise ValueError(f"EngineConfig.prompt_buckets must be increasing and below max_len: {self}")
        if self.page_size < 0 or self.pages < 0 or (self.pages and not self.page_size):
            raise ValueError(f"EngineConfig: pages needs a positive page_size (and neither may be negative): {self}")

    @property
    def paged(self) -> bool:
        return self.page_size > 0

    @property
    def pages_per_slot(self) -> int:
        return -(-self.max_len // self.page_size)

    @property
    def pool_pages(self) -> int:
        """Pages in the pool: ``pages``, or every slot's worst case."""
        return self.pages or self.slots * self.pages_per_slot


@dataclasses.dataclass
class DecodeState:
    """Everything the device knows about the slots. Arrays only (a pytree)."""

    # One cache array per layer, not one stacked array: a layer then reads and updates
    # its own buffer in place, where slicing a stacked cache copies it every step. The
    # layout is the backend's (``backends.sampler(...).cache``): on CPUs keys [slots,
    # kv_heads, head_dim, max_len] and values [slots, kv_heads, max_len, head_dim], on
    # accelerators both [slots, kv_heads, max_len, head_dim] (head dim minor).
    k_cache: tuple[jax.Array, ...]
    v_cache: tuple[jax.Array, ...]
    lengths_b: jax.Array  # tokens in the cache = position of last_token
    last_token_b: jax.Array  # sampled, not yet fed
    active_b: jax.Array  # bool: still generating
    generated_b: jax.Array  # completion tokens so far (last_token included)
    max_new_b: jax.Array  # per-slot completion budget
    uid_b: jax.Array  # request uid and sample index: the random stream's identity
    sample_b: jax.Array
    finish_b: jax.Array  # RUNNING | EOS | LENGTH
    # Each slot's request's sampling settings (SamplingConfig): temperature (0 = greedy),
    # top-p (1 = off), top-k (0 = off), seed.
    temperature_b: jax.Array
    top_p_b: jax.Array
    top_k_b: jax.Array
    seed_b: jax.Array


jax.tree_util.register_dataclass(DecodeState, data_fields=[f.name for f in dataclasses.fields(DecodeState)],
                                 meta_fields=[])


@dataclasses.dataclass
class ChunkOutput:
    """What one decode call produced: step k's token for slot b, its log-prob, validity."""

    tokens_kb: np.ndarray
    logprobs_kb: np.ndarray
    valid_kb: np.ndarray
    finish_b: np.ndarray
    steps: int  # steps actually run (the loop stops early when every slot is done)


def token_key(seed, uid_b, sample_b, position_b):
    """The random key of one token: the seed's (per row, or one for all), folding in
    request uid, sample index, then position."""
    fold = lambda seed, u, s, p: jax.random.fold_in(  # noqa: E731
        jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), u), s), p)
    return jax.vmap(fold)(jnp.broadcast_to(jnp.asarray(seed, jnp.int32), jnp.shape(uid_b)), uid_b, sample_b, position_b)


def sample_tokens(logits_bv, keys_b, temperature=1.0, top_p=1.0, top_k=0):
    """(token_b, logprob_b) drawn from each row's distribution, and its log-prob under it:
    argmax where the temperature is 0 (top-p and top-k then ignored), else the softmax at
    that temperature, cut to the top-k tokens (0: no cut) and then to the smallest prefix
    whose mass reaches top-p (1: no cut). Each setting is per row or one for all rows, and
    may be a traced value."""
    logits_bv = logits_bv.astype(jnp.float32)
    b, v = logits_bv.shape
    temperature_b, top_p_b, top_k_b = (jnp.broadcast_to(jnp.asarray(x, dtype), (b,)) for x, dtype in
                                       ((temperature, jnp.float32), (top_p, jnp.float32), (top_k, jnp.int32)))
    greedy_b = temperature_b == 0
    logits_bv = logits_bv / jnp.where(greedy_b, 1.0, temperature_b)[:, None]
    top_k_b = jnp.where(greedy_b | (top_k_b >= v), 0, top_k_b)
    top_p_b = jnp.where(greedy_b, 1.0, top_p_b)

    def truncate(logits_bv):
        # One sort serves both cuts. Ties with the k-th logit stay (as with lax.top_k's
        # value), and the top-p prefix is taken over what top-k left.
        sorted_bv = jnp.sort(logits_bv, axis=-1)[:, ::-1]
        kth_b = jnp.take_along_axis(sorted_bv, (top_k_b - 1).clip(min=0)[:, None], -1)[:, 0]
        kth_b = jnp.where(top_k_b > 0, kth_b, -jnp.inf)
        sorted_bv = jnp.where(sorted_bv < kth_b[:, None], -jnp.inf, sorted_bv)
        cum_bv = jnp.cumsum(jax.nn.softmax(sorted_bv, axis=-1), axis=-1)
        # Keep the smallest prefix whose mass reaches top_p (the token crossing it included).
        cutoff_b = jnp.take_along_axis(sorted_bv, jnp.sum(cum_bv < top_p_b[:, None], axis=-1, keepdims=True)
                                       .clip(max=v - 1), -1)[:, 0]
        cutoff_b = jnp.maximum(jnp.where(top_p_b < 1.0, cutoff_b, -jnp.inf), kth_b)
        return jnp.where(logits_bv < cutoff_b[:, None], -jnp.inf, logits_bv)

    # The sort runs only when some row asks for a cut: plain sampling and greedy rows never pay for it.
    logits_bv = jax.lax.cond(jnp.any((top_k_b > 0) | (top_p_b < 1.0)), truncate, lambda x: x, logits_bv)
    # Unnormalised probabilities: the draw scales its uniform by their total instead.
    max_b = jnp.max(logits_bv, axis=-1)
    weights_bv = jnp.exp(logits_bv - max_b[:, None])
    u_b = jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32))(keys_b)
    token_b, total_b = inverse_cdf(weights_bv, u_b)
    token_b = jnp.where(greedy_b, jnp.argmax(logits_bv, axis=-1).astype(jnp.int32), token_b)
    logit_b = jnp.take_along_axis(logits_bv, token_b[:, None], -1)[:, 0]
    # Never return a token of zero probability: the draw can only land on one at the very
    # edge of the float32 sums (u * total rounding up to total); then take the likeliest.
    token_b = jax.lax.cond(jnp.all(jnp.isfinite(logit_b)), lambda: token_b,
                           lambda: jnp.where(jnp.isfinite(logit_b), token_b,
                                             jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)))
    logit_b = jnp.take_along_axis(logits_bv, token_b[:, None], -1)[:, 0]
    return token_b, logit_b - max_b - jnp.log(total_b)


def inverse_cdf(weights_bv, u_b, block: int = 128):
    """(first index whose running sum of ``weights`` exceeds ``u * total``, total) per row.

    In two levels, so the only pass over the vocabulary is a blocked sum: running sums over
    the block totals find the block, then over that one block's weights the index. (A
    running sum over the whole vocabulary costs XLA:CPU a slow windowed reduction.)
    """
    b, v = weights_bv.shape
    n = -(-v // block)
    w_bnk = jnp.pad(weights_bv, ((0, 0), (0, n * block - v))).reshape(b, n, block)
    cum_bn = jnp.cumsum(jnp.sum(w_bnk, axis=-1), axis=-1)
    total_b = cum_bn[:, -1]
    target_b = u_b * total_b
    j_b = jnp.sum(cum_bn <= target_b[:, None], axis=-1).clip(max=n - 1)
    before_b = jnp.where(j_b > 0, jnp.take_along_axis(cum_bn, (j_b - 1).clip(min=0)[:, None], -1)[:, 0], 0.0)
    cum_bk = before_b[:, None] + jnp.cumsum(jnp.take_along_axis(w_bnk, j_b[:, None, None], 1)[:, 0], axis=-1)
    i_b = jnp.sum(cum_bk <= target_b[:, None], axis=-1).clip(max=block - 1)
    return (j_b * block + i_b).clip(max=v - 1).astype(jnp.int32), total_b


def _as_they_are(params: dict) -> dict:
    return params


def _release_slots(state: DecodeState, mask_b) -> DecodeState:
    return dataclasses.replace(state, active_b=state.active_b & ~mask_b)


def _activate_slots(state: DecodeState, mask_b) -> DecodeState:
    return dataclasses.replace(state, active_b=state.active_b | mask_b)


def _put_pages(axis: int, state: DecodeState, ids_n, data) -> DecodeState:
    """Pool pages ``ids_n`` (out-of-pool ids dropped) of every layer set to ``data``."""
    index = (slice(None),) * axis
    put = lambda pool, x: pool.at[(*index, ids_n)].set(x.astype(pool.dtype), mode="drop")  # noqa: E731
    k_data, v_data = data
    return dataclasses.replace(state, k_cache=tuple(map(put, state.k_cache, k_data)),
                               v_cache=tuple(map(put, state.v_cache, v_data)))


def prepare_params(config: ModelConfig, params: dict, projections=backends.xla.PROJECTIONS) -> dict:
    """The sampler's copy of the weights: the stacked layer arrays split into one dict per
    layer, each in ``projections``' layout. A layer loop over stacked weights slices
    (copies) every weight on every decode step; split once per weight version, each step
    reads them where they lie."""
    layers = [jax.tree.map(lambda a, l=l: a[l], params["layers"]) for l in range(config.num_layers)]
    head = projections.prepare_head(config, {k: v for k, v in params.items() if k != "layers"})
    return {**head, "layers": [projections.prepare_layer(config, layer) for layer in layers]}


def prepared_shardings(config: ModelConfig, mesh, projections=backends.xla.PROJECTIONS) -> dict:
    """NamedShardings of ``prepare_params``' output: each layer as its slice of the stacked
    array (the layer axis is never sharded), so preparing moves no data between devices.
    On one device every leaf simply lies on it, whatever the layout; a layout of the
    backend's own (native panels, run per device) is whole on every device."""
    if mesh.devices.size == 1 or not projections.reads_trainer_layout:
        shapes = jax.eval_shape(lambda: prepare_params(config, decoder.init_params(config, jax.random.key(0)),
                                                       projections))
        return jax.tree.map(lambda _: NamedSharding(mesh, PartitionSpec()), shapes)
    stacked = decoder.param_shardings(config, mesh)
    per_layer = jax.tree.map(lambda sh: NamedSharding(sh.mesh, PartitionSpec(*sh.spec[1:])), stacked["layers"])
    return {**{k: v for k, v in stacked.items() if k != "layers"}, "layers": [per_layer] * config.num_layers}


_COMPILED: dict = {}


class Engine:
    """The sampler's compiled functions for one model and cache geometry. ``sampling`` is
    the default for prompts that bring no settings of their own (``prefill``'s).

    ``prefill`` and ``decode`` take the weights as ``prepare(params)`` returns them (the
    generator prepares each weight version once). ``share_weights``: the caller keeps the
    arrays it hands over untouched until it hands over the next ones (a run on one mesh:
    sync, or async in turns), so the backend picks projections that read the trainer's
    layout (``layout_agrees``: no native panels) and the
    engine reads the trainer's stacked arrays as they are, each layer a slice taken inside
    the compiled function, and no copy exists beside them (``prepare`` returns its input;
    ``shared_weights`` says whether this happened). Elsewhere it prepares its copy.
    """

    def __init__(self, model_config: ModelConfig, engine_config: EngineConfig, sampling: SamplingConfig,
                 eos_id: int, *, mesh=None, share_weights: bool = False):
        self.model_config, self.config, self.sampling = model_config, engine_config, sampling
        self.eos_id, self.mesh = eos_id, mesh
        # Projections and decode attention as the backend picks them for these shapes.
        self.ops = backends.sampler(model_config, mesh, slots=engine_config.slots, max_len=engine_config.max_len,
                                    page_size=engine_config.page_size, trainer_layout=share_weights)
        self.shared_weights = shared_weights = share_weights and self.layout_agrees
        self.paged = engine_config.paged
        self.implementations = self.ops.implementations  # which ran: "native" or "xla", per function
        # Engines of one configuration share their compiled functions (and trace counts):
        # a run that rebuilds its generator, or a test suite making many, compiles once.
        # The sampling settings are not part of it: they are values in the state.
        key = (model_config, engine_config, eos_id, mesh, shared_weights,
               tuple(sorted(self.implementations.items())))
        if key in _COMPILED:
            (self._prepare, self._prefill, self._decode, self._release, self._activate, self._take,
             self._put) = _COMPILED[key]
            return
        shardings = self.state_shardings() if mesh is not None else None
        params_sh = (None if mesh is None else decoder.param_shardings(model_config, mesh) if shared_weights
                     else prepared_shardings(model_config, mesh, self.ops.projections))
        kw = lambda ins, outs: {} if mesh is None else {"in_shardings": ins, "out_shardings": outs}  # noqa: E731
        rep = NamedSharding(mesh, PartitionSpec()) if mesh is not None else None
        self._prepare = (_as_they_are if shared_weights else
                         jax.jit(functools.partial(prepare_params, model_config, projections=self.ops.projections),
                                 **({} if mesh is None else {"out_shardings": params_sh})))
        table = (rep,) if self.paged else ()  # the page table, when paged: the host's, small
        self._prefill = jax.jit(self._prefill_fn, donate_argnums=1,
                                **kw((params_sh, shardings, rep, rep, rep, rep, rep, rep, rep, *table),
                                   (shardings, rep)))
        self._decode = jax.jit(self._decode_fn, donate_argnums=1, **kw((params_sh, shardings, *table),
                                                                        (shardings, rep)))
        self._release = jax.jit(_release_slots, donate_argnums=0)
        axis = getattr(self.ops.cache, "page_axis", 0)
        self._take = jax.jit(lambda state, ids: jax.tree.map(lambda pool: jnp.take(pool, ids, axis=axis, mode="clip"),
                                                             (state.k_cache, state.v_cache)))
        self._put = jax.jit(functools.partial(_put_pages, axis), donate_argnums=0)
        self._activate = jax.jit(_activate_slots, donate_argnums=0)
        _COMPILED[key] = (self._prepare, self._prefill, self._decode, self._release, self._activate, self._take,
                          self._put)

    @property
    def traces(self) -> dict[str, int]:
        """Compilations so far (jit's own cache; nothing is counted inside a traced function)."""
        return {"prefill": self._prefill._cache_size(), "decode": self._decode._cache_size()}  # noqa: SLF001

    def prepare(self, params: dict) -> dict:
        """The weights in the layout ``prefill`` and ``decode`` read (one copy per version;
        with ``shared_weights``, ``params`` themselves)."""
        return self._prepare(params)

    @property
    def layout_agrees(self) -> bool:
        """Whether this backend's projections read the weights as the trainer lays them out
        (so the engine can share the trainer's arrays instead of keeping a prepared copy)."""
        return self.ops.projections.reads_trainer_layout

    def _layers(self, params: dict) -> list[dict]:
        """Each layer's weights: the prepared per-layer dicts, or slices of the trainer's
        stacked arrays (static slices, which the compiler reads in place where it can)."""
        if not self.shared_weights:
            return params["layers"]
        return [jax.tree.map(lambda a, l=l: a[l], params["layers"]) for l in range(self.model_config.num_layers)]

    # ------------------------------------------------------------------ state

    def cache_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """One layer's key and value cache shapes: a page pool when paged, else slots x max_len."""
        c, e = self.model_config, self.config
        if self.paged:
            return self.ops.cache.shapes(e.pool_pages, e.page_size, c.num_kv_heads, c.head_dim)
        return self.ops.cache.shapes(e.slots, c.num_kv_heads, c.head_dim, e.max_len)

    @property
    def page_shards(self) -> int:
        """How many parts the pool's page axis is split into over the mesh (1 unpaged or
        unsplit): each part serves its own contiguous range of slots."""
        if not self.paged or self.mesh is None:
            return 1
        spec = shd.full_spec(self.ops.cache.k_axes, self.cache_shapes()[0], self.mesh)
        return shd.shard_count(self.mesh, spec[self.ops.cache.page_axis])

    def state_shardings(self) -> DecodeState:
        mesh = self.mesh
        c = self.model_config
        b = self.config.slots
        cache = self.ops.cache
        k_shape, v_shape = self.cache_shapes()
        k_sh = shd.named_sharding(cache.k_axes, k_shape, mesh)
        v_sh = shd.named_sharding(cache.v_axes, v_shape, mesh)
        slot_sh = shd.named_sharding((shd.BATCH,), (b,), mesh)
        return DecodeState((k_sh,) * c.num_layers, (v_sh,) * c.num_layers, *([slot_sh] * 12))

    def init_state(self) -> DecodeState:
        c, s = self.model_config, self.config
        k_shape, v_shape = self.cache_shapes()
        zeros = lambda dtype: np.zeros((s.slots,), dtype)  # noqa: E731
        state = DecodeState(tuple(jnp.zeros(k_shape, c.jnp_dtype) for _ in range(c.num_layers)),
                            tuple(jnp.zeros(v_shape, c.jnp_dtype) for _ in range(c.num_layers)),
                            zeros(np.int32), zeros(np.int32), zeros(bool), zeros(np.int32), zeros(np.int32),
                            zeros(np.int32), zeros(np.int32), zeros(np.int32),
                            zeros(np.float32), zeros(np.float32), zeros(np.int32), zeros(np.int32))
        if self.mesh is not None:
            return jax.device_put(state, self.state_shardings())
        return jax.tree.map(jnp.asarray, state)

    def bucket(self, prompt_len: int) -> int:
        for b in self.config.prompt_buckets:
            if prompt_len <= b:
                return b
        raise ValueError(f"prompt of {prompt_len} tokens exceeds the largest bucket "
                         f"{self.config.prompt_buckets[-1]} (EngineConfig.prompt_buckets)")

    # ------------------------------------------------------------------ prefill

    def prefill(self, params, state: DecodeState, prompt: list[int], slots: list[int], uid: int,
                samples: list[int], max_new: int, table_gn=None, sampling: SamplingConfig | None = None):
        """Writes one prompt into ``slots`` (one per sample) and samples each first token.

        ``params`` as ``prepare`` returns them; ``table_gn``: when paged, the slots' page
        table rows (``PagePool.table_bn[slots]``), holding pages for the prompt;
        ``sampling``: how the slots sample, first token and every later one (default:
        the engine's). Returns the new state and, per slot, (first token, its log-prob,
        finish code).
        """
        if self.paged and table_gn is None:
            raise ValueError("a paged engine's prefill needs the slots' page table rows")
        if not prompt:
            raise ValueError("cannot prefill an empty prompt")
        p = self.bucket(len(prompt))
        if len(prompt) + max_new > self.config.max_len:
            max_new = self.config.max_len - len(prompt)
        tokens = np.zeros((1, p), np.int32)
        tokens[0, : len(prompt)] = prompt
        table = (np.asarray(table_gn, np.int32),) if self.paged else ()
        state, out = self._prefill(params, state, tokens, np.int32(len(prompt)), np.asarray(slots, np.int32),
                                   np.int32(uid), np.asarray(samples, np.int32), np.int32(max_new),
                                   (sampling or self.sampling).values(), *table)
        return state, jax.tree.map(np.asarray, out)

    def _prefill_fn(self, params, state: DecodeState, tokens_1p, prompt_len, slots_g, uid, samples_g, max_new,
                    sampling, *table_gn):
        c = self.model_config
        p = tokens_1p.shape[1]
        g = slots_g.shape[0]
        positions_1p = jnp.arange(p, dtype=jnp.int32)[None]
        # Padding after the prompt gets its own segment so it cannot disturb the prompt.
        segments_1p = (positions_1p >= prompt_len).astype(jnp.int32)
        attention = backends.attention(c, positions_1p, segments_1p, mesh=self.mesh, grad=False)
        projections = self.ops.projections
        x_1pd = shd.constrain(decoder.embed(c, params, tokens_1p), (shd.BATCH, shd.SEQUENCE, None), self.mesh)
        k_cache, v_cache = list(state.k_cache), list(state.v_cache)
        for l, layer in enumerate(self._layers(params)):
            x_1pd, (k_1pke, v_1pke) = decoder.block(c, layer, x_1pd, positions_1p, attention, self.mesh, projections)
            # The prompt's keys and values go to each of its G slots (paged: to their
            # pages, the prompt's full pages shared).
            if self.paged:
                k_cache[l], v_cache[l] = self.ops.cache.write_prompt(k_cache[l], v_cache[l], *table_gn, k_1pke,
                                                                     v_1pke, prompt_len)
            else:
                k_cache[l], v_cache[l] = self.ops.cache.write_prompt(k_cache[l], v_cache[l], slots_g, k_1pke, v_1pke)
        h_11d = jax.lax.dynamic_slice_in_dim(x_1pd, prompt_len - 1, 1, axis=1)
        logits_1v = decoder.unembed(c, params, h_11d, projections)[:, 0]
        uid_g = jnp.full((g,), uid, jnp.int32)
        temperature_g, top_p_g, top_k_g, seed_g = (jnp.full((g,), x) for x in sampling)
        keys_g = token_key(seed_g, uid_g, samples_g, jnp.full((g,), prompt_len, jnp.int32))
        token_g, logp_g = sample_tokens(jnp.broadcast_to(logits_1v, (g, logits_1v.shape[-1])), keys_g,
                                        temperature_g, top_p_g, top_k_g)
        finish_g = jnp.where(token_g == self.eos_id, EOS, jnp.where(max_new <= 1, LENGTH, RUNNING))
        at = lambda arr, val: arr.at[slots_g].set(val)  # noqa: E731
        state = DecodeState(
            tuple(k_cache), tuple(v_cache), at(state.lengths_b, prompt_len), at(state.last_token_b, token_g),
            at(state.active_b, finish_g == RUNNING), at(state.generated_b, 1), at(state.max_new_b, max_new),
            at(state.uid_b, uid), at(state.sample_b, samples_g), at(state.finish_b, finish_g),
            at(state.temperature_b, temperature_g), at(state.top_p_b, top_p_g), at(state.top_k_b, top_k_g),
            at(state.seed_b, seed_g))
        return state, (token_g, logp_g, finish_g)

    def release(self, state: DecodeState, slots: list[int]) -> DecodeState:
        """Stops the given slots (a stop string seen on the host, abandoned work, or a
        suspended sequence: its slot state stays, ``activate`` resumes it)."""
        mask = np.zeros((self.config.slots,), bool)
        mask[list(slots)] = True
        return self._release(state, mask)

    def activate(self, state: DecodeState, slots: list[int]) -> DecodeState:
        """Resumes suspended slots (their pages restored by ``put_pages`` first)."""
        mask = np.zeros((self.config.slots,), bool)
        mask[list(slots)] = True
        return self._activate(state, mask)

    def take_pages(self, state: DecodeState, pages: list[int]):
        """Host copies of the given pool pages, every layer's keys and values (a suspended
        sequence's cache, kept while its pages serve others). One compiled gather of
        ``pages_per_slot`` pages (padded), trimmed to ``pages`` on the host."""
        ids = np.zeros((self.config.pages_per_slot,), np.int32)
        ids[: len(pages)] = pages
        axis = self.ops.cache.page_axis
        return jax.tree.map(lambda x: np.take(np.asarray(x), np.arange(len(pages)), axis=axis), self._take(state, ids))

    def put_pages(self, state: DecodeState, pages: list[int], data) -> DecodeState:
        """Writes ``take_pages``' copies back into the given (newly allocated) pages."""
        n, axis = self.config.pages_per_slot, self.ops.cache.page_axis
        ids = np.full((n,), self.config.pool_pages, np.int32)  # padding: out of the pool, dropped
        ids[: len(pages)] = pages
        pad = lambda x: np.pad(x, [(0, n - len(pages)) if d == axis else (0, 0) for d in range(x.ndim)])  # noqa: E731
        return self._put(state, ids, jax.tree.map(pad, data))

    # ------------------------------------------------------------------ decode

    def decode(self, params, state: DecodeState, table_bn=None) -> tuple[DecodeState, ChunkOutput]:
        """Up to ``chunk_steps`` tokens for every active slot; ``params`` as ``prepare``
        returns; ``table_bn``: when paged, the page table, holding pages for every
        position the chunk may write."""
        if self.paged and table_bn is None:
            raise ValueError("a paged engine's decode needs the page table")
        table = (np.asarray(table_bn, np.int32),) if self.paged else ()
        state, (tokens, logps, valid, finish, steps) = self._decode(params, state, *table)
        return state, ChunkOutput(np.asarray(tokens), np.asarray(logps), np.asarray(valid), np.asarray(finish),
                                  int(steps))

    def _decode_fn(self, params, state: DecodeState, *table_bn):
        k_steps, b = self.config.chunk_steps, self.config.slots
        out = (jnp.zeros((k_steps, b), jnp.int32), jnp.zeros((k_steps, b), jnp.float32),
               jnp.zeros((k_steps, b), bool))

        def cond(carry):
            i, state, _ = carry
            return (i < k_steps) & jnp.any(state.active_b)

        def body(carry):
            i, state, (tokens_kb, logps_kb, valid_kb) = carry
            state, token_b, logp_b, valid_b = self._step(params, state, table_bn)
            return i + 1, state, (tokens_kb.at[i].set(token_b), logps_kb.at[i].set(logp_b), valid_kb.at[i].set(valid_b))

        steps, state, out = jax.lax.while_loop(cond, body, (jnp.int32(0), state, out))
        return state, (*out, state.finish_b, steps)

    def _step(self, params, state: DecodeState, table_bn: tuple = ()):
        """Feeds every slot's last token, writes its keys and values, samples the next token."""
        c = self.model_config
        pos_b = state.lengths_b
        projections, cache = self.ops.projections, self.ops.cache
        x_b1d = decoder.embed(c, params, state.last_token_b[:, None])
        # Each slot attends to cache positions [lo_b, pos_b]: the causal limit and any
        # sliding window as a range.
        lo_b = jnp.maximum(pos_b - c.sliding_window + 1, 0) if c.sliding_window is not None else jnp.zeros_like(pos_b)
        # Finished and free slots write nowhere (an out-of-range index is dropped; paged
        # caches take -1, since past max_len can still be inside a slot's last page).
        write_b = jnp.where(state.active_b, pos_b, -1 if self.paged else self.config.max_len)
        # ... and read nothing: an empty range, so no kernel re-reads a finished sequence.
        hi_b = jnp.where(state.active_b, pos_b + 1, lo_b)
        k_cache, v_cache = list(state.k_cache), list(state.v_cache)
        # The layers run as a Python loop (unrolled): each reads its own weights and cache.
        for l, layer in enumerate(self._layers(params)):
            q_b1he, k_b1ke, v_b1ke = decoder.attention_inputs(c, layer, x_b1d, pos_b[:, None], True, projections)
            # A slot just written in this step reads its own new entry from the cache.
            o_b1he, k_cache[l], v_cache[l] = cache.write_and_attend(q_b1he, k_b1ke, v_b1ke, k_cache[l], v_cache[l],
                                                                    lo_b, hi_b, write_b, *table_bn)
            x_b1d = decoder.layer_output(c, layer, x_b1d, o_b1he, self.mesh, projections)
        logits_bv = decoder.unembed(c, params, x_b1d, projections)[:, 0]
        keys_b = token_key(state.seed_b, state.uid_b, state.sample_b, pos_b + 1)
        token_b, logp_b = sample_tokens(logits_bv, keys_b, state.temperature_b, state.top_p_b, state.top_k_b)
        valid_b = state.active_b
        generated_b = state.generated_b + valid_b.astype(jnp.int32)
        lengths_b = pos_b + valid_b.astype(jnp.int32)
        out_of_room = (generated_b >= state.max_new_b) | (lengths_b >= self.config.max_len)
        finish_b = jnp.where(~valid_b, state.finish_b,
                             jnp.where(token_b == self.eos_id, EOS, jnp.where(out_of_room, LENGTH, RUNNING)))
        state = dataclasses.replace(state, k_cache=tuple(k_cache), v_cache=tuple(v_cache), lengths_b=lengths_b,
                                    last_token_b=jnp.where(valid_b, token_b, state.last_token_b),
                                    active_b=valid_b & (finish_b == RUNNING), generated_b=generated_b,
                                    finish_b=finish_b)
        return state, token_b, logp_b, valid_b
