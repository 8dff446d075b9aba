"""The loop tests' cold start, trained in its own process: ``python tests/cold_start.py OUT``.

60 SFT steps on demo arithmetic teach the demo model the response format and a little
arithmetic, so rewards vary within groups. It runs apart from the test process because of
XLA's flags: the suite compiles unoptimised (tests/conftest.py), which suits its many short
programs, but this is one program run 60 times, 3x slower unoptimised; on one device (the
demo model trains faster on one than on eight simulated ones sharing two cores) and fully
optimised it takes 19 s instead of 45. The parameters go to OUT as a pickle of NumPy arrays.
"""

import os
import pickle
import sys


def train():
    from magjax.data.synthetic import generate
    from magjax.models import preset
    from magjax.models.tokenizer import ByteTokenizer, ChatFormat
    from magjax.rl.batching import PackingConfig
    from magjax.sft import SFTConfig, run_sft

    tasks = generate(400, seed=0, kinds=("math",), difficulties=(1,))
    params, losses = run_sft([(t.problem.prompt, t.solution) for t in tasks], preset("demo"), None, ByteTokenizer(),
                             ChatFormat("plain", None), SFTConfig(steps=60, batch_size=32, devices_per_process=1),
                             packing=PackingConfig(rows=8, row_len=128))
    assert losses[-1] < 0.5 * losses[0], losses
    return params


if __name__ == "__main__":
    out = sys.argv[1]
    with open(f"{out}.tmp", "wb") as f:
        pickle.dump(train(), f)
    os.replace(f"{out}.tmp", out)  # whole or absent: a reader never sees half a file
