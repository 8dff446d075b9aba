"""Weights packed into panels for the native few-row matrix product (``panel_matmul.cc``).

A ``PanelWeight`` is what a weight becomes in the sampler's prepared copy when the native
kernel is in use: ``w[in..., out...]`` flattened to ``[K, N]`` and laid out as
``panels_pkc[ceil(N / 16), K, 16]`` (zero-padded columns), so the kernel streams each
panel front to back. Only ``backend.PanelProjections`` packs and reads them.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp


PANEL = 16  # output columns per panel: kPanel in panel_matmul.cc


@dataclasses.dataclass(frozen=True)
class PanelWeight:
    panels_pkc: jax.Array
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return (*self.in_shape, *self.out_shape)


jax.tree_util.register_dataclass(PanelWeight, data_fields=["panels_pkc"], meta_fields=["in_shape", "out_shape"])


def pack(w, in_dims: int = 1) -> PanelWeight:
    """``w[in..., out...]`` (float32) as panels; traceable, so it runs inside a jitted prepare."""
    if w.dtype != jnp.float32:
        raise TypeError(f"panel weights are float32 only, got {w.dtype}")
    in_shape, out_shape = tuple(w.shape[:in_dims]), tuple(w.shape[in_dims:])
    k, n = math.prod(in_shape), math.prod(out_shape)
    p = -(-n // PANEL)
    w_kn = jnp.pad(w.reshape(k, n), ((0, 0), (0, p * PANEL - n)))
    return PanelWeight(jnp.transpose(w_kn.reshape(k, p, PANEL), (1, 0, 2)), in_shape, out_shape)


def dense(x, w: PanelWeight):
    """``x[..., in...] @ w`` through the native kernel: float32 in, float32 out."""
    in_dims = len(w.in_shape)
    if tuple(x.shape[x.ndim - in_dims:]) != w.in_shape:
        raise ValueError(f"dense: input {x.shape} does not end in the weight's input shape {w.in_shape}")
    lead = x.shape[: x.ndim - in_dims]
    m, k, n = math.prod(lead), math.prod(w.in_shape), math.prod(w.out_shape)
    y_mn = jax.ffi.ffi_call("magjax_panel_matmul", jax.ShapeDtypeStruct((m, n), jnp.float32))(
        x.reshape(m, k).astype(jnp.float32), w.panels_pkc)
    return y_mn.reshape(*lead, *w.out_shape).astype(x.dtype)
