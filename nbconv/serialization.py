"""Weights in and out: PyTorch ``.pt`` files (read only) and safetensors (read and write).

``load_torch(path)`` reads what ``torch.save(model.state_dict(), path)`` writes, **without
importing torch**. That file is a zip archive ``<root>/data.pkl`` (a pickle of the
``OrderedDict``) plus one raw little-endian record ``<root>/data/<key>`` per tensor storage
(``<root>/byteorder`` says ``little`` or ``big``). A pickle can call any importable function
while it loads, so the pickle is read by a restricted unpickler whose ``find_class`` hands out
only these globals, none of which can run code that the file chooses:

- ``collections.OrderedDict`` (the state_dict and the empty ``backward_hooks``; ``BUILD``,
  which sets attributes, is allowed only on an ``OrderedDict`` instance, for ``_metadata``),
- ``torch._utils._rebuild_tensor_v2`` and ``torch._utils._rebuild_parameter``, replaced by
  local functions that build a NumPy view of a storage (``as_strided`` after checking that
  every element of the view lies inside the storage),
- the storage type markers ``torch.{Float,Double,Half,Long,Int,Short,Char,Byte,Bool}Storage``
  (float32, float64, float16, int64 such as ``num_batches_tracked``, int32, int16, int8,
  uint8, bool), resolved by ``persistent_load`` to the bytes of ``data/<key>``.

Any other global (``os.system``, ``builtins.eval``, ``torch._utils._rebuild_sparse_tensor``, a
user class...) raises :class:`UnsafeFileError` when the pickle asks for it, before it could
be called. Refused with a clear error as well: a file that is not a zip archive (a plain
pickle, or the legacy format of ``torch.save(..., _use_new_zipfile_serialization=False)``:
it is never unpickled), bfloat16, complex and quantized storages, negative strides, views
that reach past their storage, a top-level object that is not a flat ``{str: tensor}`` dict.
Every tensor comes back as its own C-contiguous, writeable array (views of one storage are
copied apart).

``save_safetensors(state_dict, path)`` / ``load_safetensors(path)`` implement the
`safetensors <https://github.com/huggingface/safetensors>`_ format natively. The design rule is
that every runtime dependency beyond numba, numpy and tqdm must earn its place, and this format
is about forty lines: an 8-byte little-endian header length ``L``, ``L`` bytes of UTF-8 JSON
``{name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__":
{str: str}}`` padded with spaces to a multiple of 8, then the raw little-endian tensor bytes,
offsets relative to the end of the header. So nbconv writes and reads it itself; the tests
check interoperation both ways, bit for bit, against the ``safetensors`` package (a test
dependency only). The loader is strict, as the format's own reference implementation: header
length within the file and at most 100 MB, valid UTF-8 JSON object with no duplicate names,
known dtypes, non-negative integer shapes, each tensor's byte range ``[begin, end)`` inside the
data and exactly ``prod(shape) * itemsize`` long, and the ranges tiling the data with no
overlap and no hole. Any violation raises :class:`SafetensorsError` naming the tensor. Tensors
are written in the reference implementation's order (by dtype, then by name), so a file
that nbconv writes is byte-identical to ``safetensors.numpy.save_file``'s (for C-contiguous
arrays: safetensors 0.8's NumPy writer ignores strides and writes a strided view's underlying
buffer, silently wrong; nbconv writes the view's values). bfloat16 and float8 tensors
(``BF16``, ``F8_*``) have no NumPy dtype and are refused on load.

Both writers go through :func:`nbconv._io.atomic_write`: a reader sees the old file or the new
one, never half of one.
"""
import collections
import json
import os
import pickle
import re
import zipfile

import numpy as np

from ._io import atomic_write

__all__ = ["load_torch", "save_safetensors", "load_safetensors", "save", "load",
           "UnsafeFileError", "SafetensorsError"]


class UnsafeFileError(pickle.UnpicklingError):
    """A ``.pt`` file asked for something other than tensors (an arbitrary global, a pickle
    that is not a torch zip archive, an out-of-range view)."""


class SafetensorsError(ValueError):
    """A malformed or unsupported safetensors file."""


# ---- torch zip files ------------------------------------------------------------------------

_STORAGES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_REFUSED_STORAGES = ("BFloat16Storage", "ComplexFloatStorage", "ComplexDoubleStorage",
                     "QInt8Storage", "QUInt8Storage", "QInt32Storage", "QUInt4x2Storage",
                     "QUInt2x4Storage", "UntypedStorage")
_KEY = re.compile(r"[A-Za-z0-9_]{1,64}")


