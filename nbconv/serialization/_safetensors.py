"""The safetensors format, read and written natively (the ``safetensors`` package is a test
dependency only): an 8-byte little-endian header length ``L``, ``L`` bytes of UTF-8 JSON
``{name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__":
{str: str}}`` padded with spaces to a multiple of 8, then the raw little-endian tensor bytes,
offsets relative to the end of the header.

The loader is strict, as the format's reference implementation: header length within the file
and at most 100 MB, a valid UTF-8 JSON object with no duplicate names, ``__metadata__`` (if
present) a dict of str -> str, known dtypes, shapes of at most 64 non-negative ints below
2**63, each tensor's byte range inside the data and exactly ``prod(shape) * itemsize`` long,
and the ranges tiling the data with no overlap and no hole. Any violation raises
:class:`SafetensorsError` naming the file and the tensor. ``BF16`` tensors (no NumPy dtype)
are widened to float32, exactly; ``F8_*`` and other types NumPy cannot hold are refused.

Tensors are written in the reference implementation's order (by dtype, then by name), so a
flat state dict that nbconv writes is byte-identical to ``safetensors.numpy.save_file``'s (for
C-contiguous arrays: safetensors 0.8's NumPy writer ignores strides and writes a strided view's
underlying buffer, silently wrong; nbconv writes the view's values). A nested object is
flattened by :func:`nbconv.serialization._tree.flatten` and its tree kept in the
``__metadata__`` entry ``"nbconv.tree"``.
"""
import json
import os

import numpy as np

from .._io import atomic_write
from . import _tree
from ._errors import SafetensorsError

__all__ = ["save_safetensors", "load_safetensors"]

_DTYPES = {
    "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "I16": np.int16, "U16": np.uint16,
    "F16": np.float16, "I32": np.int32, "U32": np.uint32, "F32": np.float32, "I64": np.int64,
    "U64": np.uint64, "F64": np.float64,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}
# the reference implementation writes tensors by dtype (its enum order, descending), then name
_RANK = {k: i for i, k in enumerate(["BOOL", "U8", "I8", "I16", "U16", "F16", "I32", "U32",
                                     "F32", "F64", "I64", "U64"])}
