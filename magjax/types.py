"""Data types that cross module boundaries, and the shape-letter legend.

Arrays in magjax carry their shape in their name: ``tokens_bt`` is ``[batch, time]``,
``logits_btv`` is ``[batch, time, vocab]``. The letters:

    b  batch (sequences, or slots in the sampler)     t  time / sequence position
    s  source positions of attention (keys)            v  vocabulary
    d  model width (embed)                             f  MLP hidden width
    h  query heads                                     k  key/value heads
    g  query heads per key/value head (h = k * g)      e  head dimension
    l  layers                                          m  microbatches
    n  groups (prompts)                                G  samples per group

Host-side records (``Problem`` … ``ScoredGroup``) hold Python and NumPy values; only
``TrainBatch`` (built in magjax.rl.batching) is arrays all the way down.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

ProblemKind = Literal["math", "code"]
FinishReason = Literal["eos", "stop", "length"]


@dataclasses.dataclass(frozen=True)
class PolicyVersion:
    """Which weights produced something: incremented once per optimizer step."""

    version: int
