"""Gin, in one place: registration, parsing, and the operative config.

The configurable pieces are frozen dataclasses and plain functions that live beside the
code they configure; they know nothing of gin. ``register()`` makes them configurable
from the outside (gin's dynamic registration), so a gin file reads like
``Recipe.run = @RunConfig()`` then ``RunConfig.steps = 100``; ``recipe()`` builds the one
``Recipe`` every job takes. Files are searched in the
working directory and in the repository's ``gin/`` folder; an error names the file, line
and binding at fault.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

import gin

# The working directory, the source tree's gin/ (an editable install), and where a wheel
# install puts it (setup.cfg's data_files).
GIN_DIRS = [Path.cwd(), Path(__file__).resolve().parent.parent / "gin", Path(sys.prefix) / "share" / "magjax" / "gin"]


class ConfigError(ValueError):
    """A gin file or binding that cannot be applied; the message says where."""


@functools.cache
def register():
    from magjax import checkpoint, evaluate, loop, mesh, recipe, sft
    from magjax.data import curriculum, sources
    from magjax.jobs import sft as sft_job, train as train_job
    from magjax.models import config as model_config
    from magjax.models import tokenizer
    from magjax.rewards import pool, reward
    from magjax.rl import batching, losses, optimizer
    from magjax.sampling import engine

    for cls in (loop.RunConfig, mesh.MeshConfig, engine.EngineConfig, engine.SamplingConfig, losses.LossConfig,
                optimizer.OptimizerConfig, batching.PackingConfig, batching.AdvantageConfig, reward.RewardConfig,
                pool.PoolConfig,
                sft.SFTConfig, evaluate.EvalConfig, sources.DataConfig, tokenizer.ChatFormat,
                model_config.ModelConfig, model_config.RopeScaling, checkpoint.CheckpointConfig,
                curriculum.Stage, recipe.Recipe):
        gin.external_configurable(cls, module="magjax")
    gin.external_configurable(model_config.preset, module="magjax")
    # The jobs' own switches (train.sft_steps, train.smoke, sft_job.traces); the recipe is
    # passed to them, never bound.
    gin.external_configurable(train_job.train, module="magjax", denylist=["recipe", "run_dir", "strict"])
    gin.external_configurable(sft_job.sft_job, module="magjax", denylist=["recipe", "run_dir", "strict"])


def find_gin_file(name: str) -> str:
    candidates = [Path(name)] + [d / name for d in GIN_DIRS] + [d / f"{name}.gin" for d in GIN_DIRS]
    for c in candidates:
        if c.is_file():
            return str(c)
    searched = ", ".join(str(d) for d in GIN_DIRS if d.is_dir())
    raise ConfigError(f"gin file {name!r} not found (searched {searched})")


def parse(files: list[str], bindings: list[str], *, finalize: bool = True, required_as_none: bool = False):
    """Applies gin files then bindings (``NAME=VALUE``), with errors naming file and line.

    ``required_as_none``: every value left at ``%gin.REQUIRED`` (a checkpoint, a dataset)
    becomes None instead of an error, for commands that read only the configuration's
    shapes (``magjax plan``) and so must not need them."""
    register()
    gin.clear_config()
    for d in GIN_DIRS:
        if d.is_dir():
            gin.add_config_file_search_path(str(d))
    paths = [find_gin_file(f) for f in files]
    quiet = _DropGinSearchMisses()
    logging.getLogger().addFilter(quiet)  # gin logs every search-path miss of an include as an error
    try:
        gin.parse_config_files_and_bindings(paths, bindings, finalize_config=finalize and not required_as_none)
        if required_as_none:
            for key in _required_bindings():
                gin.bind_parameter(key, None)
            if finalize:
                gin.finalize()
    except (ValueError, KeyError, SyntaxError, ImportError, TypeError) as err:
        text = str(err).strip()
        first = text.splitlines()[0]
        where = " ".join(line.strip() for line in text.splitlines()[1:])
        raise ConfigError(f"{first} {where}".strip()) from None
    finally:
        logging.getLogger().removeFilter(quiet)


def _required_bindings() -> list[str]:
    """The keys (``scope/selector.param``) of every binding still set to ``%gin.REQUIRED``."""
    keys = []
    for (scope, selector), params in gin.config._CONFIG.items():  # gin has no public iterator over bindings
        for name, value in params.items():
            if (isinstance(value, gin.config.ConfigurableReference)
                    and value.configurable.wrapped is gin.config._retrieve_constant
                    and value.scoped_configurable_fn() is gin.REQUIRED):
                keys.append(f"{scope + '/' if scope else ''}{selector}.{name}")
    return keys


class _DropGinSearchMisses(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Path not found:")


def required(files: list[str], names: list[str]) -> set[str]:
    """Those of ``names`` (``DataConfig.train``) the files leave ``%gin.REQUIRED``: values a
    launch must give, whichever job it runs."""
    parse(files, [], finalize=False)
    out = set()
    for name in names:
        try:
            if str(gin.query_parameter(name)) == "%gin.REQUIRED":
                out.add(name)
        except ValueError:  # not bound by the files
            pass
    gin.clear_config()
    return out


def recipe():
    """The Recipe the parsed gin config describes (each dataclass validates as it is built)."""
    register()
    return gin.get_configurable("magjax.Recipe")()


def macro(name: str):
    """The value of the gin macro ``name`` (``MODEL``, ``MESH_SLICE``), or None when unset."""
    try:
        return gin.query_parameter(f"{name}/macro.value")
    except ValueError:
        return None


def configured(name: str):
    """The configured callable of a registered function, e.g. ``configured("train")``."""
    register()
    return gin.get_configurable(name)


def save_operative(run_dir: str) -> str:
    """Writes the config that was actually used to RUN_DIR/operative_config.gin."""
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, "operative_config.gin")
    with open(path, "w") as f:
        f.write(gin.operative_config_str())
    return path


def build_abstract() -> dict:
    """Builds everything the parsed config configures without running it: the recipe (so
    every dataclass's validation runs), its parts by name, and the model's parameters as
    shapes only."""
    import jax

    from magjax.models import decoder

    built = recipe()
    parts = {"RunConfig": built.run, "EngineConfig": built.engine, "SamplingConfig": built.sampling,
             "LossConfig": built.loss, "AdvantageConfig": built.advantage, "OptimizerConfig": built.optimizer, "PackingConfig": built.packing,
             "RewardConfig": built.reward, "PoolConfig": built.pool, "SFTConfig": built.sft,
             "EvalConfig": built.evaluation, "DataConfig": built.data, "ChatFormat": built.chat}
    model = built.model_config
    return parts | {"recipe": built, "model": model,
                    "params": jax.eval_shape(lambda: decoder.init_params(model, jax.random.key(0)))}
