"""TPU slices by name: ``v5p-64`` (as Cloud TPU names them) or ``v5p:2x4x4`` (the chip grid).

Cloud TPU counts TensorCores in v4 and v5p slice names (two per chip: ``v5p-64`` is 32
chips) and chips in v5e and v6e names (``v5e-16`` is 16 chips). v4 and v5p chips run as one
device each ("megacore"), as JAX sees them on the real slice. The chip's HBM is what XLA
reports for the compiled device when libtpu is installed (``hbm_bytes``), else the nominal
capacity below.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import math
import os
import re

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Generation:
    name: str  # as in topology names: v4, v5p, v5e, v6e
    dims: int  # 3: a 3-D torus of chips; 2: a 2-D grid
    cores_in_name: bool  # the slice name counts TensorCores (two per chip), not chips
    nominal_hbm_bytes: int  # per chip, when XLA cannot be asked
    chip_config: str  # libtpu's chip configuration: one device per chip
    aliases: tuple[str, ...] = ()


GENERATIONS = {g.name: g for g in (
    Generation("v4", 3, True, 32 * GIB, "megacore"),
    Generation("v5p", 3, True, int(95.74 * GIB), "megacore"),
    Generation("v5e", 2, False, 16 * GIB, "default", ("v5litepod",)),
    Generation("v6e", 2, False, 32 * GIB, "default"),
)}
_ALIASES = {a: g for g in GENERATIONS.values() for a in (g.name, *g.aliases)}
CHIPS_PER_HOST = 4  # multi-host slices of every generation here: a 2x2 (x1) block per host
SINGLE_HOST_MAX = {2: 8, 3: 4}  # the most chips one host drives (v5e-8 / v6e-8 are one host)


@dataclasses.dataclass(frozen=True)
class Slice:
    name: str  # as given
    generation: Generation
    grid: tuple[int, ...]  # chips along each axis of the torus / grid

    @property
    def chips(self) -> int:
        return math.prod(self.grid)

    @property
    def topology_name(self) -> str:
        return f"{self.generation.name}:{'x'.join(map(str, self.grid))}"

    @property
    def chips_per_host_bounds(self) -> tuple[int, int, int]:
        grid3 = (*self.grid, 1) if len(self.grid) == 2 else self.grid
        if self.chips <= SINGLE_HOST_MAX[self.generation.dims]:
            return tuple(grid3)
        return tuple(min(g, h) for g, h in zip(grid3, (2, 2, 1)))

    @property
    def hosts(self) -> int:
        return self.chips // math.prod(self.chips_per_host_bounds)

    def describe(self) -> str:
        return f"{self.name} ({self.topology_name}, {self.chips} chips on {self.hosts} host(s))"


def _grid_for(chips: int, dims: int) -> tuple[int, ...]:
    """The grid Cloud TPU builds for a power-of-two chip count: doubling, in turn, the last of
    the smallest axes (v5p: 2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4, 4x4x8 ...; v5e: 1x1, 2x2, 2x4,
    4x4, 4x8 ...)."""
    if dims == 3:
        grid, have = [2, 2, 1], 4
        if chips < 4:
            return {1: (1, 1, 1), 2: (2, 1, 1)}[chips]
    else:
        grid, have = [1, 1], 1
        if chips == 2:
            return (1, 2)
        if chips >= 4:
            grid, have = [2, 2], 4
    while have < chips:
        smallest = min(grid)
        i = max(j for j, g in enumerate(grid) if g == smallest)
        grid[i] *= 2
        have *= 2
    return tuple(grid)


def parse_slice(name: str) -> Slice:
    """``v5p-64``, ``v5e-16``, ``v4-32``, ``v6e-8`` or an explicit ``v5p:2x4x4``; a clear
    ValueError otherwise."""
    known = ", ".join(sorted(GENERATIONS))
    text = name.strip().lower()
    explicit = re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+)+)", text)
    counted = re.fullmatch(r"([a-z0-9]+)-(\d+)", text)
    if not (explicit or counted):
        raise ValueError(f"TPU slice {name!r}: expected a name such as v5p-64, v5e-16 or an explicit grid such as "
                         f"v5p:2x4x4 (generations: {known})")
    gen_name = (explicit or counted).group(1)
    if gen_name not in _ALIASES:
        raise ValueError(f"TPU slice {name!r}: unknown generation {gen_name!r} (known: {known})")
    gen = _ALIASES[gen_name]
    if explicit:
        grid = tuple(int(g) for g in explicit.group(2).split("x"))
        if len(grid) != gen.dims or min(grid) < 1:
            raise ValueError(f"TPU slice {name!r}: {gen.name} chips form a {gen.dims}-D grid, e.g. "
                             f"{gen.name}:{'x'.join(['2'] * gen.dims)}")
        return Slice(name, gen, grid)
    count = int(counted.group(2))
    chips = count // 2 if gen.cores_in_name else count
    unit = "TensorCores (two per chip)" if gen.cores_in_name else "chips"
    if chips < 1 or chips & (chips - 1) or (gen.cores_in_name and count % 2):
        raise ValueError(f"TPU slice {name!r}: the number counts {unit} and must give a power-of-two number of "
                         f"chips; name other shapes explicitly, e.g. {gen.name}:{'x'.join(['2'] * gen.dims)}")
    return Slice(name, gen, _grid_for(chips, gen.dims))


def libtpu_available() -> bool:
    """Whether TPU programs can be compiled here (the ``tpu`` extra is installed)."""
    try:
        import libtpu  # noqa: F401
    except ImportError:
        return False
    return True


INSTALL_HINT = 'pip install -e ".[tpu]"'

GOOGLE_PCI_VENDOR = "0x1ae0"  # TPU chips attach over PCI under Google's vendor id
# Any slice libtpu knows: it only names the local chips, and where this is set there are none.
NO_LOCAL_TPU = {"TPU_ACCELERATOR_TYPE": "v5p-8", "TPU_WORKER_HOSTNAMES": "localhost"}


def host_may_have_tpus(pci_devices: str = "/sys/bus/pci/devices") -> bool:
    """Whether a PCI device of Google's is attached: a TPU chip, or (on Google Cloud VMs)
    the virtual network card, which cannot be told apart without libtpu's device table."""
    for vendor in glob.glob(os.path.join(pci_devices, "*", "vendor")):
        try:
            with open(vendor) as f:
                if f.read().strip() == GOOGLE_PCI_VENDOR:
                    return True
        except OSError:
            continue
    return False


