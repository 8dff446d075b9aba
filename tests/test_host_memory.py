"""The host allocator setting: what it leaves to the user, and that it cuts the page faults."""

import json
import os
import platform
import subprocess
import sys

import pytest

from magjax import host_memory

THP = "/sys/kernel/mm/transparent_hugepage/enabled"

# Re-executes itself with the setting (as `magjax` does), then calls a jitted function
# whose 128 MiB temporary exceeds glibc's largest mmap threshold (32 MiB), counting page faults per call.
PROBE = """
import json, os, resource
from magjax import host_memory
host_memory.reexec_with_huge_pages()
import jax, jax.numpy as jnp
x = jnp.ones((32 << 20,), jnp.float32)
f = jax.jit(lambda x: jnp.cumsum(x * 2.0)[::3].sum())
faults = []
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"tunables": os.environ.get("GLIBC_TUNABLES"), "faults": faults}))
"""
SMALL_PAGES = (128 << 20) // 4096  # 4 KiB pages in the temporary


def _probe(extra_env: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "XLA_FLAGS", host_memory.OPT_OUT)}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env | extra_env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc tunable")
def test_the_setting_joins_the_users_tunables_and_honours_the_opt_out():
    assert host_memory.tuned_environment({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    mine = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "HOME": "/h"}
    assert host_memory.tuned_environment(mine) == {
        "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", "HOME": "/h"}
    assert host_memory.tuned_environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None  # theirs wins
    assert host_memory.tuned_environment({host_memory.OPT_OUT: "1"}) is None
    assert host_memory.tuned_environment({host_memory.OPT_OUT: "0"}) is not None


# Only where huge pages are given on request ("madvise"): with "always" the kernel backs
# large mappings with them anyway (the control would not fault either), with "never" not at all.
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or not os.path.exists(THP)
                    or "[madvise]" not in open(THP).read(), reason="needs glibc and THP in madvise mode")
def test_the_reexecuted_process_faults_in_huge_pages():
    tuned = _probe({})
    assert tuned["tunables"] == "glibc.malloc.hugetlb=1"  # it re-executed itself with the setting
    # The control: glibc's defaults map the temporary anew on every call, 4 KiB per fault.
    system = _probe({host_memory.OPT_OUT: "1"})
    assert system["tunables"] is None
    assert min(system["faults"][1:]) > SMALL_PAGES // 2, system["faults"]
    # With huge pages the same temporary takes 2 MiB per fault.
    assert max(tuned["faults"][1:]) < SMALL_PAGES // 20, tuned["faults"]
