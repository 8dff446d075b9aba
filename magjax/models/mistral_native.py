"""Mistral's own checkpoint layout: ``params.json`` + ``consolidated.safetensors`` (or
several ``consolidated*.safetensors``), as Mistral publishes its models beside (and
sometimes instead of) the Hugging Face files.

``hf.load`` reads such a directory through this module, which presents it in Hugging
Face's terms: ``params.json`` as a ``config.json`` dict (model_type ``mistral``), and the
tensors under their Hugging Face names. The vision side of multimodal checkpoints
(``vision_encoder.``, ``vision_language_adapter.``, ``patch_merger.``,
``pre_mm_projector_norm.``) is left unread, as for Mistral 3 in the Hugging Face layout.

The one difference in the tensors themselves is rotary order: Mistral rotates consecutive
pairs of each head's query and key dims as complex numbers, Hugging Face (and magjax) the
first half of the head against the second. ``wq`` and ``wk`` rows are permuted per head
to match, as Hugging Face's own conversion does: pair ``(2i, 2i + 1)`` goes to
``(i, i + e/2)``. That permutation copies each layer's ``wq`` and ``wk`` once on the host;
every other tensor is sliced straight out of the memory-mapped file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from magjax.models.hf import CheckpointError, open_safetensors
from magjax.models.safetensors_file import SafetensorsFile

PARAMS = "params.json"
WEIGHTS = "consolidated.safetensors"  # the usual single file
VISION_PREFIXES = ("vision_encoder.", "vision_language_adapter.", "patch_merger.", "pre_mm_projector_norm.")
# rope_theta is required: Mistral's reference code has defaulted it differently over time
# (10,000, then 1,000,000), so an absent value cannot be read one way safely.
_REQUIRED = {"dim": int, "n_layers": int, "n_heads": int, "hidden_dim": int, "vocab_size": int,
             "norm_eps": (int, float), "rope_theta": (int, float)}
_OPTIONAL = {"n_kv_heads": int, "head_dim": int, "sliding_window": int, "max_seq_len": int}
# params.json fields that change the computation in ways magjax's decoder does not.
_UNSUPPORTED = ("moe", "yarn", "rope_scaling", "quantization", "lora", "llama_4_scaling")

_LAYER_NAMES = {  # Mistral's per-layer names -> Hugging Face's
    "attention.wq.weight": "self_attn.q_proj.weight", "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight", "attention.wo.weight": "self_attn.o_proj.weight",
    "attention_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight", "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
}
_TOP_NAMES = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
              "output.weight": "lm_head.weight"}


def is_native(path: Path) -> bool:
    """A directory in Mistral's layout and not (also) in Hugging Face's, which wins."""
    return (path / PARAMS).exists() and not (path / "config.json").exists()


def hf_config(params: dict, where: str) -> dict:
    """``params.json`` as the Hugging Face ``config.json`` of the same text decoder."""
    if not isinstance(params, dict):
        raise CheckpointError(f"{where}: not a JSON object")
    for field in _UNSUPPORTED:
        if params.get(field):
            raise CheckpointError(f"{where}: unsupported field {field}={params[field]!r}")
    for field in _REQUIRED:
        if field not in params:
            raise CheckpointError(f"{where}: missing field {field!r}")
    for field, kind in (_REQUIRED | _OPTIONAL).items():
        value = params.get(field)
        if value is None and field in _OPTIONAL:
            continue
        if isinstance(value, bool) or not isinstance(value, kind):
            raise CheckpointError(f"{where}: field {field}={value!r} is not {'an integer' if kind is int else 'a number'}")
    config = {"model_type": "mistral", "hidden_size": params["dim"], "num_hidden_layers": params["n_layers"],
              "num_attention_heads": params["n_heads"], "intermediate_size": params["hidden_dim"],
              "vocab_size": params["vocab_size"], "rms_norm_eps": params["norm_eps"]}
    config |= {"num_key_value_heads": params.get("n_kv_heads") or params["n_heads"],
               "head_dim": params.get("head_dim") or params["dim"] // params["n_heads"],
               "rope_theta": params["rope_theta"], "sliding_window": params.get("sliding_window"),
               "tie_word_embeddings": bool(params.get("tied_embeddings", False))}
    if params.get("max_seq_len"):
        config["max_position_embeddings"] = params["max_seq_len"]
    return config


def hf_name(name: str) -> str | None:
    """The Hugging Face name of a Mistral tensor name; None for one magjax does not know."""
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "layers" and parts[1].isdigit() and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
    return None


def native_name(name: str) -> str:
    """Mistral's name of a Hugging Face tensor name (``hf_name``'s inverse)."""
    top = {hf: ours for ours, hf in _TOP_NAMES.items()}
    if name in top:
        return top[name]
    layer = {hf: ours for ours, hf in _LAYER_NAMES.items()}
    parts = name.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in layer:
        return f"layers.{parts[2]}.{layer[parts[3]]}"
    return name


def rotate_half_order(w: np.ndarray, heads: int) -> np.ndarray:
    """``[heads * e, d]`` query or key rows from Mistral's interleaved rotary order (pairs
    ``2i, 2i + 1``) to Hugging Face's rotate-half order (dims ``i, i + e/2``)."""
    rows, d = w.shape
    e = rows // heads
    return np.ascontiguousarray(w.reshape(heads, e // 2, 2, d).swapaxes(1, 2).reshape(rows, d))


class NativeTensors:
    """The tensors of a Mistral-layout directory, by their Hugging Face names (``where``,
    ``get``: the interface of hf.py's shard reader). The weights are one
    ``consolidated.safetensors`` or, for larger models, several ``consolidated*.safetensors``."""

    def __init__(self, path: Path, config: dict):
        files = sorted(path.glob("consolidated*.safetensors"))
        if not files:
            raise CheckpointError(f"{path / WEIGHTS}: not found ({PARAMS} is there; Mistral's layout keeps the "
                                  f"weights in consolidated*.safetensors)")
        self.path = path
        self._heads = {"self_attn.q_proj.weight": config["num_attention_heads"],
                       "self_attn.k_proj.weight": config["num_key_value_heads"]}
        self._files: dict[str, SafetensorsFile] = {}
        self._native: dict[str, str] = {}  # Hugging Face name -> Mistral's
        self.where: dict[str, str] = {}  # Hugging Face name -> file, as for a sharded Hugging Face checkpoint
        for file in files:
            self._files[file.name] = opened = open_safetensors(file)
            for name in opened.keys():
                if name.startswith(VISION_PREFIXES):
                    continue
                ours = hf_name(name) or name  # an unknown name: hf.load reports it as unexpected, as spelled
                if ours in self.where:
                    raise CheckpointError(f"{path}: tensor {name!r} is in both {self.where[ours]} and {file.name}")
                self._native[ours], self.where[ours] = name, file.name

    def get(self, name: str) -> np.ndarray:
        if name not in self._native:
            raise CheckpointError(f"{self.path}: checkpoint is missing tensor {native_name(name)!r}")
        raw = self._files[self.where[name]].get(self._native[name])
        heads = self._heads.get(name.split(".", 3)[3]) if name.startswith("model.layers.") else None
        if heads is not None and raw.ndim == 2 and raw.shape[0] % (2 * heads) == 0:  # else hf.load names the shape
            return rotate_half_order(raw, heads)
        return raw


def open_checkpoint(path: Path) -> tuple[dict, NativeTensors, str]:
    """(Hugging Face config dict, tensors, the config file's path) of a Mistral-layout directory."""
    params_file = path / PARAMS
    try:
        params = json.loads(params_file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{params_file}: not valid JSON ({err})") from None
    config = hf_config(params, str(params_file))
    return config, NativeTensors(path, config), str(params_file)
