"""Ahead-of-time compilation for TPU slices (magjax.aot, ``magjax plan --topology``).

Slice names are checked everywhere. With libtpu installed (the ``tpu`` extra) the tiny and
demo models' real functions (state initialisation, train step, weight publication, prefill,
decode chunk) are compiled for small v5p slices and XLA's per-chip memory report is checked
for consistency; without it those tests are skipped, saying why.
"""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from magjax.aot import topology
from magjax.aot.topology import GIB, parse_slice

needs_libtpu = pytest.mark.skipif(
    not topology.libtpu_available(),
    reason=f"libtpu is not installed, so nothing can be compiled for a TPU slice ({topology.INSTALL_HINT})")


@pytest.mark.parametrize("name, grid, chips, hosts", [
    ("v5p-64", (2, 4, 4), 32, 8),  # the name counts TensorCores, two per chip
    ("v5p-8", (2, 2, 1), 4, 1),
    ("v4-32", (2, 2, 4), 16, 4),
    ("v5e-16", (4, 4), 16, 4),  # v5e and v6e names count chips
    ("v5litepod-16", (4, 4), 16, 4),
    ("v6e-8", (2, 4), 8, 1),  # one host drives 8 v6e chips
    ("v6e-256", (16, 16), 256, 64),
    ("V5P:2x4x4", (2, 4, 4), 32, 8),
    ("v5p:2x2x1", (2, 2, 1), 4, 1),
])
def test_slice_names(name, grid, chips, hosts):
    s = parse_slice(name)
    assert s.grid == grid and s.chips == chips and s.hosts == hosts
    assert s.topology_name == f"{s.generation.name}:{'x'.join(map(str, grid))}"
    assert s.chips % hosts == 0 and len(s.chips_per_host_bounds) == 3


@pytest.mark.parametrize("name, fault", [
    ("v5p-63", "power-of-two"), ("v5p-6", "power-of-two"), ("v7-8", "unknown generation 'v7'"),
    ("v5p:2x2", "3-D grid"), ("v5e:2x2x2", "2-D grid"), ("tpu", "expected a name"), ("v5p-", "expected a name"),
])
def test_bad_slice_names_are_refused_naming_them(name, fault):
    with pytest.raises(ValueError, match=fault) as err:
        parse_slice(name)
    assert repr(name) in str(err.value)


def test_xla_sizes_are_binary():
    assert topology.parse_bytes("95.74", "G") == int(95.74 * GIB)
    assert topology.parse_bytes("1.00", "T") == 1 << 40 and topology.parse_bytes("12", "") == 12


def test_only_a_host_without_googles_pci_devices_counts_as_tpu_free(tmp_path):
    for n, vendor in enumerate(["0x8086", "0x10de"]):
        (tmp_path / f"0000:00:0{n}.0").mkdir()
        (tmp_path / f"0000:00:0{n}.0" / "vendor").write_text(vendor + "\n")
    assert not topology.host_may_have_tpus(str(tmp_path))
    (tmp_path / "0000:00:05.0").mkdir()
    (tmp_path / "0000:00:05.0" / "vendor").write_text(topology.GOOGLE_PCI_VENDOR + "\n")
    assert topology.host_may_have_tpus(str(tmp_path))


@needs_libtpu
def test_libtpus_metadata_warnings_are_answered_off_tpu_hosts():
    """The ``magjax`` command answers libtpu's questions where no TPU chip can be attached,
    so a plan (or any job) on a CPU machine with the extra starts without libtpu's error."""
    if topology.host_may_have_tpus():
        pytest.skip("a Google PCI device is attached here: the environment is left to libtpu")
    start = "import jax; jax.devices()"
    # As a user's shell has it: the suite holds JAX to the CPU, which keeps libtpu unloaded.
    env = {k: v for k, v in os.environ.items() if k not in topology.NO_LOCAL_TPU and k != "JAX_PLATFORMS"}
    bare = subprocess.run([sys.executable, "-c", start], capture_output=True, text=True, env=env, timeout=120)
    if "TPU_WORKER_HOSTNAMES" not in bare.stderr:
        pytest.skip("this libtpu prints nothing on a host without TPUs")
    quiet_start = "from magjax.aot import topology; topology.quiet_libtpu_off_tpu(); " + start
    quiet = subprocess.run([sys.executable, "-c", quiet_start + "; print(jax.default_backend())"],
                           capture_output=True, text=True, env=env, timeout=120)
    assert quiet.returncode == 0 and quiet.stdout.strip() == "cpu", quiet.stderr
    assert "TPU_" not in quiet.stderr and "INVALID_ARGUMENT" not in quiet.stderr, quiet.stderr