_NO_NUMPY = ("F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "C64")
MAX_HEADER = 100_000_000
MAX_DIMS = 64


def widen_bf16(u16):
    """bfloat16 bit patterns (a uint16 array) as float32 values (exact: the top 16 bits)."""
    return (u16.astype(np.uint32) << 16).view(np.float32)


def _check_array(a, name):
    dt = a.dtype.newbyteorder("=")
    if dt not in _NAMES:
        raise TypeError(f"{name!r} has dtype {a.dtype}, which safetensors cannot store "
                        f"(supported: {', '.join(str(d) for d in _NAMES)})")


def save_safetensors(obj, path, metadata=None):
    """Write ``obj`` to ``path`` in the safetensors format, atomically.

    ``obj`` is a state dict ``{name: ndarray}`` or any nested dicts/lists/tuples of arrays and
    ``None``/bool/int/float/str (an optimizer's ``state_dict()``, ``{"model": sd, "epoch":
    3}``): a nested object is stored as tensors named by their key paths (keys joined by
    ``/``) plus its structure as JSON in ``__metadata__["nbconv.tree"]`` (see
    :mod:`nbconv.serialization`). Arrays of any shape of dtype bool, (u)int8/16/32/64,
    float16/32/64 are written C-ordered and little-endian. ``metadata`` is an optional ``{str:
    str}`` stored in the header's ``__metadata__``. Raises ``TypeError`` for a value, key or
    dtype nbconv cannot store, ``ValueError`` for the reserved names ``__metadata__`` (a
    tensor) and ``nbconv.tree`` (a metadata key), a cycle or too deep a nesting."""
    obj = _tree.walk(obj, _check_array)
    if _tree.is_flat(obj):
        tensors, tree = obj, None
    elif isinstance(obj, (dict, list, tuple)):
        tensors, tree = _tree.flatten(obj)
    else:
        raise TypeError(f"cannot save a {type(obj).__name__} as a safetensors file (save a "
                        f"dict, list or tuple)")
    if "__metadata__" in tensors:
        raise ValueError("'__metadata__' is reserved by the safetensors format")
    if metadata is not None:
        if not isinstance(metadata, dict) or not all(
                isinstance(a, str) and isinstance(b, str) for a, b in metadata.items()):
            raise TypeError("metadata must be a dict of str -> str")
        if _tree.TREE_KEY in metadata:
            raise ValueError(f"the metadata key {_tree.TREE_KEY!r} is reserved for nested "
                             f"objects")
    meta = dict(metadata or {})
    if tree is not None:
        meta[_tree.TREE_KEY] = tree
    items = [(k, v, v.dtype.newbyteorder("=")) for k, v in tensors.items()]
    items.sort(key=lambda t: (-_RANK[_NAMES[t[2]]], t[0]))
    header, blobs, pos = {}, [], 0
    if meta:
        header["__metadata__"] = meta
    for k, v, dt in items:
        b = np.ascontiguousarray(v, dtype=dt.newbyteorder("<")).tobytes()
        header[k] = {"dtype": _NAMES[dt], "shape": list(v.shape),
                     "data_offsets": [pos, pos + len(b)]}
        blobs.append(b)
        pos += len(b)
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    head += b" " * (-len(head) % 8)
    atomic_write(path, b"".join([len(head).to_bytes(8, "little"), head] + blobs))


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise SafetensorsError(f"duplicate name {k!r:.80} in the header")
        out[k] = v
    return out


def _is_uint(v, limit=2 ** 63):
    return type(v) is int and 0 <= v < limit


def _entry(path, name, info, nbytes):
    """``(begin, end, name, file dtype, shape)`` of one header entry, checked."""
    def bad(what):
        return SafetensorsError(f"{path}: tensor {name!r:.80} {what}")

    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise bad(f"needs exactly dtype, shape and data_offsets, got {info!r:.120}")
    code, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(code, str) or code not in _DTYPES and code != "BF16":
        if code in _NO_NUMPY:
            raise bad(f"has dtype {code}, which NumPy cannot hold; convert it to F32 first")
        raise bad(f"has unknown dtype {code!r:.40}")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or \
            not all(_is_uint(s) for s in shape):
        raise bad(f"has bad shape {shape!r:.120} (at most {MAX_DIMS} ints in 0..2**63-1)")
    if not (isinstance(offs, list) and len(offs) == 2 and all(_is_uint(o) for o in offs)
            and offs[0] <= offs[1] <= nbytes):
        raise bad(f"has data_offsets {offs!r:.80} outside the {nbytes} data bytes")
    dt = np.dtype(np.uint16 if code == "BF16" else _DTYPES[code])
    need = int(np.prod(shape, dtype=object)) * dt.itemsize
    if offs[1] - offs[0] != need:
        raise bad(f"of shape {shape} and dtype {code} needs {need} bytes, its data_offsets "
                  f"{offs} span {offs[1] - offs[0]}")
    return offs[0], offs[1], name, code, dt, tuple(shape)


def load_safetensors(path, return_metadata=False):
    """Read a safetensors file: ``{name: ndarray}`` (each array its own C-contiguous, writeable
    copy, in the file's data order; BF16 widened to float32), or the nested object a nested
    :func:`save_safetensors` wrote; with ``return_metadata`` also the header's
    ``__metadata__`` dict (``{}`` if absent; without nbconv's ``"nbconv.tree"`` entry). Raises
    :class:`SafetensorsError` (a ``ValueError``) on any malformed header or byte range, naming
    the file and the tensor, and on dtypes NumPy cannot hold (F8)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise SafetensorsError(f"{path}: {len(raw)} bytes is too short for a safetensors file")
    n = int.from_bytes(raw[:8], "little")
    if n < 2 or n > MAX_HEADER or 8 + n > len(raw):
        raise SafetensorsError(f"{path}: header length {n} is impossible for a file of "
                               f"{len(raw)} bytes (at most {MAX_HEADER})")
    try:
        header = json.loads(raw[8:8 + n].decode("utf-8"), object_pairs_hook=_no_duplicates)
    except SafetensorsError as e:
        raise SafetensorsError(f"{path}: {e}") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise SafetensorsError(f"{path}: the header is not valid UTF-8 JSON ({e})") from None
    except RecursionError:
        raise SafetensorsError(f"{path}: the header is nested too deeply") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: the header must be a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SafetensorsError(f"{path}: __metadata__ must be a dict of str -> str, got "
                               f"{json.dumps(metadata)[:80]}")
    data = memoryview(raw)[8 + n:]
    entries = sorted((_entry(path, k, v, len(data)) for k, v in header.items()),
                     key=lambda e: (e[0], e[1]))
    pos = 0
    for begin, end, name, *_ in entries:
        if begin != pos:
            what = "overlaps the previous tensor" if begin < pos else "leaves a hole before it"
            raise SafetensorsError(f"{path}: tensor {name!r:.80} at bytes [{begin}, {end}) "
                                   f"{what} (previous data ends at {pos})")
        pos = end
    if pos != len(data):
        raise SafetensorsError(f"{path}: the tensors cover {pos} of the {len(data)} data bytes")
    out = {}
    for begin, end, name, code, dt, shape in entries:
        try:
            a = np.frombuffer(data[begin:end], dt.newbyteorder("<")).reshape(shape)
        except (ValueError, OverflowError) as e:
            raise SafetensorsError(f"{path}: tensor {name!r:.80} of shape {list(shape)}: "
                                   f"{e}") from None
        out[name] = widen_bf16(a) if code == "BF16" else a.astype(dt, copy=True)
    tree = metadata.pop(_tree.TREE_KEY, None)
    if tree is not None:
        out = _tree.unflatten(tree, out, lambda msg: SafetensorsError(f"{path}: {msg}"))
    return (out, metadata) if return_metadata else out
