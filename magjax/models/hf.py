"""Hugging Face checkpoints: ``load`` a directory into a sharded Decoder, ``save`` one back.

A directory holds ``config.json`` and one ``model.safetensors`` or several shards named by
``model.safetensors.index.json``. Multimodal Mistral 3 checkpoints (Mistral Small 3.1,
Magistral Small 1.2: ``Mistral3ForConditionalGeneration``) load as their text decoder: the
config's ``text_config``, the tensors under ``language_model.`` (or, as transformers 5
saves them, ``model.language_model.``), the vision encoder and projector left unread.

Names and layouts map one to one onto magjax's params (``q_proj.weight [h*e, d]`` becomes
``wq [d, h, e]`` and so on); magjax uses Hugging Face's
rotate-half rotary convention, so no q/k permutation is needed. Mistral's own layout
(``params.json`` + ``consolidated.safetensors``) is read too, in these terms, by
``mistral_native.py``, which permutes q/k; Meta's original ``consolidated.pth`` is not.

Loading never builds a full host copy per device: each device's shard is sliced straight
out of the memory-mapped file by ``jax.make_array_from_callback``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from magjax.models import decoder
from magjax.models.config import DTYPES, ModelConfig, RopeScaling
from magjax.models.safetensors_file import SafetensorsError, SafetensorsFile, save_file

ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                 "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
# Tensors some exporters write that carry no weights.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
# Multimodal wrappers whose text decoder is a supported family: model_type -> where the
# vision side's tensors live (never read: RL here is on text).
_MULTIMODAL = {"mistral3": ("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
                            "model.multi_modal_projector.")}


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded; the message names the file, tensor or field."""


# ----------------------------------------------------------------------------- config


def _rope(hf: dict, where: str) -> tuple[float, RopeScaling | None]:
    # transformers >= 5 nests rotary settings in `rope_parameters`; older configs use
    # `rope_theta` and `rope_scaling` at the top level.
    params = dict(hf.get("rope_parameters") or {})
    scaling = hf.get("rope_scaling") or params
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    rope_type = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if rope_type == "default":
        return theta, None
    if rope_type != "llama3":
        raise CheckpointError(f"{where}: unsupported config field rope_scaling.rope_type={rope_type!r} (supported: default, llama3)")
    return theta, RopeScaling(
        factor=float(scaling["factor"]), low_freq_factor=float(scaling["low_freq_factor"]),
        high_freq_factor=float(scaling["high_freq_factor"]),
        original_max_position_embeddings=int(scaling["original_max_position_embeddings"]))


def config_from_hf(hf: dict, *, dtype: str = "float32", where: str = "config.json") -> ModelConfig:
    """Translates a Hugging Face ``config.json`` dict; unsupported settings raise, naming the field.
    A multimodal wrapper's (``_MULTIMODAL``) is its ``text_config``'s."""
    if hf.get("model_type") in _MULTIMODAL:
        text = hf.get("text_config")
        if not isinstance(text, dict):
            raise CheckpointError(f"{where}: model_type {hf['model_type']!r} without a text_config")
        # Settings the wrapper may hold for its text model rather than in text_config.
        inherited = {k: hf[k] for k in ("tie_word_embeddings",) if k in hf and k not in text}
        return config_from_hf({"model_type": "mistral", **inherited, **text}, dtype=dtype, where=f"{where} text_config")
    family = hf.get("model_type")
    if family not in ARCHITECTURES:
        raise CheckpointError(f"{where}: unknown model_type {family!r} (supported: {', '.join(ARCHITECTURES)})")
    unsupported = {
        "hidden_act": lambda v: v not in (None, "silu"),
        "mlp_bias": bool,
        "attention_bias": lambda v: bool(v) and family != "qwen3",
        "use_sliding_window": lambda v: bool(v) and family in ("qwen2", "qwen3"),
    }
    for field, bad in unsupported.items():
        if field in hf and bad(hf[field]):
            raise CheckpointError(f"{where}: unsupported config field {field}={hf[field]!r}")
    if family == "qwen3" and hf.get("attention_bias"):
        raise CheckpointError(f"{where}: unsupported config field attention_bias=True")
    try:
        heads = int(hf["num_attention_heads"])
        hidden = int(hf["hidden_size"])
        theta, scaling = _rope(hf, where)
        return ModelConfig(
            family=family,
            vocab_size=int(hf["vocab_size"]),
            hidden_size=hidden,
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or heads),
            head_dim=int(hf.get("head_dim") or hidden // heads),
            intermediate_size=int(hf["intermediate_size"]),
            rope_theta=theta,
            rope_scaling=scaling,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            qkv_bias=family == "qwen2",
            qk_norm=family == "qwen3",
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            sliding_window=hf.get("sliding_window") if family == "mistral" else None,
            max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
            param_dtype=dtype,
            dtype=dtype,
        )
    except KeyError as err:
        raise CheckpointError(f"{where}: missing config field {err.args[0]!r}") from None