# ---------------------------------------------------------------- compiled (libtpu)

@needs_libtpu
@pytest.mark.parametrize("name, kind, hbm_gib", [
    ("v4-32", "TPU v4", 30.75), ("v5e-16", "TPU v5 lite", 15.75), ("v6e-8", "TPU v6 lite", 31.25),
    ("v5p-64", "TPU v5", 95.74),
])
def test_each_generation_gives_one_device_per_chip_and_its_hbm(name, kind, hbm_gib):
    s = parse_slice(name)
    devices = topology.devices(s)
    assert len(devices) == s.chips and {d.device_kind for d in devices} == {kind}
    hbm, source = topology.hbm_bytes(s)
    assert source == "XLA" and hbm == pytest.approx(hbm_gib * GIB, rel=1e-3)


# Small shapes: TPU compile time grows with them, and the checks do not need more. Rows come
# from a per-chip token budget: one 64-token row for each of the 4 chips' fsdp shards.
SMALL = ["PackingConfig.tokens_per_chip=64", "PackingConfig.row_len=64", "EngineConfig.max_len=128",
         "EngineConfig.slots=16", "EngineConfig.prompt_buckets=(64,)", "EngineConfig.chunk_steps=4", "RunConfig.n_batch=16",
         "RunConfig.n_async=16"]
