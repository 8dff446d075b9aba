"""``magjax export``: a checkpoint's policy as a Hugging Face directory, for serving.

The checkpoint's JSON record names the model and optimizer configuration, so the state
can be rebuilt abstractly and restored; the parameters are then written with ``hf.save``
(safetensors + config.json), and the run's tokenizer files are copied beside them
(``copy_tokenizer``, which the train and SFT jobs' ``final_hf`` use too), so the directory
loads, evaluates and serves on its own.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import jax

from magjax.checkpoint import Checkpointer
from magjax.models import decoder, hf
from magjax.models.config import ModelConfig, RopeScaling
from magjax.rl import optimizer as opt_lib, train_step

# A tokenizer's files, in either form magjax reads (models/tokenizer.py, models/tekken.py).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tekken.json")


def copy_tokenizer(spec: str, out_dir: str) -> list[str]:
    """Copies the files of tokenizer ``spec`` (what ``load_tokenizer`` takes) into ``out_dir``,
    under the names ``load_tokenizer`` looks for there; returns those names. The built-in
    byte tokenizer has no files."""
    if spec == "byte":
        return []
    if os.path.isdir(spec):
        sources = {name: os.path.join(spec, name) for name in TOKENIZER_FILES}
    else:  # a file: it becomes tokenizer.json or tekken.json, its HF companions beside it
        from magjax.models import tekken

        data = tekken.read_json(Path(spec))
        name = "tekken.json" if isinstance(data, dict) and tekken.is_tekken(data) else "tokenizer.json"
        folder = os.path.dirname(spec)
        sources = {name: spec} | {n: os.path.join(folder, n) for n in ("tokenizer_config.json", "special_tokens_map.json")}
    copied = [name for name, source in sources.items() if os.path.isfile(source)]
    os.makedirs(out_dir, exist_ok=True)
    for name in copied:
        shutil.copyfile(sources[name], os.path.join(out_dir, name))
    return copied


def model_config_from_dict(d: dict) -> ModelConfig:
    d = dict(d)
    if d.get("rope_scaling") is not None:
        d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
    return ModelConfig(**d)


def restore_params(ckpt: Checkpointer, step: int | None = None) -> tuple[ModelConfig, dict, dict]:
    """(model config, params, JSON record) of a checkpoint step, on this process's first device.

    The record names the model and optimizer configuration, so the train state is rebuilt
    abstractly and restored without knowing the run's code paths.
    """
    step, meta = ckpt.read_meta(step)
    config = model_config_from_dict(meta["model_config"])
    tx, _ = opt_lib.make_optimizer(opt_lib.OptimizerConfig(**meta["optimizer_config"]))
    abstract = jax.eval_shape(lambda: train_step.init_state(decoder.init_params(config, jax.random.key(0)), tx))
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract)
    state, _ = ckpt.restore_step(step, abstract)
    return config, state.params, meta


def export(checkpoint_dir: str, out_dir: str, step: int | None = None) -> str:
    ckpt = Checkpointer(checkpoint_dir)
    try:
        config, params, meta = restore_params(ckpt, step)
    finally:
        ckpt.close()
    hf.save(decoder.Decoder(config, params=params), config, out_dir)
    copy_tokenizer(meta.get("tokenizer", "byte"), out_dir)
    return out_dir
