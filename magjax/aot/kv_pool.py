"""How many sequences the sampler's KV cache holds per generator chip, against how many a
recipe keeps in flight at its lengths.

A dense cache holds ``slots`` sequences whatever their lengths; a paged one holds pages,
so what it holds depends on the lengths. Recipes record no measured length
distribution, so the average is a stated assumption applied per curriculum stage (each
with its own ``max_new_tokens`` and ``n_async``): prompts of half the largest prompt
bucket, and completions spread evenly between an eighth of the stage's
``max_new_tokens`` and all of it (mean 9/16 of it). The stage with the most positions in
flight is the one the pool must serve. Counts ignore the G samples' shared prompt pages:
the pool holds at least this many.

Per generator chip: each generator process (one per host) keeps ``n_async / processes``
sequences in flight; a chip holds its kv heads' share of its data shard's pages (the pool
splits its pages over the sampler mesh's data axes as the slots are).
"""

from __future__ import annotations

import dataclasses

from magjax.data import curriculum

ASSUMPTION = ("prompts of half the largest prompt bucket; completions spread evenly between 1/8 and all of "
              "max_new_tokens (mean 9/16 of it)")


def average_len(prompt_buckets, max_new_tokens: int) -> int:
    """The assumed average sequence length (prompt and completion) for one stage."""
    return prompt_buckets[-1] // 2 + (9 * max_new_tokens) // 16


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str  # "run" (the settings before the first stage) or "stage N"
    in_flight: int  # sequences each generator process keeps in flight
    max_new_tokens: int
    average_len: int


def stages(run, reward, engine, processes: int) -> list[Stage]:
    """The run's settings before its first stage (where that is reached) and each stage's
    (``run``, ``reward``: the recipe's RunConfig and RewardConfig)."""
    indices = ([-1] if not run.stages or run.stages[0].start_step > 1 else []) + list(range(len(run.stages)))
    out = []
    for i in indices:
        settings = run if i < 0 else curriculum.settings(run.stages, i, run, reward)[0]
        out.append(Stage("run" if i < 0 else f"stage {i + 1}", max(settings.n_async // processes, run.group_size),
                         settings.max_new_tokens, average_len(engine.prompt_buckets, settings.max_new_tokens)))
    return out


def report(engine, *, processes: int, page_shards: int, pool_bytes: int, decode_attention: str, run,
           reward) -> dict:
    """The KV cache's figures per generator chip (JSON-ready; see the module docstring).

    ``pool_bytes``: one chip's keys and values (every layer), as compiled."""
    kv_positions = (engine.pool_pages * engine.page_size if engine.paged else engine.slots * engine.max_len)
    positions_per_chip = kv_positions // page_shards
    worst = max(stages(run, reward, engine, processes), key=lambda s: s.in_flight * s.average_len)
    in_flight_per_chip = -(-worst.in_flight // page_shards)
    if engine.paged:
        pages_per_chip = engine.pool_pages // page_shards
        max_len_held = pages_per_chip // engine.pages_per_slot
        average_held = pages_per_chip // -(-worst.average_len // engine.page_size)
    else:  # one sequence per slot, however short
        max_len_held = average_held = engine.slots // page_shards
    slots_per_chip = engine.slots // page_shards  # a slot decodes one sequence; the pool may hold more
    return {
        "paged": engine.paged, "decode_attention": decode_attention, "page_size": engine.page_size,
        "pool_pages": engine.pool_pages if engine.paged else 0,
        "pages_per_slot": engine.pages_per_slot if engine.paged else 0,
        "slots": engine.slots, "max_len": engine.max_len, "processes": processes, "page_shards": page_shards,
        "pool_bytes_per_chip": pool_bytes, "positions_per_chip": positions_per_chip,
        "bytes_per_position_per_chip": pool_bytes // max(positions_per_chip, 1),
        "in_flight_per_chip": in_flight_per_chip, "stage": worst.name, "max_new_tokens": worst.max_new_tokens,
        "average_len": worst.average_len, "average_len_source": f"assumed: {ASSUMPTION}",
        "slots_per_chip": slots_per_chip, "average_len_held_per_chip": average_held,
        "max_len_held_per_chip": max_len_held,
        "holds_in_flight": min(average_held, slots_per_chip) >= in_flight_per_chip,
    }


def describe(d: dict, gib) -> list[str]:
    """Text lines for report.describe (``gib``: bytes -> the text's unit)."""
    if d["paged"]:
        cache = (f"paged ({d['decode_attention']}): {d['pool_pages']:,} pages x {d['page_size']} positions "
                 f"({d['pages_per_slot']} per max_len sequence) for {d['slots']} slots")
    else:
        cache = f"dense ({d['decode_attention'] or 'slots'}): {d['slots']} slots x {d['max_len']} positions"
    word = "holds" if d["holds_in_flight"] else "DOES NOT HOLD"
    return [
        f"KV cache per generator chip: {cache}; {gib(d['pool_bytes_per_chip'])} "
        f"({d['bytes_per_position_per_chip']:,} bytes a position)",
        f"  holds {d['average_len_held_per_chip']} sequences of average length {d['average_len']:,} "
        f"({d['stage']}, max_new_tokens {d['max_new_tokens']:,}) and {d['max_len_held_per_chip']} of max_len "
        f"{d['max_len']:,}; {d['in_flight_per_chip']} in flight (n_async over {d['processes']} process(es)): {word}",
        f"  average length {d['average_len_source']}",
    ]
