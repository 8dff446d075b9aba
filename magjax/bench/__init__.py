"""``magjax bench``: throughput measured against this machine's own limits, in one run."""

from __future__ import annotations


def data_mesh(devices: int):
    """None for one device, else a data-parallel mesh over the first ``devices`` local
    devices: the work split by rows (slots, sequences) alone, as the demo's roles split it."""
    if devices <= 1:
        return None
    import jax

    from magjax.mesh import MeshConfig, make_mesh

    have = jax.local_devices()
    if devices > len(have):
        raise ValueError(f"bench: --devices {devices}, but this process has {len(have)} "
                         f"{have[0].platform} device(s)")
    return make_mesh(MeshConfig(data=devices, fsdp=1, model=1), have[:devices])
