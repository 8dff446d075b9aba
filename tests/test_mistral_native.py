"""Mistral's own checkpoint layout (params.json + consolidated.safetensors) loads as the
same decoder: checked against a NumPy forward pass written the way Mistral's reference
code computes (rotary on consecutive pairs as complex numbers), not against magjax's
own conversion."""

import json

import ml_dtypes
import numpy as np
import pytest

from magjax.models import hf, mistral_native
from magjax.models.safetensors_file import save_file

PARAMS = {"dim": 64, "n_layers": 2, "head_dim": 16, "hidden_dim": 96, "n_heads": 4, "n_kv_heads": 2,
          "norm_eps": 1e-5, "vocab_size": 128, "rope_theta": 1_000_000.0,
          # Mistral Small 3.1's params.json describes its vision encoder too: never read.
          "vision_encoder": {"hidden_size": 32, "num_hidden_layers": 1, "image_size": 64, "patch_size": 16}}


def _native_weights(rng, p) -> dict:
    d, h, k, e, f, v = p["dim"], p["n_heads"], p["n_kv_heads"], p["head_dim"], p["hidden_dim"], p["vocab_size"]
    w = lambda *shape: (rng.standard_normal(shape) * 0.2).astype(np.float32)  # noqa: E731
    tensors = {"tok_embeddings.weight": w(v, d), "norm.weight": 1 + w(d), "output.weight": w(v, d),
               "vision_encoder.patch_conv.weight": w(8, 3, 4, 4), "vision_language_adapter.w_in.weight": w(d, 8),
               "patch_merger.merging_layer.weight": w(8, 32), "pre_mm_projector_norm.weight": w(8)}
    for i in range(p["n_layers"]):
        tensors |= {f"layers.{i}.attention.wq.weight": w(h * e, d), f"layers.{i}.attention.wk.weight": w(k * e, d),
                    f"layers.{i}.attention.wv.weight": w(k * e, d), f"layers.{i}.attention.wo.weight": w(d, h * e),
                    f"layers.{i}.attention_norm.weight": 1 + w(d), f"layers.{i}.ffn_norm.weight": 1 + w(d),
                    f"layers.{i}.feed_forward.w1.weight": w(f, d), f"layers.{i}.feed_forward.w2.weight": w(d, f),
                    f"layers.{i}.feed_forward.w3.weight": w(f, d)}
    return tensors


def _write(path, params, tensors):
    path.mkdir(exist_ok=True)
    (path / "params.json").write_text(json.dumps(params))
    save_file(tensors, path / "consolidated.safetensors", {"format": "pt"})
    return path


