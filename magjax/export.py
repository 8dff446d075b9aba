"""``magjax export``: a checkpoint's policy as a Hugging Face directory, for serving.

The checkpoint's JSON record names the model and optimizer configuration, so the state
can be rebuilt abstractly and restored; the parameters are then written with ``hf.save``
(safetensors + config.json), and a Hugging Face tokenizer's files are copied beside them.
"""

from __future__ import annotations

import os
import shutil

import jax

from magjax.checkpoint import Checkpointer
from magjax.models import decoder, hf
from magjax.models.config import ModelConfig, RopeScaling
from magjax.rl import optimizer as opt_lib, train_step

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


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
    tokenizer = meta.get("tokenizer", "byte")
    if tokenizer != "byte":
        source = tokenizer if os.path.isdir(tokenizer) else os.path.dirname(tokenizer)
        for name in TOKENIZER_FILES:
            if os.path.exists(os.path.join(source, name)):
                shutil.copy(os.path.join(source, name), out_dir)
    return out_dir