def config_to_hf(config: ModelConfig) -> dict:
    c = config
    hf = {
        "architectures": [ARCHITECTURES[c.family]], "model_type": c.family,
        "vocab_size": c.vocab_size, "hidden_size": c.hidden_size, "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads, "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim, "intermediate_size": c.intermediate_size, "hidden_act": "silu",
        "rms_norm_eps": c.rms_norm_eps, "rope_theta": c.rope_theta,
        "tie_word_embeddings": c.tie_embeddings, "max_position_embeddings": c.max_position_embeddings,
        "torch_dtype": c.param_dtype, "attention_bias": False,
    }
    if c.rope_scaling is not None:
        s = c.rope_scaling
        hf["rope_scaling"] = {"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                              "high_freq_factor": s.high_freq_factor,
                              "original_max_position_embeddings": s.original_max_position_embeddings}
    if c.family == "mistral":
        hf["sliding_window"] = c.sliding_window
    if c.family in ("qwen2", "qwen3"):
        hf["use_sliding_window"] = False
    if c.sliding_window is not None and c.family != "mistral":
        raise CheckpointError(f"sliding_window is only exported for the mistral family, not {c.family}")
    return hf


# ----------------------------------------------------------------------------- names and layouts


def _tensor_map(config: ModelConfig) -> dict[tuple, tuple[str, Callable, Callable]]:
    """(params path) -> (HF name template, HF->magjax layout, magjax->HF layout).

    Templates contain ``{i}`` for stacked layer tensors. Layout functions act on one layer.
    """
    c = config
    h, k, e, d = c.num_heads, c.num_kv_heads, c.head_dim, c.hidden_size
    same = lambda x: x  # noqa: E731
    t = lambda x: x.T  # noqa: E731
    heads_in = lambda n: (lambda w: w.T.reshape(d, n, e), lambda w: w.reshape(d, n * e).T)  # noqa: E731
    bias = lambda n: (lambda b: b.reshape(n, e), lambda b: b.reshape(n * e))  # noqa: E731
    p = "model.layers.{i}."
    m = {
        ("embed",): ("model.embed_tokens.weight", same, same),
        ("final_norm",): ("model.norm.weight", same, same),
        ("layers", "attn_norm"): (p + "input_layernorm.weight", same, same),
        ("layers", "mlp_norm"): (p + "post_attention_layernorm.weight", same, same),
        ("layers", "wq"): (p + "self_attn.q_proj.weight", *heads_in(h)),
        ("layers", "wk"): (p + "self_attn.k_proj.weight", *heads_in(k)),
        ("layers", "wv"): (p + "self_attn.v_proj.weight", *heads_in(k)),
        ("layers", "wo"): (p + "self_attn.o_proj.weight", lambda w: w.T.reshape(h, e, d),
                           lambda w: w.reshape(h * e, d).T),
        ("layers", "w_gate"): (p + "mlp.gate_proj.weight", t, t),
        ("layers", "w_up"): (p + "mlp.up_proj.weight", t, t),
        ("layers", "w_down"): (p + "mlp.down_proj.weight", t, t),
    }
    if c.qkv_bias:
        m[("layers", "bq")] = (p + "self_attn.q_proj.bias", *bias(h))
        m[("layers", "bk")] = (p + "self_attn.k_proj.bias", *bias(k))
        m[("layers", "bv")] = (p + "self_attn.v_proj.bias", *bias(k))
    if c.qk_norm:
        m[("layers", "q_norm")] = (p + "self_attn.q_norm.weight", same, same)
        m[("layers", "k_norm")] = (p + "self_attn.k_norm.weight", same, same)
    if not c.tie_embeddings:
        m[("lm_head",)] = ("lm_head.weight", t, t)
    return m


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree, path, value):
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def open_safetensors(file: Path) -> SafetensorsFile:
    """One weights file of a checkpoint; a corrupt one is a CheckpointError naming it."""
    try:
        return SafetensorsFile(file)
    except SafetensorsError as err:
        raise CheckpointError(str(err)) from None


