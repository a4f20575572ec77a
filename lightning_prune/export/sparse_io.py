"""Sparse storage of a pruned model: the real on-disk gain of unstructured sparsity.

Each floating-point tensor of the ``state_dict`` is stored in whichever encoding is
smallest for it: dense values, a bitmask (1 bit per entry) + nonzero values, or CSR over
its 2-D view (row pointers + column indices in the narrowest unsigned int + values).
Sizes are measured on the bytes ``np.savez`` actually writes, for both the dense float32
baseline and the sparse file, so per-array container overhead is counted too.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

_META_KEY = "__meta__"


def _narrowest_uint(max_value: int) -> type[np.unsignedinteger]:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dtype).max:
            return dtype
    return np.uint64


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
        tensor = tensor.float()
    return tensor.contiguous().numpy()


def _candidates(array: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """All encodings of one floating-point array, keyed by format name."""
    flat = array.reshape(-1)
    mask = flat != 0
    values = flat[mask]
    rows = array.shape[0] if array.ndim >= 2 else 1
    cols = flat.size // max(rows, 1)
    matrix_mask = mask.reshape(rows, cols)
    col_idx = np.nonzero(matrix_mask)[1].astype(_narrowest_uint(max(cols - 1, 0)))
    indptr = np.concatenate([[0], np.cumsum(matrix_mask.sum(axis=1))])
    return {
        "dense": {"values": array.reshape(-1)},
        "bitmask": {"bitmask": np.packbits(mask), "values": values},
        "csr": {
            "indptr": indptr.astype(_narrowest_uint(int(values.size))),
            "indices": col_idx,
            "values": values,
        },
    }


def encode_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Arrays to save (``np.savez``) for the smallest per-tensor encoding, plus metadata."""
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {}
    for name, tensor in state_dict.items():
        array = _to_numpy(tensor)
        encodings = {"dense": {"values": array.reshape(-1)}}
        if np.issubdtype(array.dtype, np.floating) and array.size > 0:
            encodings = _candidates(array)
        fmt = min(encodings, key=lambda f: sum(a.nbytes for a in encodings[f].values()))
        for part, part_array in encodings[fmt].items():
            arrays[f"{name}|{part}"] = part_array
        meta[name] = {"format": fmt, "shape": list(tensor.shape), "dtype": str(tensor.dtype)}
    arrays[_META_KEY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    return arrays


def decode_state_dict(arrays: Any) -> dict[str, torch.Tensor]:
    """Inverse of :func:`encode_state_dict` (``arrays``: a mapping, e.g. ``np.load``)."""
    meta = json.loads(bytes(arrays[_META_KEY]).decode())
    state: dict[str, torch.Tensor] = {}
    for name, info in meta.items():
        dtype = getattr(torch, info["dtype"].removeprefix("torch."))
        shape = tuple(info["shape"])
        values = arrays[f"{name}|values"]
        if info["format"] == "dense":
            flat = values
        else:
            flat = np.zeros(int(np.prod(shape)), dtype=values.dtype)
            if info["format"] == "bitmask":
                mask = np.unpackbits(arrays[f"{name}|bitmask"], count=flat.size).astype(bool)
            else:
                rows = shape[0] if len(shape) >= 2 else 1
                mask = np.zeros((rows, flat.size // max(rows, 1)), dtype=bool)
                counts = np.diff(arrays[f"{name}|indptr"].astype(np.int64))
                row_idx = np.repeat(np.arange(rows), counts)
                mask[row_idx, arrays[f"{name}|indices"].astype(np.int64)] = True
                mask = mask.reshape(-1)
            flat[mask] = values
        state[name] = torch.from_numpy(flat.copy()).reshape(shape).to(dtype)
    return state


def _savez_bytes(arrays: dict[str, np.ndarray]) -> int:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getbuffer().nbytes


def size_report(model: nn.Module) -> dict[str, Any]:
    """Dense float32 bytes vs sparse-encoded bytes of ``model``'s state_dict, both serialised.

    Returns ``dense_bytes``, ``sparse_bytes``, ``compression_rate`` (dense / sparse),
    ``total_params``/``nonzero_params``/``sparsity`` (floating-point tensors of the
    state_dict, buffers included) and ``formats`` (how many tensors use each encoding).
    """
    state = model.state_dict()
    dense = {}
    for name, tensor in state.items():
        array = _to_numpy(tensor)
        is_float = np.issubdtype(array.dtype, np.floating)
        dense[name] = array.astype(np.float32) if is_float else array
    encoded = encode_state_dict(state)
    meta = json.loads(bytes(encoded[_META_KEY]).decode())
    floats = [t for t in state.values() if t.is_floating_point()]
    total = sum(t.numel() for t in floats)
    nonzero = sum(int(torch.count_nonzero(t)) for t in floats)
    formats: dict[str, int] = {}
    for info in meta.values():
        formats[info["format"]] = formats.get(info["format"], 0) + 1
    dense_bytes = _savez_bytes(dense)
    sparse_bytes = _savez_bytes(encoded)
    return {
        "dense_bytes": dense_bytes,
        "sparse_bytes": sparse_bytes,
        "compression_rate": dense_bytes / sparse_bytes,
        "total_params": total,
        "nonzero_params": nonzero,
        "sparsity": 1.0 - nonzero / total if total else 0.0,
        "formats": formats,
    }


def save_sparse(model: nn.Module, path: str | Path) -> Path:
    """Write ``model.state_dict()`` in the smallest per-tensor encoding (an ``.npz`` file)."""
    path = Path(path)
    with path.open("wb") as handle:
        np.savez(handle, **encode_state_dict(model.state_dict()))
    return path


def load_sparse(path: str | Path, model: nn.Module) -> nn.Module:
    """Load a file written by :func:`save_sparse` into ``model`` (same architecture)."""
    with np.load(Path(path), allow_pickle=False) as arrays:
        state = decode_state_dict(arrays)
    model.load_state_dict(state)
    return model
