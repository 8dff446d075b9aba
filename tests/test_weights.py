"""The weight store: what reaches the generator is checked leaf by leaf before it is used."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from magjax.models import decoder, preset
from magjax.weights import WeightStore, WeightValidationError

CONFIG = preset("test")


def _published(mesh_from, mesh_to, dtype=None):
    """Trainer parameters laid out on ``mesh_from``, published to a generator on ``mesh_to``."""
    params = jax.device_put(decoder.init_params(CONFIG, jax.random.key(0)), decoder.param_shardings(CONFIG, mesh_from))
    delivered = []
    store = WeightStore(lambda p, v: delivered.append((p, v)), shardings=decoder.param_shardings(CONFIG, mesh_to),
                        dtype=dtype)
    store.publish(params, 3)
    [(placed, version)] = delivered
    return store, params, placed, version


def test_a_resharded_publication_arrives_in_the_generators_layout(mesh_2x4, mesh_1x8):
    store, params, placed, version = _published(mesh_2x4, mesh_1x8, dtype=jnp.bfloat16)
    assert version == 3 and store.version == 3 and len(store.publish_seconds) == 1
    want = decoder.param_shardings(CONFIG, mesh_1x8)
    for a, b, s in zip(jax.tree.leaves(params), jax.tree.leaves(placed), jax.tree.leaves(want)):
        assert b.dtype == jnp.bfloat16 and b.sharding.is_equivalent_to(s, b.ndim)
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a.astype(jnp.bfloat16)))


def _with_leaf(tree, name, value):
    out = dict(tree, layers=dict(tree["layers"]))
    out["layers"][name] = value
    return out


@pytest.mark.parametrize("dtype", [None, jnp.bfloat16])
def test_the_store_refuses_a_wrong_shape_dtype_or_sharding_naming_the_leaf(mesh_2x4, mesh_1x8, dtype):
    """A wrong leaf among correct ones: the error names it (and only that one) and says
    what was expected. With dtype None the generator expects the trainer's dtypes."""
    store, params, placed, _ = _published(mesh_2x4, mesh_1x8, dtype=dtype)
    store.validate(params, placed)  # the real publication passes
    good = placed["layers"]["wq"]
    wrong = {
        "shape": jax.device_put(jnp.zeros(good.shape[:-1] + (good.shape[-1] + 1,), good.dtype), good.sharding),
        "dtype": good.astype(jnp.float16),
        "sharding": jax.device_put(good, NamedSharding(mesh_1x8, PartitionSpec(None, "data"))),  # split, not replicated
    }
    for what, leaf in wrong.items():
        with pytest.raises(WeightValidationError, match=rf"^\['layers'\]\['wq'\]: {what} ") as err:
            store.validate(params, _with_leaf(placed, "wq", leaf))
        assert "wk" not in str(err.value)
    with pytest.raises(WeightValidationError, match="tree"):
        store.validate(params, {k: v for k, v in placed.items() if k != "lm_head"})


def _device_bytes(arrays) -> int:
    """Bytes of the distinct device buffers behind ``arrays`` (a shard's view shares its array's)."""
    buffers = {s.data.unsafe_buffer_pointer(): s.data.nbytes for x in arrays for s in x.addressable_shards}
    return sum(buffers.values())