def quiet_libtpu_off_tpu() -> None:
    """With libtpu installed (the ``tpu`` extra), every JAX process loads it at start-up, and
    it asks the cloud metadata server which slice this host belongs to. Off Google Cloud
    (a laptop, CI, a CPU host planning a pod) nobody answers, and libtpu prints an
    ``INVALID_ARGUMENT`` error and two warnings about ``TPU_ACCELERATOR_TYPE`` and
    ``TPU_WORKER_HOSTNAMES`` before JAX falls back to the CPU: harmless, and alarming above
    a plan. Where no Google PCI device is attached (so no TPU chip), this answers for the
    metadata server. Must run before JAX initialises its backends; variables the user set
    win, and a host that may have TPU chips is left alone."""
    import importlib.util

    if importlib.util.find_spec("libtpu") is None or host_may_have_tpus():
        return
    for name, value in NO_LOCAL_TPU.items():
        os.environ.setdefault(name, value)


@functools.cache
def devices(slice_: Slice) -> tuple:
    """The slice's devices, one per chip, for ahead-of-time compilation (no TPU needed)."""
    from jax.experimental import topologies

    if not libtpu_available():
        raise RuntimeError(f"compiling for {slice_.name} needs libtpu: {INSTALL_HINT}")
    # libtpu takes a machine-wide lock when it loads, for the TPU it would drive; compiling
    # ahead of time drives none, so concurrent planners (test workers, several plans) and
    # a run holding the TPU must not lock each other out.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    topo = topologies.get_topology_desc(platform="tpu", topology_name=slice_.topology_name,
                                        chip_config_name=slice_.generation.chip_config,
                                        chips_per_host_bounds=slice_.chips_per_host_bounds, num_slices=1)
    found = tuple(topo.devices)
    if len(found) != slice_.chips:
        raise RuntimeError(f"libtpu describes {slice_.topology_name} with {len(found)} devices, expected "
                           f"{slice_.chips} (one per chip)")
    return found


_HBM = re.compile(r"exceeds available HBM \(([0-9.]+)([KMGT]?)\)")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(number: str, unit: str) -> int:
    """XLA's human-readable sizes (binary units: ``95.74G`` is 95.74 GiB)."""
    return int(float(number) * _UNITS[unit])


@functools.cache
def hbm_bytes(slice_: Slice) -> tuple[int, str]:
    """(bytes of HBM per chip, where the figure comes from). XLA states the chip's usable HBM
    only when a program exceeds it, so a one-instruction program asking for 1 TiB is compiled
    and its error read; without libtpu, or if the message changes, the nominal capacity."""
    if not libtpu_available():
        return slice_.generation.nominal_hbm_bytes, "nominal"
    import jax
    import jax.numpy as jnp

    device = devices(slice_)[0]
    x = jax.ShapeDtypeStruct((1,), jnp.int8, sharding=jax.sharding.SingleDeviceSharding(device))
    try:
        jax.jit(lambda x: jnp.zeros((1 << 40,), jnp.int8) + x).lower(x).compile()
    except Exception as err:  # noqa: BLE001 - the error is the measurement
        found = _HBM.search(str(err))
        if found:
            return parse_bytes(*found.groups()), "XLA"
    return slice_.generation.nominal_hbm_bytes, "nominal"