# The sampler keeps its own copy here, so the publication compiles (one host, colocated,
# it would otherwise read the trainer's arrays: test_a_colocated_plan_on_one_host_...).
TINY = ["--gin_file", "experiments/demo_cpu.gin", "--gin.MODEL='tiny'", "--gin.RunConfig.placement='colocated'",
        "--gin.RunConfig.sampler_weights='copy'",
        *(f"--gin.{b}" for b in SMALL)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``magjax plan --topology v5p:2x2x1 --json`` on the tiny model, colocated on one host:
    (exit status, printed text, the JSON written)."""
    from magjax.cli import main

    path = tmp_path_factory.mktemp("plan") / "plan.json"
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["plan", *TINY, "--topology", "v5p:2x2x1", "--json", str(path)])
    return status, out.getvalue(), json.loads(path.read_text())


@needs_libtpu
def test_every_function_of_the_tiny_model_compiles_for_a_v5p_slice(tiny):
    status, text, d = tiny
    assert status == 0 and d["fits"] and not d["estimate"]
    assert d["slice"] == "v5p:2x2x1" and d["chips"] == 4 and d["placement"] == "colocated"
    # The chip's HBM as XLA states it for a v5p chip (95.74 GiB), not a table's figure.
    assert d["hbm_source"] == "XLA" and 95 * GIB < d["hbm_bytes"] < 96 * GIB
    funcs = {f["function"]: f for f in d["functions"]}
    assert list(funcs) == ["init_state", "train_step", "publish", "prefill", "decode"]
    for f in funcs.values():
        assert f["compiled"] and f["error"] is None and f["needed_bytes"] is None and f["compile_s"] > 0
        assert f["argument_bytes"] > 0 and f["output_bytes"] > 0
    for name in ("train_step", "prefill", "decode"):  # activations, logits, the sampled tokens
        assert funcs[name]["temp_bytes"] > 0
    # The train step and the sampler donate their state: outputs written in place.
    for name in ("train_step", "prefill", "decode"):
        assert 0 < funcs[name]["alias_bytes"] <= funcs[name]["output_bytes"]
    assert funcs["publish"]["alias_bytes"] == 0  # a copy: the trainer keeps its weights
    # XLA's buffers hold at least the logical per-chip bytes (it may pad, never shrink).
    assert funcs["train_step"]["argument_bytes"] >= d["trainer_state_bytes"] + d["batch_bytes"]
    assert funcs["decode"]["argument_bytes"] >= d["sampler_weights_bytes"] + d["kv_cache_bytes"]
    assert funcs["publish"]["output_bytes"] >= d["sampler_weights_bytes"]
    for name in funcs:
        assert name in text
    assert "fits" in text and "DOES NOT FIT" not in text and "ESTIMATE" not in text


@needs_libtpu
def test_the_verdicts_follow_from_the_bytes_and_the_json_round_trips(tiny):
    from magjax.aot.report import Report

    _, text, d = tiny
    hbm = d["hbm_bytes"]
    for f in d["functions"]:
        peak = f["argument_bytes"] + f["output_bytes"] - f["alias_bytes"] + f["temp_bytes"] + f["code_bytes"]
        assert f["peak_bytes"] == peak and f["headroom"] == pytest.approx(1 - peak / hbm)
    for role, names in (("trainer", ("init_state", "train_step")), ("sampler", ("publish", "prefill", "decode"))):
        peak = max(f["peak_bytes"] for f in d["functions"] if f["function"] in names)
        assert d["roles"][role] == {"peak_bytes": peak, "hbm_bytes": hbm, "fits": True,
                                    "headroom": pytest.approx(1 - peak / hbm)}
        assert 0 < d["roles"][role]["headroom"] < 1
    # Colocated: both roles' resident state (the train step's and the decode chunk's
    # arguments) plus the largest transient of any function.
    funcs = {f["function"]: f for f in d["functions"]}
    c = d["colocated"]
    assert c["trainer_resident_bytes"] == funcs["train_step"]["argument_bytes"]
    assert c["sampler_resident_bytes"] == funcs["decode"]["argument_bytes"]
    transient = max(f["peak_bytes"] - (c["trainer_resident_bytes"] if f["role"] == "trainer"
                                       else c["sampler_resident_bytes"]) for f in d["functions"])
    assert c["transient_bytes"] == transient
    assert c["peak_bytes"] == c["trainer_resident_bytes"] + c["sampler_resident_bytes"] + transient
    assert c["peak_bytes"] >= max(r["peak_bytes"] for r in d["roles"].values())
    assert c["fits"] and c["headroom"] == pytest.approx(1 - c["peak_bytes"] / hbm)
    # Model FLOPs: the step's tokens times the per-token count.
    from magjax.aot.command import model_flops_per_token
    from magjax.models import preset

    assert d["microbatches"] == 4  # 16 sequences, one per row at most, in 4 rows (one per chip)
    assert d["tokens_per_step"] == 4 * 4 * 64
    assert d["model_flops_per_step"] == pytest.approx(d["tokens_per_step"] * model_flops_per_token(preset("tiny"), 64))
    report = Report.from_dict(d)
    assert report.to_dict() == d
    assert report.describe() == text.rstrip("\n")


@needs_libtpu
def test_a_function_that_cannot_fit_reports_what_it_needs(tiny):
    """A real compile that exceeds the chip: RESOURCE_EXHAUSTED becomes 'does not fit: needs X'."""
    from magjax.aot.compile import FunctionMemory, compile_function
    from magjax.aot.report import Report

    slice_ = parse_slice("v5p:2x2x1")
    mesh = jax.sharding.Mesh(list(topology.devices(slice_)), ("fsdp",))
    x = jax.ShapeDtypeStruct((4, 1024), jnp.float32, sharding=jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec("fsdp")))
    # 2^36 float32 values per chip: 256 GiB.
    huge = jax.jit(lambda x: jnp.broadcast_to(x[:, :1], (4, 1 << 36)) * 2)
    memory, compiled = compile_function(FunctionMemory("sampler", "decode", "too big"), huge, (x,), mesh)
    assert compiled is None and memory.error is None and not memory.compiled
    assert memory.needed_kind in ("temporaries", "total") and memory.needed_bytes > 200 * GIB
    assert memory.peak_bytes >= memory.needed_bytes
    report = Report.from_dict(tiny[2])
    report.functions = [memory if f.function == "decode" else f for f in report.functions]
    assert not report.fits and not report.role("sampler").fits and not report.colocated().fits
    assert report.role("sampler").headroom < 0
    assert "does not fit: needs" in report.describe() and "DOES NOT FIT" in report.describe()
    assert report.to_dict()["fits"] is False


@needs_libtpu
def test_the_demo_recipe_compiles_disaggregated_on_two_hosts():
    """demo_cpu.gin's placement: 4 chips generate (2 per host, one generator per host), 4 train."""
    from magjax.aot import command, recipe

    r = recipe.load(["experiments/demo_cpu.gin"], [b.replace("=", " = ", 1) for b in SMALL])
    report = command.compile_report(r, parse_slice("v5p:2x2x2"))
    assert report.placement == "disaggregated" and report.colocated() is None and report.hosts == 2
    assert report.trainer_mesh == {"data": 1, "fsdp": 4, "model": 1}
    assert report.sampler_mesh == {"data": 2, "fsdp": 1, "model": 1}
    assert all(f.compiled and f.temp_bytes >= 0 for f in report.functions)
    assert report.function("train_step").temp_bytes > 0 and report.function("decode").temp_bytes > 0
    assert report.fits and 0 < report.role("trainer").headroom < 1
    d = report.to_dict()
    assert d["colocated"] is None
    assert dataclasses.asdict(report.function("prefill")).items() <= d["functions"][3].items()


@needs_libtpu
def test_the_plan_command_keeps_nothing_in_a_configured_compilation_cache(tmp_path):
    """A TPU program compiled without a TPU cannot be read back from JAX's persistent cache:
    ``magjax plan`` never writes one there, whatever the environment configures."""
    env = os.environ | {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla"),
                        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    result = subprocess.run([sys.executable, "-m", "magjax.cli", "plan", "--topology", "v5p-8", *TINY],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "train_step" in result.stdout and "compile time" in result.stdout
    assert not (tmp_path / "xla").exists() or not any((tmp_path / "xla").iterdir())


@needs_libtpu
@pytest.mark.parametrize("placement, per_host", [("colocated", 4), ("disaggregated", 2)])
def test_a_hosts_sampler_compiles_for_chips_numbered_from_zero(placement, per_host):
    """v5e-16's first host drives chips 0, 1, 4 and 5, and libtpu compiles an n-chip program
    only for chips 0..n-1: the sampler's mesh takes a one-host slice's chips of the same kind."""
    from magjax.aot.placement import place
    from magjax.loop import RunConfig

    slice_ = parse_slice("v5e-16")
    devices = topology.devices(slice_)
    assert sorted(d.id for d in devices[:4]) != [0, 1, 2, 3]  # what the placement has to repair
    run = RunConfig(placement=placement, generator_devices=2 * slice_.hosts)
    placed = place(run, slice_, devices)
    chips = list(placed.generator.devices.flat)
    assert sorted(d.id for d in chips) == list(range(per_host))
    assert {d.device_kind for d in chips} == {devices[0].device_kind}
    assert placed.trainer.devices.size == (16 if placement == "colocated" else 16 - 2 * slice_.hosts)


# ---------------------------------------------------------------- the paged cache (libtpu)

# The tiny model's shape with the head dim the Pallas paged attention kernel takes (128
# lanes; tiny's own 64 takes the portable paged cache), paged: 2,048 pages of 16 positions,
# split over the sampler's 4 fsdp shards (one host, colocated): 32 MiB of float32 keys and
# values per chip, far above what a decode step's activations need.
PAGED_MODEL = ["Recipe.model=@ModelConfig()", "ModelConfig.family='mistral'", "ModelConfig.vocab_size=256",
               "ModelConfig.hidden_size=256", "ModelConfig.num_layers=2", "ModelConfig.num_heads=4",
               "ModelConfig.num_kv_heads=2", "ModelConfig.head_dim=128", "ModelConfig.intermediate_size=512"]
PAGED = ["--gin_file", "experiments/demo_cpu.gin", "--gin.RunConfig.placement='colocated'",
         *(f"--gin.{b}" for b in [*SMALL, *PAGED_MODEL, "EngineConfig.page_size=16", "EngineConfig.pages=2048"])]


@pytest.fixture(scope="module")
def tiny_paged(tmp_path_factory):
    """``magjax plan --topology v5p:2x2x1 --json`` on that model with the paged cache."""
    import contextlib
    import io

    from magjax.cli import main

    path = tmp_path_factory.mktemp("plan") / "plan.json"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["plan", *PAGED, "--topology", "v5p:2x2x1", "--json", str(path)])
    return status, out.getvalue(), json.loads(path.read_text())


@needs_libtpu
def test_the_paged_sampler_compiles_with_the_kernel_and_no_pool_sized_temporaries(tiny_paged):
    status, text, d = tiny_paged
    assert status == 0 and d["fits"], text
    kv = d["kv_cache"]
    assert kv["paged"] and kv["decode_attention"] == "tpu-paged"
    # 2 layers x (keys, values) x 2 kv heads x 128 x 4 bytes a position; 2,048 x 16
    # positions over 4 page shards.
    per_position = 2 * 2 * 2 * 128 * 4
    assert kv["page_shards"] == 4 and kv["positions_per_chip"] == 2048 * 16 // 4
    assert kv["pool_bytes_per_chip"] == kv["positions_per_chip"] * per_position == 32 << 20
    assert kv["bytes_per_position_per_chip"] == per_position
    funcs = {f["function"]: f for f in d["functions"]}
    for name in ("prefill", "decode"):
        f = funcs[name]
        assert f["compiled"] and "a pool of 2048 pages x 16" in f["shape"]
        # The pool is donated and updated in place: written into its own buffers...
        assert f["alias_bytes"] >= kv["pool_bytes_per_chip"] and f["argument_bytes"] >= kv["pool_bytes_per_chip"]
        # ...and no step writes, lays out or reads it through a copy: a copy of even one
        # layer's keys would take 8 MiB of temporaries.
        assert f["temp_bytes"] < kv["pool_bytes_per_chip"] // 4, (name, f["temp_bytes"])


@needs_libtpu
def test_the_plan_says_how_many_sequences_the_pool_holds(tiny_paged):
    from magjax.aot import kv_pool
    from magjax.aot.report import Report

    _, text, d = tiny_paged
    kv = d["kv_cache"]
    # One host: one generator process keeps all n_async (16) in flight, 4 per page shard.
    assert kv["processes"] == 1 and kv["in_flight_per_chip"] == 16 // 4 and kv["slots_per_chip"] == 4
    # The assumed average: half the 64-token bucket + 9/16 of the demo's 96 new tokens = 86
    # tokens, 6 pages of 16; max_len 128 is 8 pages. 512 pages per chip.
    assert kv["average_len"] == 32 + 54 and kv["max_new_tokens"] == 96 and kv["stage"] == "run"
    assert kv["average_len_held_per_chip"] == 512 // 6 and kv["max_len_held_per_chip"] == 512 // 8
    assert kv["holds_in_flight"] and kv["average_len_source"].startswith("assumed:")
    assert kv_pool.ASSUMPTION in kv["average_len_source"]
    assert "KV cache per generator chip: paged (tpu-paged): 2,048 pages x 16 positions" in text
    assert "holds 85 sequences of average length 86" in text and "64 of max_len 128" in text
    assert "4 in flight (n_async over 1 process(es)): holds" in text and "DOES NOT HOLD" not in text
    report = Report.from_dict(d)
    assert report.to_dict() == d and report.describe() == text.rstrip("\n")


def test_a_pool_too_small_for_the_flight_is_said_so():
    """The curriculum's stage with the most positions in flight sets the need: a recipe
    whose pool holds fewer of its sequences than it keeps in flight is flagged."""
    from magjax.aot import kv_pool
    from magjax.data.curriculum import Stage
    from magjax.loop import RunConfig
    from magjax.rewards.reward import RewardConfig
    from magjax.sampling.engine import EngineConfig

    run = RunConfig(group_size=4, n_batch=16, n_async=16, max_new_tokens=64,
                    stages=(Stage(start_step=1), Stage(start_step=5, max_new_tokens=192, n_async=8)))
    engine = EngineConfig(slots=16, max_len=256, prompt_buckets=(32,), page_size=16, pages=64)
    reward = RewardConfig(l_max=64, l_cache=16)
    stages = kv_pool.stages(run, reward, engine, processes=2)
    assert [(s.name, s.in_flight, s.average_len) for s in stages] == [("stage 1", 8, 16 + 36), ("stage 2", 4, 16 + 108)]
    d = kv_pool.report(engine, processes=2, page_shards=1, pool_bytes=1 << 20, decode_attention="tpu-paged",
                       run=run, reward=reward)
    # Stage 1: 8 x 52 positions in flight (4 pages each); stage 2: 4 x 124 (8 pages each), more.
    assert d["stage"] == "stage 2" and d["in_flight_per_chip"] == 4 and d["max_new_tokens"] == 192
    assert d["average_len_held_per_chip"] == 64 // 8 and d["max_len_held_per_chip"] == 64 // 16
    assert d["holds_in_flight"]
    d = kv_pool.report(dataclasses.replace(engine, pages=24), processes=2, page_shards=1, pool_bytes=1 << 20,
                       decode_attention="tpu-paged", run=run, reward=reward)
    assert d["average_len_held_per_chip"] == 3 and not d["holds_in_flight"]
    assert "DOES NOT HOLD" in "\n".join(kv_pool.describe(d, str))
    # ... and the plan's verdict (its exit status) says the recipe does not fit.
    from magjax.aot.compile import FunctionMemory
    from magjax.aot.report import ROLES, Report

    functions = [FunctionMemory(role, f, "", argument_bytes=1 << 20) for role, fs in ROLES.items() for f in fs]
    plan = lambda kv: Report("m", 1, "v5p-8", "v5p:2x2x1", 4, 1, 1 << 30, "XLA", {}, {}, "disaggregated",  # noqa: E731
                             functions, 0, 0, 0, 0, 1, 1, 1.0, kv_cache=kv)
    assert plan(None).fits and not plan(d).fits


@needs_libtpu
@pytest.mark.parametrize("change, picked", [
    ({}, "tpu-paged"), ({"sliding_window": 64}, "xla-paged"), ({"head_dim": 64}, "xla-paged")])
def test_the_tpu_sampler_takes_the_kernel_where_it_applies(change, picked):
    from magjax import backends
    from magjax.mesh import MeshConfig, make_mesh
    from magjax.models import preset

    mesh = make_mesh(MeshConfig(data=1, fsdp=1, model=4), list(topology.devices(parse_slice("v5p:2x2x1"))))
    config = preset("tiny").replace(**{"head_dim": 128, **change})
    ops = backends.sampler(config, mesh, slots=16, max_len=128, page_size=16)
    assert ops.implementations["decode_attention"] == picked == ops.cache.name
    assert backends.sampler(config, mesh, slots=16, max_len=128).implementations["decode_attention"] == "xla-blockwise"


@needs_libtpu
def test_a_colocated_plan_on_one_host_counts_the_weights_once(tiny, tmp_path):
    """Colocated on one host, the sampler reads the trainer's arrays by default on TPUs
    (RunConfig.sampler_weights="auto"), so nothing is published, the sampler holds no copy,
    and the colocated total counts the weights once: the copying plan's total less the
    sampler's copy."""
    import contextlib
    import io

    from magjax.cli import main

    out = io.StringIO()
    path = tmp_path / "plan.json"
    with contextlib.redirect_stdout(out):
        status = main(["plan", *TINY, "--gin.RunConfig.sampler_weights='auto'", "--topology", "v5p:2x2x1", "--json",
                       str(path)])
    d, a = json.loads(path.read_text()), tiny[2]
    assert status == 0 and d["fits"]
    funcs = {f["function"]: f for f in d["functions"]}
    assert funcs["publish"]["compiled"] and funcs["publish"]["peak_bytes"] == 0
    assert "none: the sampler reads the trainer's arrays" in out.getvalue()
    assert d["sampler_weights_bytes"] == 0 and d["shared_weights_bytes"] == a["sampler_weights_bytes"] > 0
    # The decode chunk reads the same bytes either way: the stacked arrays, sliced in place.
    async_decode = next(f for f in a["functions"] if f["function"] == "decode")
    # The trainer's programs are the same as the copying plan's: this process compiled them
    # once, and reports that compile's figures.
    for name in ("init_state", "train_step"):
        first = next(f for f in a["functions"] if f["function"] == name)
        assert funcs[name]["compile_s"] == first["compile_s"] and funcs[name]["temp_bytes"] == first["temp_bytes"]
    assert funcs["decode"]["argument_bytes"] == async_decode["argument_bytes"]
    assert funcs["decode"]["temp_bytes"] <= async_decode["temp_bytes"]
    c = d["colocated"]
    assert c["peak_bytes"] == (c["trainer_resident_bytes"] + c["sampler_resident_bytes"] - d["shared_weights_bytes"]
                               + c["transient_bytes"])
    assert c["peak_bytes"] <= a["colocated"]["peak_bytes"] - d["shared_weights_bytes"]
