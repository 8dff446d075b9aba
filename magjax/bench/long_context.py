"""``magjax bench sampler``'s long-context case: mixed completion lengths through the real
generator, on the dense engine and on the paged engine, in one run.

Groups of samples get completion budgets drawn (from a fixed seed) between an eighth of
``max_len`` and all the room the prompt leaves; the end-of-sequence token is never
emitted, so every sequence runs to its budget and both engines do exactly the same work.
Each engine is warmed up (compiled) on one short request, then timed over the whole
workload by ``Generator.generate``: prefills, decode chunks and the host's scheduling.

Bytes of cache read per generated token come from ``cache_reads.positions_read``, applied
to every decode step as it ran: each decode call's per-step active slots and lengths are
recorded (``valid_kb`` and the lengths the call ends with), so admissions, idle slots and
the last chunk's early stop count as they happened. The paged engine's pool also reports
its peak of pages in use against the dense cache's size.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from magjax.bench import cache_reads
from magjax.sampling.engine import Engine, EngineConfig, SamplingConfig
from magjax.sampling.generator import Generator, Request


@dataclasses.dataclass(frozen=True)
class Case:
    max_len: int = 2048
    groups: int = 6
    samples: int = 4  # per group (G)
    slots: int = 16
    prompt_len: int = 64
    chunk: int = 64
    page_size: int = 64
    seed: int = 0

    def __post_init__(self):
        if not 0 < self.prompt_len < self.max_len // 8 or self.samples > self.slots or min(
                self.groups, self.samples, self.chunk, self.page_size) < 1:
            raise ValueError(f"long-context case: need 0 < prompt_len < max_len / 8, samples <= slots and "
                             f"positive groups, samples, chunk and page_size; got {self}")

    def budgets(self) -> list[int]:
        """Each group's completion budget, in [max_len / 8, max_len - prompt_len]."""
        rng = np.random.default_rng(self.seed)
        return rng.integers(self.max_len // 8, self.max_len - self.prompt_len + 1, self.groups).tolist()

    def requests(self) -> list[Request]:
        rng = np.random.default_rng(self.seed + 1)
        return [Request(f"long-{n}", rng.integers(1, 1 << 30, self.prompt_len).tolist(), self.samples, budget, uid=n)
                for n, budget in enumerate(self.budgets())]


class MeteredEngine(Engine):
    """The engine as it is, recording each decode call's schedule: per step, which slots
    generated and the lengths they started from; and, paged, the most pages in use."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.chunks: list[tuple[np.ndarray, np.ndarray]] = []  # (lengths at the call's start, valid_kb)
        self.peak_pages = 0

    def decode(self, params, state, table_bn=None):
        state, out = super().decode(params, state, table_bn)
        valid_kb = out.valid_kb[: out.steps]
        # A slot's length grows by one per step it generates: the call's end minus those.
        self.chunks.append((np.asarray(state.lengths_b) - valid_kb.sum(axis=0), valid_kb))
        if table_bn is not None:
            table_bn = np.asarray(table_bn)
            self.peak_pages = max(self.peak_pages, np.unique(table_bn[table_bn < self.config.pool_pages]).size)
        return state, out

    def steps(self):
        """(lo_b, hi_b, active_b) of every decode step run, as ``Engine._step`` forms them."""
        window = self.model_config.sliding_window
        for start_b, valid_kb in self.chunks:
            pos_b = start_b.copy()
            for valid_b in valid_kb:
                lo_b = np.maximum(pos_b - window + 1, 0) if window is not None else np.zeros_like(pos_b)
                yield lo_b, pos_b + 1, valid_b
                pos_b = pos_b + valid_b


def run_engine(config, params, case: Case, paged: bool) -> dict:
    """The case's workload through a fresh generator on one engine: figures and tokens."""
    engine_config = EngineConfig(slots=case.slots, max_len=case.max_len, prompt_buckets=(case.prompt_len,),
                                 chunk_steps=case.chunk, page_size=case.page_size if paged else 0)
    # The end-of-sequence id is past the vocabulary: never sampled, every budget runs out.
    engine = MeteredEngine(config, engine_config, SamplingConfig(temperature=1.0), eos_id=config.vocab_size)
    prepared = engine.prepare(params)
    warmup = Request("warmup", [1] * case.prompt_len, 1, 2 * case.chunk, uid=1 << 20)
    Generator(engine, prepared, prepared=True).generate([warmup])  # compiles prefill and decode
    engine.chunks.clear()
    engine.peak_pages = 0
    generator = Generator(engine, prepared, prepared=True)
    t0 = time.perf_counter()
    completions = generator.generate(case.requests())
    seconds = time.perf_counter() - t0
    tokens = sum(len(c.tokens) for c in completions)
    per_position = cache_reads.bytes_per_position(config)
    implementation = engine.implementations["decode_attention"]
    steps = list(engine.steps())

    def bytes_read(name: str) -> int:
        return per_position * sum(
            cache_reads.positions_read(name, lo, hi, active, max_len=case.max_len, page_size=case.page_size)
            for lo, hi, active in steps)

    read = bytes_read(implementation)
    held = engine.cache_shapes()[0]
    row = {"decode_attention": implementation, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
           "decode_steps": len(steps), "active_slot_steps": int(sum(a.sum() for _, _, a in steps)),
           "cache_bytes_read": read, "cache_bytes_per_token": read / tokens,
           "cache_bytes": int(np.prod(held)) * 2 * config.num_layers * np.dtype(config.jnp_dtype).itemsize,
           # The same schedule as every modelled implementation would have read it.
           "modelled_cache_bytes_per_token": {name: bytes_read(name) / tokens for name in cache_reads.MODELLED}}
    if paged:
        row.update(page_size=case.page_size, pool_pages=engine.config.pool_pages, peak_pages=engine.peak_pages,
                   peak_cache_bytes=engine.peak_pages * case.page_size * per_position)
    return row, {(c.problem_id, c.sample_index): c.tokens for c in completions}


def run(config, params, case: Case = Case()) -> dict:
    """The case on the dense engine, then on the paged one: ``{"dense": {...}, "paged": {...}}``
    with the workload and the paged/dense ratios."""
    dense, dense_tokens = run_engine(config, params, case, paged=False)
    paged, paged_tokens = run_engine(config, params, case, paged=True)
    return {**dataclasses.asdict(case), "budgets": case.budgets(), "dense": dense, "paged": paged,
            "dense_cache_bytes_at_max_len": case.slots * case.max_len * cache_reads.bytes_per_position(config),
            "speed_ratio": paged["tokens_per_s"] / dense["tokens_per_s"],
            "read_ratio": dense["cache_bytes_per_token"] / paged["cache_bytes_per_token"],
            # Both engines sample by (seed, uid, sample, position): equal up to float rounding.
            "identical_completions": sum(paged_tokens[k] == v for k, v in dense_tokens.items()),
            "completions": len(dense_tokens)}


def describe(r: dict) -> list[str]:
    d, p = r["dense"], r["paged"]
    mb = lambda x: f"{x / 1e6:.1f} MB"  # noqa: E731
    lines = [f"  long context: max_len {r['max_len']}, {r['groups']} groups x {r['samples']} samples on {r['slots']}"
             f" slots, budgets {min(r['budgets'])}..{max(r['budgets'])} (seed {r['seed']}), prompt {r['prompt_len']},"
             f" chunk {r['chunk']}, pages of {r['page_size']}",
             f"  {'':>22} {'dense (' + d['decode_attention'] + ')':>18} {'paged (' + p['decode_attention'] + ')':>18}"
             f" {'paged/dense':>12}",
             f"  {'tokens/s':>22} {d['tokens_per_s']:>18.0f} {p['tokens_per_s']:>18.0f} {r['speed_ratio']:>11.2f}x",
             f"  {'cache bytes/token':>22} {d['cache_bytes_per_token']:>18.0f} {p['cache_bytes_per_token']:>18.0f}"
             f" {1 / r['read_ratio']:>11.3f}x  ({r['read_ratio']:.1f}x fewer)",
             f"  {'cache held':>22} {mb(d['cache_bytes']):>18} {mb(p['peak_cache_bytes']):>18}"
             f" {p['peak_cache_bytes'] / d['cache_bytes']:>11.3f}x  (peak {p['peak_pages']} of {p['pool_pages']}"
             f" pages)",
             "  modelled bytes/token on the paged run's schedule: " + ", ".join(
                 f"{name} {v:.0f}" for name, v in p["modelled_cache_bytes_per_token"].items()),
             f"  {r['identical_completions']} of {r['completions']} completions token-identical across the engines"]
    return lines