def test_a_colocated_sampler_holds_one_prepared_copy_and_nothing_of_the_trainers(mesh_1x8):
    """Colocated, publishing adds exactly the sampler's prepared copy to what is alive on the
    devices (no store copy beside it), that copy shares no buffer with the trainer's (whose
    next step donates them), and a step then a new version leaves the total unchanged."""
    import gc

    from magjax.models.tokenizer import ByteTokenizer, ChatFormat
    from magjax.rewards.pool import PoolConfig
    from magjax.rewards.reward import RewardConfig
    from magjax.rl.losses import LossConfig
    from magjax.rl.optimizer import OptimizerConfig
    from magjax.roles.rollout import Rollout
    from magjax.roles.trainer import Trainer
    from magjax.sampling.engine import EngineConfig, SamplingConfig
    from magjax.types import Problem

    config = preset("demo")
    rollout = Rollout(config, ByteTokenizer(), ChatFormat("plain", None), mesh=mesh_1x8,
                      engine=EngineConfig(slots=8, max_len=64, prompt_buckets=(32,), chunk_steps=8),
                      sampling=SamplingConfig(), reward=RewardConfig(), pool=PoolConfig(threads=1))
    trainer = Trainer(config, LossConfig(), OptimizerConfig(), mesh_1x8, seed=0, publish_to=rollout.set_weights)
    try:
        sums = [Problem("p", "math", "Compute 2+2.", answer="4")]
        gc.collect()
        before = _device_bytes(jax.live_arrays())
        trainer.publish()
        rollout.sample(sums, 2, 8, uids=[1])  # the generator decodes with what it was given
        gc.collect()
        prepared = jax.tree.leaves(rollout.generator._prepared[1])  # noqa: SLF001
        mine = {s.data.unsafe_buffer_pointer() for x in jax.tree.leaves(trainer.state.params) for s in x.addressable_shards}
        assert not mine & {s.data.unsafe_buffer_pointer() for x in prepared for s in x.addressable_shards}
        held = _device_bytes(jax.live_arrays()) - before
        param_bytes = _device_bytes(jax.tree.leaves(trainer.state.params))
        assert held == _device_bytes(prepared), (held, _device_bytes(prepared), param_bytes)
        del prepared
        trainer.version += 1  # a new version of the same weights: the old prepared copy goes
        trainer.publish()
        gc.collect()
        assert _device_bytes(jax.live_arrays()) - before == held
    finally:
        rollout.close()


def _rollout(config, mesh, share: bool):
    from magjax.models.tokenizer import ByteTokenizer, ChatFormat
    from magjax.rewards.pool import PoolConfig
    from magjax.rewards.reward import RewardConfig
    from magjax.roles.rollout import Rollout
    from magjax.sampling.engine import EngineConfig, SamplingConfig

    return Rollout(config, ByteTokenizer(), ChatFormat("plain", None), mesh=mesh,
                   engine=EngineConfig(slots=8, max_len=64, prompt_buckets=(32,), chunk_steps=8),
                   sampling=SamplingConfig(), reward=RewardConfig(), pool=PoolConfig(threads=1), share_weights=share)


def _tokens(rollout, problems):
    return [[(s.completion.tokens, s.completion.logprobs) for s in group]
            for group in rollout.sample(problems, 2, 8, uids=[1])]


def test_a_sync_colocated_sampler_reads_the_trainers_arrays_and_holds_no_copy(mesh_1x8, monkeypatch):
    """Sync on one mesh (RunConfig.mode="sync", colocated): publishing adds nothing to what
    is alive on the devices, the engine decodes from the trainer's own buffers, a donated
    step followed by the next publication leaves it decoding the new version, and its
    tokens and log-probs equal those of a sampler holding its prepared copy."""
    import gc

    from magjax.rl import batching
    from magjax.rl.losses import LossConfig
    from magjax.rl.optimizer import OptimizerConfig
    from magjax.roles.trainer import Trainer
    from magjax.types import Problem
    from rollouts import random_groups

    config = preset("demo")
    # XLA's kernels for both: the copying sampler's tokens and log-probs are compared bit
    # for bit, so its products must be the shared one's (native panels sum in another order).
    monkeypatch.setenv("MAGJAX_KERNELS", "xla")
    shared, copying = _rollout(config, mesh_1x8, True), _rollout(config, mesh_1x8, False)
    trainer = Trainer(config, LossConfig(), OptimizerConfig(), mesh_1x8, seed=0, publish_to=shared.set_weights)
    problems = [Problem("p", "math", "Compute 2+2.", answer="4")]
    try:
        # XLA's projections read the trainer's layout.
        assert shared.generator.engine.shared_weights and not copying.generator.engine.shared_weights
        gc.collect()
        before = _device_bytes(jax.live_arrays())
        trainer.publish()
        tokens = _tokens(shared, problems)
        gc.collect()
        assert _device_bytes(jax.live_arrays()) == before  # no copy of any weight
        decoding = jax.tree.leaves(shared.generator._prepared[1])  # noqa: SLF001
        used = {s.data.unsafe_buffer_pointer() for x in decoding for s in x.addressable_shards}
        mine = {s.data.unsafe_buffer_pointer() for x in jax.tree.leaves(trainer.state.params) for s in x.addressable_shards}
        assert used == mine
        copying.set_weights(trainer.state.params, trainer.version)
        assert tokens == _tokens(copying, problems)
        gc.collect()
        before = _device_bytes(jax.live_arrays())  # now with the copying sampler's copy and state

        # A step donates the arrays the sampler was reading; the publication that follows
        # every step hands it the new ones before it generates again.
        trainer.step(batching.make_minibatches(random_groups(4, 4, seed=1), batching.AdvantageConfig(),
                                               batching.PackingConfig(rows=8, row_len=32))[0][0])
        assert all(x.is_deleted() for x in jax.tree.leaves(shared.generator._prepared[1]))  # noqa: SLF001
        trainer.publish()
        tokens = _tokens(shared, problems)
        gc.collect()
        assert _device_bytes(jax.live_arrays()) == before  # the step updated the weights in place
        copying.set_weights(trainer.state.params, trainer.version)
        assert tokens == _tokens(copying, problems)
    finally:
        shared.close()
        copying.close()