def _reference_logits(p, t, tokens):
    """Mistral's reference computation, in float64 NumPy."""
    h_, k_, e, eps = p["n_heads"], p["n_kv_heads"], p["head_dim"], p["norm_eps"]
    t = {name: np.asarray(x, np.float64) for name, x in t.items()}
    norm = lambda x, w: x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w  # noqa: E731
    n = len(tokens)
    angles = np.arange(n)[:, None] * (1.0 / p["rope_theta"] ** (np.arange(0, e, 2) / e))[None]  # [t, e/2]

    def rotary(x):  # [t, heads, e]: pairs (2i, 2i+1) as one complex number, turned by position
        z = (x[..., 0::2] + 1j * x[..., 1::2]) * np.exp(1j * angles)[:, None, :]
        return np.stack([z.real, z.imag], -1).reshape(x.shape)

    x = t["tok_embeddings.weight"][tokens]
    causal = np.tril(np.ones((n, n), bool))
    for i in range(p["n_layers"]):
        w = lambda name: t[f"layers.{i}.{name}.weight"]  # noqa: E731
        a = norm(x, w("attention_norm"))
        q = rotary((a @ w("attention.wq").T).reshape(n, h_, e))
        k = rotary((a @ w("attention.wk").T).reshape(n, k_, e))
        v = (a @ w("attention.wv").T).reshape(n, k_, e)
        k, v = np.repeat(k, h_ // k_, axis=1), np.repeat(v, h_ // k_, axis=1)
        scores = np.einsum("qhe,khe->hqk", q, k) / np.sqrt(e)
        scores = np.where(causal[None], scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        x = x + np.einsum("hqk,khe->qhe", probs, v).reshape(n, h_ * e) @ w("attention.wo").T
        m = norm(x, w("ffn_norm"))
        gate = m @ w("feed_forward.w1").T
        x = x + ((gate / (1 + np.exp(-gate))) * (m @ w("feed_forward.w3").T)) @ w("feed_forward.w2").T
    return norm(x, t["norm.weight"]) @ t["output.weight"].T


@pytest.mark.parametrize("stored", [np.float32, ml_dtypes.bfloat16])  # Mistral ships bfloat16
def test_a_mistral_layout_checkpoint_computes_as_mistrals_reference(tmp_path, stored):
    tensors = {name: x.astype(stored) for name, x in _native_weights(np.random.default_rng(0), PARAMS).items()}
    path = _write(tmp_path / "native", PARAMS, tensors)
    config, model = hf.load(path)
    assert (config.family, config.num_layers, config.num_heads, config.num_kv_heads, config.head_dim) == \
        ("mistral", 2, 4, 2, 16)
    assert config.rope_theta == 1e6 and config.intermediate_size == 96 and not config.tie_embeddings
    tokens = np.random.default_rng(1).integers(0, PARAMS["vocab_size"], 12)
    logits = np.asarray(model(tokens[None]))[0]
    np.testing.assert_allclose(logits, _reference_logits(PARAMS, tensors, tokens), atol=2e-4, rtol=2e-4)


def test_saved_in_hugging_faces_layout_it_loads_alike(tmp_path):
    """Exported (final_hf, magjax export), the same weights in Hugging Face's layout."""
    path = _write(tmp_path / "native", PARAMS, _native_weights(np.random.default_rng(2), PARAMS))
    config, model = hf.load(path)
    hf.save(model, config, tmp_path / "hf")
    _, again = hf.load(tmp_path / "hf")
    tokens = np.arange(10)[None]
    np.testing.assert_array_equal(np.asarray(model(tokens)), np.asarray(again(tokens)))


def test_hugging_faces_files_win_where_a_directory_has_both(tmp_path, data_dir):
    import shutil

    path = tmp_path / "both"
    shutil.copytree(f"{data_dir}/hf/mistral", path)
    (path / "params.json").write_text(json.dumps(PARAMS))  # and no consolidated.safetensors: never opened
    config, _ = hf.load(path)
    assert config.sliding_window == 4  # the fixture's config.json


@pytest.mark.parametrize("change, fault", [
    ({"moe": {"num_experts": 8}}, "unsupported field moe"),
    ({"dim": None}, "field dim=None is not an integer"),
    ({"rope_theta": "1e6"}, "field rope_theta='1e6' is not a number"),
    ("drop n_layers", "missing field 'n_layers'"),
    ("drop rope_theta", "missing field 'rope_theta'"),
])
def test_a_params_file_magjax_cannot_honour_is_named(tmp_path, change, fault):
    params = dict(PARAMS)
    if isinstance(change, str):
        del params[change.split()[1]]
    else:
        params |= change
    path = _write(tmp_path / "bad", params, _native_weights(np.random.default_rng(3), PARAMS))
    with pytest.raises(hf.CheckpointError, match=fault) as err:
        hf.load(path)
    assert "params.json" in str(err.value)


def test_missing_or_misshapen_weights_are_named(tmp_path):
    tensors = _native_weights(np.random.default_rng(4), PARAMS)
    path = tmp_path / "nofile"
    path.mkdir()
    (path / "params.json").write_text(json.dumps(PARAMS))
    with pytest.raises(hf.CheckpointError, match="consolidated.safetensors: not found"):
        hf.load(path)
    (path / "consolidated.safetensors").write_bytes(b"\x07")
    with pytest.raises(hf.CheckpointError, match="consolidated.safetensors: corrupt safetensors file"):
        hf.load(path)
    del tensors["layers.1.feed_forward.w3.weight"]
    with pytest.raises(hf.CheckpointError, match="missing tensor 'layers.1.feed_forward.w3.weight'"):
        hf.load(_write(tmp_path / "missing", PARAMS, tensors))
    tensors["layers.1.feed_forward.w3.weight"] = np.zeros((95, 64), np.float32)
    with pytest.raises(hf.CheckpointError, match=r"shape \(95, 64\).*params.json implies \(96, 64\)"):
        hf.load(_write(tmp_path / "misshapen", PARAMS, tensors))
    tensors["layers.1.feed_forward.w3.weight"] = np.zeros((96, 64), np.float32)
    tensors["layers.0.attention.bias_q"] = np.zeros(64, np.float32)
    with pytest.raises(hf.CheckpointError, match="unexpected tensor 'layers.0.attention.bias_q'"):
        hf.load(_write(tmp_path / "extra", PARAMS, tensors))


def test_weights_split_over_several_consolidated_files_load_alike(tmp_path):
    tensors = _native_weights(np.random.default_rng(6), PARAMS)
    whole = _write(tmp_path / "whole", PARAMS, tensors)
    split = tmp_path / "split"
    split.mkdir()
    (split / "params.json").write_text(json.dumps(PARAMS))
    names = sorted(tensors)
    save_file({n: tensors[n] for n in names[::2]}, split / "consolidated-00001-of-00002.safetensors")
    save_file({n: tensors[n] for n in names[1::2]}, split / "consolidated-00002-of-00002.safetensors")
    tokens = np.arange(9)[None]
    np.testing.assert_array_equal(np.asarray(hf.load(whole)[1](tokens)), np.asarray(hf.load(split)[1](tokens)))
    save_file({names[0]: tensors[names[0]]}, split / "consolidated-extra.safetensors")
    with pytest.raises(hf.CheckpointError, match=f"tensor '{names[0]}' is in both"):
        hf.load(split)


def test_the_rotary_permutation_moves_pairs_to_halves():
    # One head of four dims over one input: rows (0, 1, 2, 3) = pairs (0, 1), (2, 3).
    w = np.arange(8, dtype=np.float32).reshape(8, 1)  # two heads
    assert mistral_native.rotate_half_order(w, heads=2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_jobs_take_a_mistral_layout_directory_as_init_from(tmp_path):
    from magjax.jobs.errors import JobError
    from magjax.jobs.records import load_model

    path = _write(tmp_path / "native", PARAMS, _native_weights(np.random.default_rng(5), PARAMS))
    config, params = load_model("tiny", str(path), seed=0)
    assert config.hidden_size == 64 and params["layers"]["wq"].shape == (2, 64, 4, 16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(JobError, match="no params.json"):
        load_model("tiny", str(tmp_path / "empty"), seed=0)
