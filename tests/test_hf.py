import json
import os
import shutil

import jax
import numpy as np
import pytest

from magjax.models import decoder, hf
from magjax.models.safetensors_file import SafetensorsFile, save_file

FAMILIES = ["llama", "mistral", "qwen2", "qwen3"]


def _fixture(data_dir, family):
    return os.path.join(data_dir, "hf", family)


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(data_dir, family):
    path = _fixture(data_dir, family)
    config, model = hf.load(path)
    assert config.family == family
    tokens, ref = np.load(os.path.join(path, "tokens.npy")), np.load(os.path.join(path, "logits.npy"))
    np.testing.assert_allclose(np.asarray(model(tokens)), ref, atol=1e-4, rtol=1e-4)


def test_fixtures_exercise_every_option(data_dir):
    configs = {f: hf.load(_fixture(data_dir, f))[0] for f in FAMILIES}
    assert configs["llama"].rope_scaling is not None
    assert configs["mistral"].sliding_window == 4
    assert configs["qwen2"].qkv_bias and configs["qwen3"].qk_norm and configs["qwen3"].tie_embeddings


def test_load_places_each_weight_in_its_sharded_layout(data_dir, mesh_2x4):
    path = _fixture(data_dir, "qwen2")
    config, model = hf.load(path, mesh=mesh_2x4)
    expected = decoder.param_shardings(config, mesh_2x4)
    for arr, sharding in zip(jax.tree.leaves(model.params()), jax.tree.leaves(expected)):
        assert arr.sharding == sharding
    tokens, ref = np.load(os.path.join(path, "tokens.npy")), np.load(os.path.join(path, "logits.npy"))
    np.testing.assert_allclose(np.asarray(model(tokens, mesh=mesh_2x4)), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_then_load_round_trips_every_tensor(data_dir, tmp_path, family):
    config, model = hf.load(_fixture(data_dir, family))
    hf.save(model, config, tmp_path / "one")
    hf.save(model, config, tmp_path / "many", max_shard_bytes=20_000)
    assert (tmp_path / "many" / "model.safetensors.index.json").exists()
    src = SafetensorsFile(os.path.join(_fixture(data_dir, family), "model.safetensors"))
    for out in ("one", "many"):
        _, again = hf.load(tmp_path / out)
        for a, b in zip(jax.tree.leaves(model.params()), jax.tree.leaves(again.params())):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    written = SafetensorsFile(tmp_path / "one" / "model.safetensors")
    assert sorted(written.keys()) == sorted(src.keys())
    for name in src.keys():
        np.testing.assert_array_equal(written.get(name), src.get(name))


def test_transformers_loads_what_save_writes(data_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    path = _fixture(data_dir, "qwen3")
    config, model = hf.load(path)
    hf.save(model, config, tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager")
    tokens, ref = np.load(os.path.join(path, "tokens.npy")), np.load(os.path.join(path, "logits.npy"))
    with torch.no_grad():
        out = reloaded(torch.tensor(tokens.astype(np.int64))).logits.numpy()
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)


def _copy(data_dir, tmp_path, family="llama"):
    dst = tmp_path / family
    shutil.copytree(_fixture(data_dir, family), dst)
    return dst


def _one_line_error(path, match):
    with pytest.raises(hf.CheckpointError, match=match) as info:
        hf.load(path)
    assert "\n" not in str(info.value)


def test_missing_tensor_is_named(data_dir, tmp_path):
    path = _copy(data_dir, tmp_path)
    src = SafetensorsFile(path / "model.safetensors")
    tensors = {k: np.array(src.get(k)) for k in src.keys() if k != "model.layers.1.mlp.up_proj.weight"}
    save_file(tensors, path / "model.safetensors")
    _one_line_error(path, "missing tensor 'model.layers.1.mlp.up_proj.weight'")


def test_wrong_shape_is_named(data_dir, tmp_path):
    path = _copy(data_dir, tmp_path)
    src = SafetensorsFile(path / "model.safetensors")
    tensors = {k: np.array(src.get(k)) for k in src.keys()}
    tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((8, 32), np.float32)
    save_file(tensors, path / "model.safetensors")
    _one_line_error(path, r"'model.layers.0.self_attn.k_proj.weight' has shape \(8, 32\).*\(16, 32\)")


def test_corrupt_and_truncated_files_are_named(data_dir, tmp_path):
    path = _copy(data_dir, tmp_path)
    file = path / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    _one_line_error(path, "model.safetensors: corrupt or truncated")
    file.write_bytes(b"\xff" * 64)
    _one_line_error(path, "model.safetensors: corrupt")


def test_unknown_model_type_and_unsupported_fields_are_named(data_dir, tmp_path):
    path = _copy(data_dir, tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(cfg | {"model_type": "gpt2"}))
    _one_line_error(path, "unknown model_type 'gpt2'")
    (path / "config.json").write_text(json.dumps(cfg | {"hidden_act": "gelu"}))
    _one_line_error(path, "unsupported config field hidden_act='gelu'")
    rope = cfg["rope_parameters"] | {"rope_type": "yarn"}
    (path / "config.json").write_text(json.dumps(cfg | {"rope_parameters": rope}))
    _one_line_error(path, "rope_type='yarn'")
    (path / "config.json").unlink()
    _one_line_error(path, "config.json: not found")


@pytest.mark.parametrize("layout", ["transformers4", "transformers5"])
def test_a_multimodal_mistral3_checkpoint_loads_as_its_text_decoder(data_dir, tmp_path, layout):
    """Mistral Small 3.1 and Magistral Small 1.2 ship as Mistral3ForConditionalGeneration:
    the Mistral fixture wrapped that way (text_config, prefixed names, a vision tower and a
    projector beside) gives transformers' logits of the text model."""
    src = _fixture(data_dir, "mistral")
    text_config = json.loads(open(os.path.join(src, "config.json")).read())
    text_config.pop("architectures", None)
    config_json = {"architectures": ["Mistral3ForConditionalGeneration"], "model_type": "mistral3",
                   "text_config": text_config, "vision_config": {"model_type": "pixtral", "hidden_size": 8},
                   "image_token_index": 10, "tie_word_embeddings": text_config.pop("tie_word_embeddings", False)}
    tensors = {k: np.array(v) for k, v in ((k, SafetensorsFile(os.path.join(src, "model.safetensors")).get(k))
                                           for k in SafetensorsFile(os.path.join(src, "model.safetensors")).keys())}
    if layout == "transformers4":
        renamed = {"language_model." + k: v for k, v in tensors.items()}
        vision = ["vision_tower.transformer.layers.0.attention.q_proj.weight", "multi_modal_projector.linear_1.weight"]
    else:
        renamed = {("model.language_model." + k[len("model."):] if k.startswith("model.") else k): v
                   for k, v in tensors.items()}
        vision = ["model.vision_tower.transformer.layers.0.attention.q_proj.weight",
                  "model.multi_modal_projector.linear_1.weight"]
    renamed |= {name: np.ones((4, 8), np.float32) for name in vision}
    save_file(renamed, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(config_json))
    config, model = hf.load(tmp_path)
    assert config.family == "mistral" and config.sliding_window == 4
    tokens, ref = np.load(os.path.join(src, "tokens.npy")), np.load(os.path.join(src, "logits.npy"))
    np.testing.assert_allclose(np.asarray(model(tokens)), ref, atol=1e-4, rtol=1e-4)
    # A text tensor of the wrapper still has to be there, and anything else is still refused.
    save_file({k: v for k, v in renamed.items() if "layers.1.mlp.up_proj" not in k}, tmp_path / "model.safetensors")
    _one_line_error(tmp_path, r"missing tensor '(model\.)?language_model\.(model\.)?layers\.1\.mlp\.up_proj\.weight'")
    save_file(renamed | {"audio_tower.conv.weight": np.ones(2, np.float32)}, tmp_path / "model.safetensors")
    _one_line_error(tmp_path, "unexpected tensor 'audio_tower.conv.weight'")
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in config_json.items() if k != "text_config"}))
    _one_line_error(tmp_path, "model_type 'mistral3' without a text_config")