class _Tensors:
    """The tensors of a checkpoint directory, across shards, opened lazily."""

    def __init__(self, path: Path):
        self.path = path
        self._files: dict[str, SafetensorsFile] = {}
        index = path / "model.safetensors.index.json"
        single = path / "model.safetensors"
        if index.exists():
            try:
                self.where = dict(json.loads(index.read_text())["weight_map"])
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise CheckpointError(f"{index}: corrupt index file ({err})") from None
        elif single.exists():
            self.where = {name: "model.safetensors" for name in self._open("model.safetensors").keys()}
        else:
            raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json")

    def _open(self, filename: str) -> SafetensorsFile:
        if filename not in self._files:
            file = self.path / filename
            if not file.exists():
                raise CheckpointError(f"{file}: shard named by the index is missing")
            self._files[filename] = open_safetensors(file)
        return self._files[filename]

    def get(self, name: str) -> np.ndarray:
        if name not in self.where:
            raise CheckpointError(f"{self.path}: checkpoint is missing tensor {name!r}")
        file = self._open(self.where[name])
        if name not in file.keys():
            raise CheckpointError(f"{file.path}: index names tensor {name!r} but the file lacks it")
        return file.get(name)


def load(path: str | os.PathLike, *, dtype: str = "float32", mesh=None):
    """Reads a Hugging Face directory (or Mistral's own layout, ``mistral_native.py``) into
    ``(config, Decoder)``.

    With a mesh, every parameter is created directly in its sharded layout (see
    magjax.sharding); without one, on the default device. Parameters are cast to ``dtype``.
    """
    from magjax.models import mistral_native

    path = Path(path)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    config_file = path / "config.json"
    if mistral_native.is_native(path):  # params.json + consolidated.safetensors, read in Hugging Face's terms
        hf_config, tensors, where = mistral_native.open_checkpoint(path)
    elif not config_file.exists():
        raise CheckpointError(f"{config_file}: not found (is {path} a Hugging Face model directory, or Mistral's "
                              f"with params.json?)")
    else:
        try:
            hf_config = json.loads(config_file.read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{config_file}: not valid JSON ({err})") from None
        tensors, where = _Tensors(path), str(config_file)
    config = config_from_hf(hf_config, dtype=dtype, where=where)
    name_in_file, skipped = _text_decoder_names(hf_config, tensors.where)
    shapes = decoder.param_shapes(config)
    shardings = decoder.param_shardings(config, mesh) if mesh is not None else None
    np_dtype = np.dtype(DTYPES[dtype])
    params: dict = {}
    expected = set()
    for pth, (template, to_ours, _) in _tensor_map(config).items():
        shape = _get(shapes, pth)
        stacked = pth[0] == "layers"
        names = [name_in_file(template.format(i=i)) for i in range(config.num_layers)] if stacked \
            else [name_in_file(template)]
        expected.update(names)
        hf_shape = _hf_shape(config, pth)
        views = []
        for name in names:
            raw = tensors.get(name)
            if raw.shape != hf_shape:
                raise CheckpointError(
                    f"{path}: tensor {name!r} has shape {raw.shape}, but {Path(where).name} implies {hf_shape}")
            views.append(to_ours(raw))

        def read(index, views=views, stacked=stacked):
            if stacked:
                layer_idx, rest = index[0], index[1:]
                return np.stack([v[rest] for v in views[layer_idx]]).astype(np_dtype)
            return np.asarray(views[0][index]).astype(np_dtype)

        sharding = _get(shardings, pth) if shardings is not None else jax.sharding.SingleDeviceSharding(jax.devices()[0])
        _set(params, pth, jax.make_array_from_callback(shape, sharding, read))
    unexpected = sorted(n for n in tensors.where
                        if n not in expected and not n.endswith(_IGNORED_SUFFIXES) and not n.startswith(skipped))
    if unexpected:
        raise CheckpointError(f"{path}: unexpected tensor {unexpected[0]!r} for a {config.family} config"
                              + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
    return config, decoder.Decoder(config, params=params)


def _text_decoder_names(hf_config: dict, names) -> tuple[Callable[[str], str], tuple[str, ...]]:
    """How a text decoder's tensor name (``model.layers.0...``, ``lm_head.weight``) is spelled
    in this checkpoint, and the prefixes of the tensors left unread."""
    skipped = _MULTIMODAL.get(hf_config.get("model_type"))
    if skipped is None:
        return (lambda name: name), ()
    if "language_model.model.embed_tokens.weight" in names:  # as transformers 4 saves it
        return (lambda name: "language_model." + name), skipped
    if "model.language_model.embed_tokens.weight" in names:  # as transformers 5 saves it
        return (lambda name: name.replace("model.", "model.language_model.", 1) if name.startswith("model.")
                else name), skipped
    raise CheckpointError(f"checkpoint of model_type {hf_config['model_type']!r} has no "
                          "language_model.model.embed_tokens.weight or model.language_model.embed_tokens.weight")


def _hf_shape(config: ModelConfig, pth: tuple) -> tuple:
    """The Hugging Face shape of one (per-layer) tensor, for error messages."""
    shape = _get(decoder.param_shapes(config), pth)
    shape = shape[1:] if pth[0] == "layers" else shape
    _, _, from_ours = _tensor_map(config)[pth]
    return from_ours(np.empty(shape, np.int8)).shape


def save(model: decoder.Decoder, config: ModelConfig, path: str | os.PathLike, *,
         max_shard_bytes: int = 4 << 30):
    """Writes ``model`` as a Hugging Face directory that ``transformers`` loads back."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    params = model.params()
    tensors: dict[str, np.ndarray] = {}
    for pth, (template, _, from_ours) in _tensor_map(config).items():
        value = np.asarray(jax.device_get(_get(params, pth)))
        if pth[0] == "layers":
            for i in range(config.num_layers):
                tensors[template.format(i=i)] = np.ascontiguousarray(from_ours(value[i]))
        else:
            tensors[template] = np.ascontiguousarray(from_ours(value))
    shards, current, size = [], {}, 0
    for name in sorted(tensors):
        if current and size + tensors[name].nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = tensors[name]
        size += tensors[name].nbytes
    shards.append(current)
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], path / "model.safetensors", metadata)
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            filename = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, path / filename, metadata)
            weight_map |= {name: filename for name in shard}
        index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}, "weight_map": weight_map}
        (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (path / "config.json").write_text(json.dumps(config_to_hf(config), indent=2))
