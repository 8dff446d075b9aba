"""Reading and writing the safetensors format with NumPy memory maps.

The format is an 8-byte little-endian header length, a JSON header mapping tensor names to
dtype, shape and byte offsets, then raw little-endian bytes. Reading through a memory map
lets the loader copy only the slice each device needs, and this module validates the header
so a truncated or corrupt file fails with its name instead of returning garbage.
"""

from __future__ import annotations

import json
import math
import os
import struct

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
NAMES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsError(ValueError):
    """A safetensors file that cannot be read as such; the message names the file."""


class SafetensorsFile:
    """Lazily readable tensors of one ``.safetensors`` file."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        size = os.path.getsize(self.path)
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise SafetensorsError(f"{self.path}: corrupt safetensors file (shorter than its 8-byte header length)")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, _MAX_HEADER):
                raise SafetensorsError(f"{self.path}: corrupt safetensors file (header length {n} exceeds file size {size})")
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise SafetensorsError(f"{self.path}: corrupt safetensors file (header is not JSON: {err})") from None
        if not isinstance(header, dict):
            raise SafetensorsError(f"{self.path}: corrupt safetensors file (header is not a JSON object)")
        self.metadata = header.pop("__metadata__", {}) or {}
        self._data_start = 8 + n
        self._entries = {}
        for name, entry in header.items():
            try:
                dtype = DTYPES[entry["dtype"]]
                shape = tuple(int(s) for s in entry["shape"])
                begin, end = (int(o) for o in entry["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise SafetensorsError(f"{self.path}: corrupt safetensors entry for tensor {name!r}: {entry!r}") from None
            if end - begin != math.prod(shape) * dtype.itemsize or self._data_start + end > size:
                raise SafetensorsError(
                    f"{self.path}: corrupt or truncated safetensors file: tensor {name!r} needs bytes "
                    f"[{begin}, {end}) of a {size - self._data_start}-byte data section")
            self._entries[name] = (dtype, shape, begin)
        self._mmap = None

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def get(self, name: str) -> np.ndarray:
        """A read-only memory-mapped view of one tensor (no copy until sliced and used)."""
        if self._mmap is None:
            self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
        dtype, shape, begin = self._entries[name]
        count = math.prod(shape)
        start = self._data_start + begin
        flat = self._mmap[start : start + count * dtype.itemsize].view(dtype)
        return flat.reshape(shape)


def save_file(tensors: dict[str, np.ndarray], path: str | os.PathLike, metadata: dict[str, str] | None = None):
    """Writes ``tensors`` to ``path`` (via a temporary file, so a crash leaves no half file)."""
    header, offset = {}, 0
    arrays = {}
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        if arr.dtype not in NAMES:
            raise SafetensorsError(f"{path}: tensor {name!r} has unsupported dtype {arr.dtype}")
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        header[name] = {"dtype": NAMES[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        arrays[name] = arr
        offset += arr.nbytes
    if metadata:
        header["__metadata__"] = metadata
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # align the data section to 8 bytes
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name in sorted(arrays):
            f.write(arrays[name].tobytes())
    os.replace(tmp, path)
