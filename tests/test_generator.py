"""The host-side loop: continuous batching, in-flight weight updates, control."""

import queue

import jax
import numpy as np

from magjax.models import decoder, preset
from magjax.sampling.engine import Engine, EngineConfig, SamplingConfig
from magjax.sampling.generator import Generator, Request

CONFIG = preset("test")
NEVER = 10_000


def _engine(slots=8, chunk=4, max_len=64):
    return Engine(CONFIG, EngineConfig(slots=slots, max_len=max_len, prompt_buckets=(8, 16), chunk_steps=chunk),
                  SamplingConfig(temperature=1.0), NEVER)


def test_weights_swapped_mid_generation_keep_every_sequence_and_its_cache():
    old, new = (decoder.init_params(CONFIG, jax.random.key(s)) for s in (0, 1))
    requests = [Request(f"r{i}", [1, 4 + i, 9], 2, 20) for i in range(3)]
    reference = {(c.problem_id, c.sample_index): c for c in Generator(_engine(), old).generate(requests)}
    gen = Generator(_engine(), old, version=0)
    gen.submit(requests)
    done = gen.step() + gen.step()  # prefill + two chunks on the old weights
    lengths = np.asarray(gen.state.lengths_b).copy()
    k_before = np.stack(gen.state.k_cache)  # [layers, slots, kv_heads, head_dim, max_len] (the CPU layout)
    in_flight = dict(gen._slots)
    assert len(in_flight) == 6 and not done
    gen.set_weights(new, 1)
    done += gen.step()
    k_after = np.stack(gen.state.k_cache)
    for slot in in_flight:  # entries written before the swap are untouched
        np.testing.assert_array_equal(k_after[:, slot, ..., : lengths[slot]], k_before[:, slot, ..., : lengths[slot]])
    while gen.in_flight or gen.pending:
        done += gen.step()
    assert sorted((c.problem_id, c.sample_index) for c in done) == sorted(reference)
    spanning = 0
    for c in done:
        assert len(c.tokens) == 20 and c.finish_reason == "length"
        swap = c.versions.index(1)
        assert set(c.versions[:swap]) == {0} and set(c.versions[swap:]) == {1}
        # Not restarted: everything sampled before the swap is what the old weights gave.
        assert c.tokens[:swap] == reference[(c.problem_id, c.sample_index)].tokens[:swap]
        spanning += 0 < swap < len(c.tokens)
    assert spanning == 6


def test_continuous_batching_keeps_slots_busy():
    params = decoder.init_params(CONFIG, jax.random.key(0))
    gen = Generator(_engine(slots=16, chunk=4, max_len=80), params)
    rng = np.random.default_rng(0)
    # Completion lengths vary 1:5 (12 to 60 tokens).
    requests = [Request(f"r{i}", [1, 3 + i % 50], 2, int(rng.integers(12, 61))) for i in range(60)]
    done = gen.generate(requests)
    assert len(done) == 120
    assert gen.stats.steady_occupancy > 0.9, gen.stats


def test_a_feed_refills_every_freed_slot_before_the_next_chunk():
    # Two-token completions: every slot finishes in each chunk's first step. The freed slots
    # (eight groups' worth) must all be refilled from the feed before the next decode call,
    # or that call decodes empty slots (an async run's generator gets its work this way).
    params = decoder.init_params(CONFIG, jax.random.key(0))
    gen = Generator(_engine(slots=16, chunk=4), params)
    requests = iter([Request(f"r{i}", [1, 3 + i % 9], 2, 2) for i in range(40)])
    gen.feed = lambda: next(requests, None)
    done = []
    while len(done) < 80:
        done += gen.step()
    assert gen.stats.occupancy == 1.0, gen.stats
    assert gen.stats.tokens == sum(len(c.tokens) for c in done)


def test_drain_pause_and_resume():
    params = decoder.init_params(CONFIG, jax.random.key(0))
    gen = Generator(_engine(slots=4), params)
    gen.submit([Request(f"r{i}", [1, 5, i + 3], 2, 6) for i in range(4)])
    done = gen.step()
    assert gen.in_flight == 4 and gen.pending == 2
    gen.drain()
    while gen.in_flight:
        done += gen.step()
    assert len(done) == 4 and gen.pending == 2  # nothing admitted while draining
    gen.resume()
    while gen.in_flight or gen.pending:
        done += gen.step()
    assert len(done) == 8


def test_background_thread_takes_weights_from_another_thread():
    params = [decoder.init_params(CONFIG, jax.random.key(s)) for s in range(3)]
    out = queue.Queue()
    gen = Generator(_engine(slots=8, chunk=2), params[0], on_complete=out.put)
    gen.start()
    gen.submit([Request(f"r{i}", [1, 5, i + 3], 2, 30) for i in range(8)])
    received = [out.get(timeout=60)]
    for version in (1, 2):
        gen.set_weights(params[version], version)
        # Requests submitted after the swap are sampled with (at least) the new weights.
        gen.submit([Request(f"v{version}-{i}", [1, 6, i + 3], 2, 30) for i in range(2)])
        while not any(c.problem_id.startswith(f"v{version}") for c in received):
            received.append(out.get(timeout=60))
    while len(received) < 24:
        received.append(out.get(timeout=60))
    gen.stop()
    assert gen.error is None
    versions = {v for c in received for v in c.versions}
    assert versions == {0, 1, 2}
    assert all(c.versions == sorted(c.versions) for c in received)
    assert gen.stats.abandoned == 0 and gen.abandon() == 0