class _StorageType:
    """What ``torch.FloatStorage`` etc. resolve to: only a dtype, nothing callable."""

    def __init__(self, name):
        self.name, self.dtype = name, np.dtype(_STORAGES[name])


class _Storage:
    """One storage record: a 1-d array of ``numel`` elements (read-only)."""

    def __init__(self, data):
        self.data = data


def _int_tuple(v, what):
    if not isinstance(v, tuple) or not all(type(i) is int for i in v):
        raise UnsafeFileError(f"tensor {what} must be a tuple of ints, got {v!r}")
    return v


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False,
                    backward_hooks=None, metadata=None):
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: a copy of the strided view."""
    if not isinstance(storage, _Storage):
        raise UnsafeFileError(f"tensor storage must be a storage record, got "
                              f"{type(storage).__name__}")
    size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if type(storage_offset) is not int or storage_offset < 0 or len(size) != len(stride):
        raise UnsafeFileError(f"bad tensor geometry: offset {storage_offset!r}, size {size}, "
                              f"stride {stride}")
    if any(n < 0 for n in size) or any(s < 0 for s in stride):
        raise UnsafeFileError(f"negative sizes or strides are not supported: size {size}, "
                              f"stride {stride}")
    data = storage.data
    if 0 in size:
        return np.zeros(size, data.dtype)
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= data.size:
        raise UnsafeFileError(f"tensor of size {size}, stride {stride}, offset "
                              f"{storage_offset} reaches element {last} of a storage of "
                              f"{data.size} elements")
    view = np.lib.stride_tricks.as_strided(
        data[storage_offset:], shape=size, strides=[s * data.itemsize for s in stride],
        writeable=False)
    return np.array(view, order="C", copy=True)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *args):
    """Stand-in for ``torch._utils._rebuild_parameter`` (``state_dict(keep_vars=True)``)."""
    if not isinstance(data, np.ndarray):
        raise UnsafeFileError(f"parameter data must be a tensor, got {type(data).__name__}")
    return data


_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


def _load_build(self):
    """``BUILD`` only sets plain attributes on an ``OrderedDict`` (the state_dict's
    ``_metadata``): nothing else, so no attribute of a function or class can be replaced."""
    state = self.stack.pop()
    inst = self.stack[-1]
    if type(inst) is not collections.OrderedDict or type(state) is not dict or \
            not all(isinstance(k, str) for k in state):
        raise UnsafeFileError(f"refusing to set the state of a {type(inst).__name__} with a "
                              f"{type(state).__name__}")
    inst.__dict__.update(state)


class _TensorUnpickler(pickle._Unpickler):
    """The pure-Python unpickler (``data.pkl`` is small: tensor bytes come through
    ``persistent_load``), so that ``BUILD`` can be restricted too."""

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = _load_build

    def __init__(self, file, archive, root, big_endian):
        super().__init__(file)
        self._archive, self._root, self._big = archive, root, big_endian
        self._storages = {}

    def find_class(self, module, name):
        if (module, name) in _GLOBALS:
            return _GLOBALS[(module, name)]
        if module == "torch" and name in _STORAGES:
            return _StorageType(name)
        if module == "torch" and name in _REFUSED_STORAGES:
            raise UnsafeFileError(f"torch.{name} tensors are not supported (supported: "
                                  f"{', '.join(sorted(_STORAGES))})")
        raise UnsafeFileError(f"refusing to load global {module}.{name}: a state_dict file "
                              f"holds only tensors, and this pickle asks for something else "
                              f"(it could run code)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise UnsafeFileError(f"unexpected persistent id {pid!r}")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, _StorageType):
            raise UnsafeFileError(f"unexpected storage type {stype!r}")
        if not isinstance(key, str) or not _KEY.fullmatch(key) or type(numel) is not int \
                or numel < 0:
            raise UnsafeFileError(f"bad storage record {key!r} of {numel!r} elements")
        if key not in self._storages:
            try:
                raw = self._archive.read(f"{self._root}data/{key}")
            except KeyError:
                raise UnsafeFileError(f"storage record data/{key} is missing") from None
            need = numel * stype.dtype.itemsize
            if len(raw) < need:
                raise UnsafeFileError(f"storage record data/{key} has {len(raw)} bytes, "
                                      f"{need} expected ({numel} x {stype.dtype})")
            dt = stype.dtype.newbyteorder(">" if self._big else "<")
            data = np.frombuffer(raw, dt, count=numel).astype(stype.dtype)
            self._storages[key] = (stype.dtype, _Storage(data))
        dtype, storage = self._storages[key]
        if dtype != stype.dtype:
            raise UnsafeFileError(f"storage record data/{key} is read as {dtype} and "
                                  f"{stype.dtype}")
        return storage


def load_torch(path):
    """Read a ``torch.save(model.state_dict(), path)`` file as ``{name: ndarray}``.

    Does not import torch and runs no code from the file: see the module docstring for what
    the restricted unpickler accepts. Keys keep the file's order; int64 buffers such as
    ``num_batches_tracked`` come back as 0-d int64 arrays. Raises :class:`UnsafeFileError`
    (a ``pickle.UnpicklingError``) for a file that is not a torch zip archive or asks for
    anything but tensors, ``ValueError`` when the object saved is not a flat dict of tensors.
    """
    path = os.fspath(path)
    if not zipfile.is_zipfile(path):
        raise UnsafeFileError(f"{path} is not a torch zip archive (torch.save's default format "
                              f"since PyTorch 1.6); plain pickles and the legacy format are "
                              f"refused because loading them could run code")
    with zipfile.ZipFile(path) as archive:
        pkls = [n for n in archive.namelist() if n.endswith("data.pkl")
                and n.count("/") == 1]
        if len(pkls) != 1:
            raise UnsafeFileError(f"{path}: expected one <root>/data.pkl record, found "
                                  f"{pkls or 'none'}")
        root = pkls[0][:-len("data.pkl")]
        order = b"little"
        if f"{root}byteorder" in archive.namelist():
            order = archive.read(f"{root}byteorder").strip()
        if order not in (b"little", b"big"):
            raise UnsafeFileError(f"{path}: unknown byteorder {order!r}")
        with archive.open(pkls[0]) as f:
            obj = _TensorUnpickler(f, archive, root, order == b"big").load()
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state_dict "
                         f"(a dict of tensors)")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, np.ndarray)]
    if bad:
        raise ValueError(f"{path} is not a flat state_dict: entries {bad[:5]} are not "
                         f"tensors (save model.state_dict() itself)")
    return dict(obj)


# ---- safetensors ----------------------------------------------------------------------------

_ST_DTYPES = {
    "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "I16": np.int16, "U16": np.uint16,
    "F16": np.float16, "I32": np.int32, "U32": np.uint32, "F32": np.float32, "I64": np.int64,
    "U64": np.uint64, "F64": np.float64,
}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}
# the reference implementation writes tensors by dtype (its enum order, descending), then name
_ST_RANK = {k: i for i, k in enumerate(["BOOL", "U8", "I8", "I16", "U16", "F16", "I32", "U32",
                                        "F32", "F64", "I64", "U64"])}
_ST_NO_NUMPY = ("BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "C64")
_ST_MAX_HEADER = 100_000_000


def save_safetensors(state_dict, path, metadata=None):
    """Write ``{name: ndarray}`` to ``path`` in the safetensors format, atomically.

    Arrays of any shape (0-d included) of dtype bool, (u)int8/16/32/64, float16/32/64 are
    written C-ordered and little-endian; ``metadata`` is an optional ``{str: str}`` stored in
    the header's ``__metadata__``. Raises ``TypeError`` for a non-string name, a non-array
    value or an unsupported dtype, ``ValueError`` for the reserved name ``__metadata__``."""
    if not isinstance(state_dict, dict):
        raise TypeError(f"state_dict must be a dict of name -> ndarray, got "
                        f"{type(state_dict).__name__}")
    items = []
    for k, v in state_dict.items():
        if not isinstance(k, str):
            raise TypeError(f"state_dict keys must be str, got {k!r}")
        if k == "__metadata__":
            raise ValueError("'__metadata__' is reserved by the safetensors format")
        if not isinstance(v, np.ndarray):
            raise TypeError(f"state_dict[{k!r}] must be a numpy.ndarray, got "
                            f"{type(v).__name__}")
        dt = v.dtype.newbyteorder("=")
        if dt not in _ST_NAMES:
            raise TypeError(f"state_dict[{k!r}] has dtype {v.dtype}, which safetensors cannot "
                            f"store (supported: {', '.join(str(d) for d in _ST_NAMES)})")
        items.append((k, v, dt))
    if metadata is not None:
        if not isinstance(metadata, dict) or not all(
                isinstance(a, str) and isinstance(b, str) for a, b in metadata.items()):
            raise TypeError("metadata must be a dict of str -> str")
    items.sort(key=lambda t: (-_ST_RANK[_ST_NAMES[t[2]]], t[0]))
    header, blobs, pos = {}, [], 0
    if metadata:
        header["__metadata__"] = dict(metadata)
    for k, v, dt in items:
        b = np.ascontiguousarray(v, dtype=dt.newbyteorder("<")).tobytes()
        header[k] = {"dtype": _ST_NAMES[dt], "shape": list(v.shape),
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
            raise SafetensorsError(f"duplicate name {k!r} in the header")
        out[k] = v
    return out


def _is_uint(v):
    return type(v) is int and v >= 0


def load_safetensors(path, return_metadata=False):
    """Read a safetensors file as ``{name: ndarray}`` (each array its own C-contiguous,
    writeable copy, in the file's data order); with ``return_metadata`` also the header's
    ``__metadata__`` dict (``{}`` if absent). Raises :class:`SafetensorsError` (a
    ``ValueError``) on any malformed header or byte range, naming the tensor, and on dtypes
    NumPy cannot hold (BF16, F8)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise SafetensorsError(f"{path}: {len(raw)} bytes is too short for a safetensors file")
    n = int.from_bytes(raw[:8], "little")
    if n < 2 or n > _ST_MAX_HEADER or 8 + n > len(raw):
        raise SafetensorsError(f"{path}: header length {n} is impossible for a file of "
                               f"{len(raw)} bytes (at most {_ST_MAX_HEADER})")
    try:
        header = json.loads(raw[8:8 + n].decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{path}: the header is not valid UTF-8 JSON ({e})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: the header must be a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SafetensorsError(f"{path}: __metadata__ must map str to str")
    data = memoryview(raw)[8 + n:]
    entries = []
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise SafetensorsError(f"{path}: tensor {name!r} needs exactly dtype, shape and "
                                   f"data_offsets, got {info!r}")
        code, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if code in _ST_NO_NUMPY:
            raise SafetensorsError(f"{path}: tensor {name!r} has dtype {code}, which NumPy "
                                   f"cannot hold; convert it to F32 first")
        if code not in _ST_DTYPES:
            raise SafetensorsError(f"{path}: tensor {name!r} has unknown dtype {code!r}")
        if not isinstance(shape, list) or not all(_is_uint(s) for s in shape):
            raise SafetensorsError(f"{path}: tensor {name!r} has bad shape {shape!r}")
        if not (isinstance(offs, list) and len(offs) == 2 and all(_is_uint(o) for o in offs)
                and offs[0] <= offs[1] <= len(data)):
            raise SafetensorsError(f"{path}: tensor {name!r} has data_offsets {offs!r} outside "
                                   f"the {len(data)} data bytes")
        dt = np.dtype(_ST_DTYPES[code])
        if offs[1] - offs[0] != int(np.prod(shape, dtype=object)) * dt.itemsize:
            raise SafetensorsError(f"{path}: tensor {name!r} of shape {shape} and dtype {code} "
                                   f"needs {int(np.prod(shape, dtype=object)) * dt.itemsize} "
                                   f"bytes, its data_offsets {offs} span {offs[1] - offs[0]}")
        entries.append((offs[0], offs[1], name, dt, tuple(shape)))
    entries.sort(key=lambda e: (e[0], e[1]))
    pos = 0
    for begin, end, name, _, _ in entries:
        if begin != pos:
            what = "overlaps the previous tensor" if begin < pos else "leaves a hole before it"
            raise SafetensorsError(f"{path}: tensor {name!r} at bytes [{begin}, {end}) {what} "
                                   f"(previous data ends at {pos})")
        pos = end
    if pos != len(data):
        raise SafetensorsError(f"{path}: the tensors cover {pos} of the {len(data)} data bytes")
    out = {}
    for begin, end, name, dt, shape in entries:
        a = np.frombuffer(data[begin:end], dt.newbyteorder("<")).reshape(shape)
        out[name] = a.astype(dt, copy=True)
    return (out, metadata) if return_metadata else out


# ---- torch.save / torch.load on state dicts ---------------------------------------------------

def save(state_dict, path):
    """Write a ``state_dict`` (``{str: ndarray}``, e.g. ``model.state_dict()``) to ``path``, as
    ``torch.save(model.state_dict(), path)`` does, in the safetensors format
    (:func:`save_safetensors`): safe to load (no pickle), readable by torch
    (``safetensors.torch.load_file``) and by :func:`load`. Only arrays, not the architecture:
    rebuild the model in code, then ``model.load_state_dict(nbconv.load(path))``."""
    save_safetensors(state_dict, path)


def load(path):
    """The ``{str: ndarray}`` state dict in ``path``: a file of :func:`save` (safetensors) or a
    ``torch.save(model.state_dict(), path)`` zip file (read by :func:`load_torch`, without torch
    and without running the pickle), told apart by their first bytes."""
    if zipfile.is_zipfile(path):
        return load_torch(path)
    return load_safetensors(path)
