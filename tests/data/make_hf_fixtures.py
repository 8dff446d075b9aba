"""Writes the tiny Hugging Face checkpoints and reference logits under tests/data/hf/.

Run once with torch and transformers installed (CI does not need them):

    python tests/data/make_hf_fixtures.py

Each family gets a random model small enough to commit (a few hundred KB), saved by
``save_pretrained`` as safetensors, plus ``tokens.npy`` and the float32 ``logits.npy``
that transformers' eager attention computes for them. Weights are drawn with a large
standard deviation so that every path (biases, q/k norms, rotary scaling, sliding window)
moves the logits visibly.
"""

import json
import pathlib

import numpy as np
import torch
import transformers

OUT = pathlib.Path(__file__).parent / "hf"
COMMON = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=8, intermediate_size=64, max_position_embeddings=64,
              rms_norm_eps=1e-6)
FAMILIES = {
    # Llama 3.1 frequency scaling with a short original context so it changes the result.
    "llama": (transformers.LlamaConfig, dict(rope_theta=10000.0, rope_scaling=dict(
        rope_type="llama3", factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=16))),
    # Mistral v0.1-style sliding window, shorter than the test sequence.
    "mistral": (transformers.MistralConfig, dict(rope_theta=10000.0, sliding_window=4)),
    "qwen2": (transformers.Qwen2Config, dict(rope_theta=1e6)),
    "qwen3": (transformers.Qwen3Config, dict(rope_theta=1e6, tie_word_embeddings=True)),
}


def main():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, COMMON["vocab_size"], size=(2, 12))
    for name, (cls, extra) in FAMILIES.items():
        config = cls(**COMMON, **extra)
        config._attn_implementation = "eager"
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.3)
                if p.ndim == 1 and "norm" in "".join(n for n, q in model.named_parameters() if q is p):
                    p.add_(1.0)  # norm scales around 1
        model.eval()
        out = OUT / name
        model.save_pretrained(out, safe_serialization=True)
        with torch.no_grad():
            logits = model(torch.tensor(tokens)).logits.float().numpy()
        np.save(out / "tokens.npy", tokens.astype(np.int32))
        np.save(out / "logits.npy", logits.astype(np.float32))
        (out / "versions.json").write_text(json.dumps(
            {"torch": torch.__version__, "transformers": transformers.__version__}))
        print(name, logits.shape, float(np.abs(logits).mean()))


if __name__ == "__main__":
    main()
