"""Gin: every shipped file parses and builds; mistakes name the file, line and binding."""

import glob
import os

import pytest

from magjax import config

GIN_ROOT = os.path.join(os.path.dirname(os.path.dirname(__file__)), "gin")
EXPERIMENTS = sorted(os.path.relpath(p, GIN_ROOT) for p in glob.glob(os.path.join(GIN_ROOT, "experiments", "*.gin")))


@pytest.mark.parametrize("gin_file", EXPERIMENTS)
def test_every_experiment_parses_and_builds_abstractly(gin_file):
    config.parse([gin_file], [])
    built = config.build_abstract()
    assert built["RunConfig"].n_batch % built["RunConfig"].group_size == 0
    count = sum(x.size for x in __import__("jax").tree.leaves(built["params"]))
    assert count == built["model"].num_params()


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
