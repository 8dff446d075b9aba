"""The on-disk cache of what magjax compiles: built once, atomically, where MAGJAX_CACHE_DIR says."""

import os
import shutil
import subprocess
import sys

import pytest

from magjax import build_cache


def test_an_entry_is_built_once_and_a_failed_build_leaves_nothing(tmp_path):
    calls = []

    def build(tmp):
        calls.append(tmp)
        with open(tmp, "w") as f:
            f.write("built")

    path = str(tmp_path / "sub" / "entry")
    assert build_cache.build_once(path, build) == path
    assert build_cache.build_once(path, build) == path
    assert len(calls) == 1 and open(path).read() == "built"

    def broken(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("compiler said no")

    with pytest.raises(RuntimeError, match="compiler said no"):
        build_cache.build_once(str(tmp_path / "other"), broken)
    assert sorted(os.listdir(tmp_path)) == ["sub"]  # neither the entry nor its temporary file


def test_the_cache_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MAGJAX_CACHE_DIR", str(tmp_path))
    assert build_cache.root() == str(tmp_path)
    monkeypatch.delenv("MAGJAX_CACHE_DIR")
    assert build_cache.root() == os.path.join(os.path.expanduser("~"), ".cache", "magjax")


@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++: the C++ verifier has no header to precompile")
def test_the_cpp_verifiers_precompiled_header_goes_to_the_cache_dir(tmp_path):
    probe = "from magjax.rewards import code; print(code.precompiled_header_dir())"
    r = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "MAGJAX_CACHE_DIR": str(tmp_path)},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    root = r.stdout.strip()
    assert os.path.dirname(root) == str(tmp_path) and os.path.basename(root).startswith("pch-")
    assert os.path.exists(os.path.join(root, "bits", "stdc++.h.gch"))
