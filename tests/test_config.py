"""Gin: every shipped file parses and builds; mistakes name the file, line and binding."""

import glob
import os

import pytest

from magjax import config
from magjax.models import preset

GIN_ROOT = os.path.join(os.path.dirname(os.path.dirname(__file__)), "gin")
EXPERIMENTS = sorted(os.path.relpath(p, GIN_ROOT) for p in glob.glob(os.path.join(GIN_ROOT, "experiments", "*.gin")))


def _required(gin_file):
    """Placeholder bindings for the %gin.REQUIRED values of the file and what it includes
    (paths a real launch gives)."""
    names = []
    with open(os.path.join(GIN_ROOT, gin_file)) as f:
        for line in f:
            if line.startswith("include "):
                names += [b.split(" = ")[0] for b in _required(line.split("'")[1])]
            elif "%gin.REQUIRED" in line and not line.startswith("#"):
                names.append(line.split("=")[0].strip())
    return [f"{name} = 'placeholder'" for name in names]


@pytest.mark.parametrize("gin_file", EXPERIMENTS)
def test_every_experiment_parses_and_builds_abstractly(gin_file):
    config.parse([gin_file], _required(gin_file))
    built = config.build_abstract()
    assert built["RunConfig"].n_batch % built["RunConfig"].group_size == 0
    count = sum(x.size for x in __import__("jax").tree.leaves(built["params"]))
    assert count == built["model"].num_params()


@pytest.mark.parametrize("gin_file", sorted(os.path.relpath(p, GIN_ROOT) for p in glob.glob(
    os.path.join(GIN_ROOT, "models", "*.gin"))))
def test_every_model_file_builds_its_preset_abstractly(gin_file):
    config.parse(["base.gin", gin_file], _required(gin_file))
    built = config.build_abstract()
    count = sum(x.size for x in __import__("jax").tree.leaves(built["params"]))
    assert count == built["model"].num_params() and built["ChatFormat"].style in ("plain", "mistral", "chatml",
                                                                                  "llama3")


@pytest.mark.parametrize("gin_file", sorted(os.path.relpath(p, GIN_ROOT) for p in glob.glob(
    os.path.join(GIN_ROOT, "mesh", "*.gin"))))
def test_every_mesh_file_builds_with_the_demo(gin_file):
    config.parse(["experiments/demo_cpu.gin", gin_file], [])
    mesh = config.build_abstract()["RunConfig"].trainer_mesh
    assert all(size == -1 or size >= 1 for size in mesh.sizes())


def test_a_typo_in_a_binding_is_named():
    with pytest.raises(config.ConfigError, match="RunConfig.*stepz"):
        config.parse(["experiments/demo_cpu.gin"], ["RunConfig.stepz = 3"])


def test_a_typo_in_a_file_names_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.gin"
    bad.write_text("include 'experiments/demo_cpu.gin'\nLossConfig.eps_hihg = 0.3\n")
    with pytest.raises(config.ConfigError, match=r"eps_hihg.*bad\.gin.*line 2"):
        config.parse([str(bad)], [])


def test_invalid_values_fail_when_built():
    config.parse(["experiments/demo_cpu.gin"], ["RunConfig.n_batch = 60"])
    with pytest.raises(ValueError, match="multiple of group_size"):
        config.build_abstract()


def test_a_missing_gin_file_is_named():
    with pytest.raises(config.ConfigError, match="nope.gin"):
        config.parse(["nope.gin"], [])


def test_required_values_left_unset_are_named():
    with pytest.raises(config.ConfigError, match="INIT_FROM"):
        config.parse(["experiments/magistral_small.gin"], [])


def test_plan_command_on_the_magistral_small_recipe(capsys):
    from magjax.cli import main

    gin = "experiments/magistral_small.gin"
    args = ["plan", "--gin_file", gin, "--gin_file", "mesh/tpu_v5p_64.gin", "--devices", "32"]
    args += [f"--gin.{b.replace(' = ', '=')}" for b in _required(gin)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "23,572,403,200 parameters on 32 devices" in out and "optimizer state" in out


def test_a_wheel_carries_every_module_and_gin_file():
    """setup.cfg's find: packages only see directories with an __init__.py, and data_files
    only the gin/ folders it lists: a module or gin file outside them would be missing from a
    non-editable install (magjax.rewards once was)."""
    import configparser

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for folder, _, files in os.walk(os.path.join(root, "magjax")):
        if any(f.endswith(".py") for f in files) and "__pycache__" not in folder:
            assert "__init__.py" in files, f"{folder} has modules but no __init__.py"
    setup = configparser.ConfigParser()
    setup.read(os.path.join(root, "setup.cfg"))
    shipped = set()
    for target, patterns in setup["options.data_files"].items():
        for pattern in patterns.split(","):
            shipped |= {os.path.relpath(p, root) for p in glob.glob(os.path.join(root, pattern.strip()))}
    in_tree = {os.path.relpath(p, root) for p in glob.glob(os.path.join(root, "gin", "**", "*.gin"), recursive=True)}
    assert in_tree and in_tree <= shipped, sorted(in_tree - shipped)


def test_a_recipes_remat_reaches_the_model_it_trains():
    from magjax.recipe import Recipe

    assert Recipe(model="tiny").model_config.remat == preset("tiny").remat  # unset: the model's own
    assert Recipe(model="tiny", remat="layer").model_config.remat == "layer"
    with pytest.raises(ValueError, match="remat"):
        Recipe(model="tiny", remat="everything").model_config
