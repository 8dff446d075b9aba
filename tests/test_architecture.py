"""The import rules of docs/architecture.md, checked by parsing every module's imports
(function-level imports included: a deferred import is still a dependency; imports under
``if TYPE_CHECKING:`` are annotations only, never run, and not counted)."""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "magjax")
ACCELERATOR_STACK = {"jax", "jaxlib", "flax", "optax", "orbax", "tensorstore"}


def _unit(path: str) -> str:
    """A module's unit: its subpackage (``models``) or its module name (``loop``)."""
    rel = os.path.relpath(path, PACKAGE)
    return rel.split(os.sep)[0].removesuffix(".py")


def _imports() -> dict[str, set[str]]:
    """unit -> the magjax units (``magjax.models`` -> ``models``) and third-party top-level
    packages it imports."""
    out: dict[str, set[str]] = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            names = []
            tree = ast.parse(open(path).read(), path)
            typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                           and getattr(block.test, "id", getattr(block.test, "attr", None)) == "TYPE_CHECKING"
                           for stmt in block.body for n in ast.walk(stmt)}
            for node in ast.walk(tree):
                if id(node) in typing_only:
                    continue
                if isinstance(node, ast.Import):
                    names += [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            found = out.setdefault(_unit(path), set())
            for imported in names:
                parts = imported.split(".")
                found.add(parts[1] if parts[0] == "magjax" and len(parts) > 1 else parts[0])
    return out


IMPORTS = _imports()
UNITS = {u for u in IMPORTS}

# unit -> what it must not import (docs/architecture.md, "Import rules").
FORBIDDEN = {
    # The model is a pure function of parameters and tokens: no sampling, rewards or training.
    "models": {"rewards", "sampling", "rl", "roles", "data", "loop", "jobs", "evaluate", "sft", "recipe", "config"},
    # Verifiers run in threads and worker processes beside the accelerator, never on it.
    "rewards": (UNITS - {"rewards", "types", "build_cache"}) | ACCELERATOR_STACK | {"gin"},
    # Problems are host data: readable and writable without JAX or a model.
    "data": {"models", "sampling", "rl", "roles", "loop", "jobs", "evaluate", "sft", "recipe", "config"}
            | ACCELERATOR_STACK | {"gin"},
    "types": (UNITS - {"types"}) | ACCELERATOR_STACK,
    # The sampler and the trainer know nothing of each other, of rewards or of data.
    "sampling": {"rl", "rewards", "data", "roles", "loop", "jobs", "recipe", "config"},
    "rl": {"sampling", "rewards", "data", "roles", "loop", "jobs", "recipe", "config"},
    # Native kernels are one backend among others: they plug into the seam and read the
    # model's shapes, nothing more.
    "kernels": UNITS - {"kernels", "build_cache", "backends", "models", "sharding"},
    # The seam chooses implementations; it knows no sampler, trainer, reward or data.
    "backends": {"sampling", "rl", "rewards", "data", "roles", "loop", "jobs", "recipe", "config", "kernels"},
    # Roles compose the components; the loop and the jobs compose the roles.
    "roles": {"loop", "jobs", "recipe", "config", "cli", "evaluate", "sft", "bench"},
    "loop": {"jobs", "config", "cli", "sft"},
    "evaluate": {"loop", "jobs", "recipe", "config", "cli"},
    "sft": {"loop", "jobs", "recipe", "config", "cli", "evaluate"},
}


@pytest.mark.parametrize("unit", sorted(FORBIDDEN))
def test_a_unit_imports_nothing_its_rules_forbid(unit):
    assert unit in IMPORTS, f"magjax/{unit} is gone: update the rules and docs/architecture.md"
    broken = sorted(IMPORTS[unit] & FORBIDDEN[unit])
    assert not broken, f"magjax/{unit} imports {broken} (docs/architecture.md forbids it)"


@pytest.mark.parametrize("package, owner", [("gin", "config"), ("orbax", "checkpoint")])
def test_one_module_owns_each_framework(package, owner):
    importers = sorted(u for u, found in IMPORTS.items() if package in found)
    assert importers == [owner], f"{package} is imported by {importers}; only magjax/{owner}.py may"


def test_the_command_line_and_the_jobs_sit_on_top():
    assert not [u for u, found in IMPORTS.items() if "cli" in found and u != "cli"]
    # config.py registers the jobs' own gin switches; nothing else below the command line reaches up.
    assert sorted(u for u, found in IMPORTS.items() if "jobs" in found and u != "jobs") == ["cli", "config"]


def test_the_verifiers_and_the_data_tools_never_load_jax():
    code = ("import sys, magjax.rewards.pool, magjax.rewards.reward, magjax.rewards.code, magjax.data.loaders, "
            "magjax.data.sources, magjax.data.filtering, magjax.data.validation, magjax.data.distill, magjax.types; "
            f"print(sorted(m for m in {sorted(ACCELERATOR_STACK)!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_architecture_document_names_every_unit():
    with open(os.path.join(ROOT, "docs", "architecture.md")) as f:
        text = f.read()
    missing = sorted(u for u in UNITS if u != "__init__" and f"`{u}" not in text)
    assert not missing, f"docs/architecture.md does not say what {missing} own(s)"