def test_a_sampler_asked_to_share_reads_the_trainers_layout():
    """The native CPU kernels read packed panels: an engine asked to share the trainer's
    arrays takes projections that read them as they are (XLA's), and holds no copy; one
    that may copy takes the panels (the suite forces the native kernels)."""
    from magjax.sampling.engine import Engine, EngineConfig, SamplingConfig

    config = preset("demo")
    params = decoder.init_params(config, jax.random.key(0))
    engines = {share: Engine(config, EngineConfig(slots=4, max_len=64, prompt_buckets=(32,)), SamplingConfig(), 0,
                             share_weights=share) for share in (True, False)}
    assert engines[True].implementations["projections"] == "xla" and engines[True].shared_weights
    assert engines[True].prepare(params) is params
    assert engines[False].implementations["projections"] == "native" and not engines[False].shared_weights
    assert engines[False].prepare(params) is not params


def test_which_runs_share_the_trainers_weights():
    """RunConfig.sampler_weights: "auto" shares on one accelerator mesh, sync or async
    (XLA:CPU copies each layer's slice on every decode step, so CPUs keep a copy);
    "shared" needs a colocated run, and says so."""
    from magjax.loop import RunConfig, shares_weights

    for mode in ("sync", "async"):
        run = RunConfig(mode=mode)
        assert shares_weights(run, True, "tpu") and shares_weights(run, True, "gpu")
        assert not shares_weights(run, True, "cpu")
        assert shares_weights(RunConfig(mode=mode, sampler_weights="shared"), True, "cpu")
        assert not shares_weights(run, False, "tpu")  # two meshes: the weights are resharded anyway
        assert not shares_weights(RunConfig(mode=mode, sampler_weights="copy"), True, "tpu")
    with pytest.raises(ValueError, match="sampler_weights='shared' needs placement='colocated'"):
        RunConfig(placement="disaggregated", sampler_weights="shared")
    with pytest.raises(ValueError, match="sampler_weights must be auto|copy|shared"):
        RunConfig(sampler_weights="none")


def test_the_trainer_steps_between_generator_steps_and_is_never_starved():
    """Turns on shared weights: the trainer's turn waits for the generator's current step
    and comes before its next one, however eagerly the generator asks again."""
    import threading
    import time

    from magjax.sampling.turns import Turns

    turns, in_chunk, log = Turns(), threading.Event(), []

    def generator():
        with turns.generating():
            log.append("chunk 1 starts")
            in_chunk.set()
            while not turns.trainer_waiting:  # the trainer asks while this chunk runs
                time.sleep(0.001)
            log.append("chunk 1 ends")
        with turns.generating():  # asks again at once, as the generator thread does
            log.append("chunk 2")

    def trainer():
        assert in_chunk.wait(30)
        with turns.training():
            log.append("step")

    threads = [threading.Thread(target=f) for f in (generator, trainer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert log == ["chunk 1 starts", "chunk 1 ends", "step", "chunk 2"], log
