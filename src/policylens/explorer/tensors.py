"""Tensors on the wire: raw little-endian arrays behind a JSON header, not JSON lists.

Layout of one message (``application/x-policylens-tensors``)::

    b"PLT1" | header length (uint32 LE) | header (UTF-8 JSON, padded to 8 bytes) | array bytes

The header is ``{"meta": {...}, "tensors": {name: {"dtype", "shape", "offset", "nbytes"}}}``;
offsets count from the end of the header and are multiples of 8, so the browser views each array
in place as a typed array (``static/api.js`` decodes it). A maze vector field travels in ~3 ms
this way against ~18 ms as JSON lists (../shared/DESIGN.md).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

MAGIC = b"PLT1"
MEDIA_TYPE = "application/x-policylens-tensors"
DTYPES = {"float32": np.float32, "uint8": np.uint8, "int32": np.int32}
"""What travels: the typed arrays a browser has (int64 and float64 are narrowed)."""


def jsonable(value: Any) -> Any:
    """``value`` with NumPy scalars/arrays as Python values and non-finite floats as None
    (JSON has no NaN; a browser's ``JSON.parse`` refuses it)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _wire_array(array: Any) -> np.ndarray:
    """``array`` as one of :data:`DTYPES`, C-contiguous, little-endian."""
    a = np.asarray(array.detach().cpu().numpy() if hasattr(array, "detach") else array)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    elif np.issubdtype(a.dtype, np.integer) and a.dtype != np.uint8:
        a = a.astype(np.int32)
    elif a.dtype != np.uint8:
        a = a.astype(np.float32)
    return np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False)


def pack(arrays: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> bytes:
    """One message holding ``arrays`` (name -> array or tensor) and the JSON-able ``meta``."""
    wire = {name: _wire_array(a) for name, a in arrays.items()}
    entries, offset = {}, 0
    for name, a in wire.items():
        entries[name] = {
            "dtype": a.dtype.name,
            "shape": list(a.shape),
            "offset": offset,
            "nbytes": a.nbytes,
        }
        offset += -(-a.nbytes // 8) * 8
    header = json.dumps(
        {"meta": jsonable(dict(meta or {})), "tensors": entries}, allow_nan=False
    ).encode()
    header += b" " * (-(len(MAGIC) + 4 + len(header)) % 8)
    parts = [MAGIC, struct.pack("<I", len(header)), header]
    for a in wire.values():
        parts += [a.tobytes(), b"\0" * (-a.nbytes % 8)]
    return b"".join(parts)


def unpack(message: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and meta of a :func:`pack` message (for tests and Python clients)."""
    if message[:4] != MAGIC:
        raise ValueError("not a policylens tensor message (bad magic bytes)")
    (size,) = struct.unpack("<I", message[4:8])
    header = json.loads(message[8 : 8 + size])
    base = 8 + size
    arrays = {}
    for name, e in header["tensors"].items():
        start = base + e["offset"]
        buf = message[start : start + e["nbytes"]]
        arrays[name] = np.frombuffer(buf, dtype=DTYPES[e["dtype"]]).reshape(e["shape"])
    return arrays, header["meta"]
