"""Reading PyTorch's ``.pt`` zip format without importing torch (the writer:
:mod:`._torch_write`).

``torch.save(obj, path)`` (since PyTorch 1.6) writes a zip archive: ``<root>/data.pkl``, a
pickle (protocol 2) of ``obj`` in which each tensor is a call of
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`` and
each storage a persistent id ``("storage", torch.FloatStorage, key, "cpu", numel)`` that names
the raw record ``<root>/data/<key>``; beside them ``<root>/byteorder`` (``little``, or ``big``
from a big-endian machine), ``<root>/version``, ``<root>/.format_version`` and
``<root>/.storage_alignment`` (records start at multiples of 64 bytes).

**Reading** (:func:`load_torch`). A pickle can call any importable function while it loads, so
``data.pkl`` is read by :class:`nbconv._unpickle.RestrictedUnpickler` (no class-building
opcodes) whose ``find_class`` hands out only these globals, none of which can run code that
the file chooses:

- ``collections.OrderedDict`` (a state_dict; its ``BUILD`` state, the ``_metadata``
  attribute, is dropped: ``BUILD`` on anything else is refused),
- ``torch._utils._rebuild_tensor_v2`` and ``torch._utils._rebuild_parameter``, replaced by
  local functions that only record the tensor's geometry,
- the storage type markers ``torch.{Float,Double,Half,BFloat16,Long,Int,Short,Char,Byte,
  Bool}Storage``, resolved by ``persistent_load`` to a record of ``numel`` elements.

Any other global (``os.system``, ``builtins.eval``, ``torch._utils._rebuild_sparse_tensor``, a
user class...) raises :class:`UnsafeFileError` when the pickle asks for it, before it could
be called. Memory stays bounded by what the tensors need: ``data.pkl`` may declare at most
:data:`MAX_PICKLE_BYTES`; a storage record must declare exactly ``numel * itemsize`` bytes,
checked before it is read; once the whole pickle is read, every tensor's geometry is checked
(ints, at most 64 dims, every element inside its storage) and each record is read only as far
as its tensors reach (a deflated record cannot inflate past that; a record read to its end has
its CRC checked). Tensors come back as C-contiguous, writeable copies, except that a tensor
whose elements overlap in its storage (a stride-0 ``expand``, an overlapping ``as_strided``),
and all the tensors of a storage whose copies would hold more than :data:`SHARED_COPIES` times
its elements, come back as read-only views of the storage instead (as ``np.broadcast_to``
gives), never materialised. bfloat16 storages are widened to float32 (exactly); complex and
quantized ones are refused. The loaded object keeps its nesting: dicts (``OrderedDict`` as
``dict``), lists, tuples, arrays and plain values (``None``, bool, int, float, str, bytes),
nested at most :data:`~nbconv.serialization._tree.MAX_DEPTH` deep. A file that is not a zip archive is refused unread, with the legacy format (``torch.save(...,
_use_new_zipfile_serialization=False)``, a plain pickle stream) named as such.
"""
import collections
import os
import re

import numpy as np

from .._io import ZIP_ERRORS, open_zip
from .._unpickle import RestrictedUnpickler
from . import _tree
from ._errors import TorchFileError, UnsafeFileError
from ._safetensors import widen_bf16

__all__ = ["load_torch", "is_legacy", "MAX_PICKLE_BYTES", "STORAGES", "ALIGN"]

#: the largest ``data.pkl`` read (the structure only: tensor bytes are in separate records)
MAX_PICKLE_BYTES = 64 << 20
MAX_DIMS = 64
#: the tensors of one storage are copied apart while their copies hold at most this many times
#: the storage's elements (tied weights: 2); beyond, they come back as read-only views
SHARED_COPIES = 4
#: torch aligns each record's data to this many bytes
ALIGN = 64
# storage type -> (dtype of the record's elements, little-endian; dtype of the loaded array)
STORAGES = {
    "FloatStorage": ("<f4", np.float32), "DoubleStorage": ("<f8", np.float64),
    "HalfStorage": ("<f2", np.float16), "BFloat16Storage": ("<u2", np.float32),
    "LongStorage": ("<i8", np.int64), "IntStorage": ("<i4", np.int32),
    "ShortStorage": ("<i2", np.int16), "CharStorage": ("i1", np.int8),
    "ByteStorage": ("u1", np.uint8), "BoolStorage": ("?", np.bool_),
}
_REFUSED_STORAGES = ("ComplexFloatStorage", "ComplexDoubleStorage", "QInt8Storage",
                     "QUInt8Storage", "QInt32Storage", "QUInt4x2Storage", "QUInt2x4Storage",
                     "UntypedStorage")
_KEY = re.compile(r"[A-Za-z0-9_]{1,64}")
# torch's legacy format starts with its magic number pickled as a LONG1
_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950a86a20f9469cfc6c).to_bytes(10, "little")


def is_legacy(head):
    """Whether ``head`` (a file's first bytes) starts torch's legacy (pre-1.6) format."""
    return head[:1] == b"\x80" and _LEGACY_MAGIC in head[:32]


class _StorageType:
    """What ``torch.FloatStorage`` etc. resolve to: only a dtype, nothing callable."""

    def __init__(self, name):
        self.name = name
        self.file_dtype, self.dtype = np.dtype(STORAGES[name][0]), np.dtype(STORAGES[name][1])


class _Storage:
    """One storage record: ``numel`` elements, read later as far as its tensors reach."""

    def __init__(self, key, stype, numel, info):
        self.key, self.stype, self.numel, self.info = key, stype, numel, info
        self.reach = 0          # elements its tensors use (from the start)
        self.tensors = []       # its tensors, in the order the pickle made them
        self.data = None


class _Tensor:
    """A ``_rebuild_tensor_v2`` call, recorded; checked and built after the whole pickle."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride
        self.name = None
        self.array = None


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False,
                    backward_hooks=None, metadata=None):
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: records the geometry."""
    if not isinstance(storage, _Storage):
        raise UnsafeFileError(f"a tensor's storage must be a storage record, got "
                              f"{type(storage).__name__}")
    t = _Tensor(storage, storage_offset, size, stride)
    storage.tensors.append(t)
    return t


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *args):
    """Stand-in for ``torch._utils._rebuild_parameter`` (``state_dict(keep_vars=True)``)."""
    if not isinstance(data, _Tensor):
        raise UnsafeFileError(f"parameter data must be a tensor, got {type(data).__name__}")
    return data


_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _TensorUnpickler(RestrictedUnpickler):
    error = UnsafeFileError

    def __init__(self, data, archive, root):
        super().__init__(data)
        self._archive, self._root = archive, root
        self.storages = {}

    def find_class(self, module, name):
        if (module, name) in _GLOBALS:
            return _GLOBALS[(module, name)]
        if module == "torch" and name in STORAGES:
            return _StorageType(name)
        if module == "torch" and name in _REFUSED_STORAGES:
            raise TorchFileError(f"torch.{name} tensors are not supported (supported: "
                                 f"{', '.join(sorted(STORAGES))})")
        raise UnsafeFileError(f"refusing to load global {module}.{name}: a state_dict file "
                              f"holds only tensors and plain values, and this pickle asks for "
                              f"something else (it could run code)")

    def build(self, inst, state):
        if type(inst) is not collections.OrderedDict:
            super().build(inst, state)
        # an OrderedDict's state is the state_dict's _metadata attribute: not kept

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise UnsafeFileError(f"unexpected persistent id {pid!r:.80}")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, _StorageType):
            raise UnsafeFileError(f"unexpected storage type {stype!r:.80}")
        if not isinstance(key, str) or not _KEY.fullmatch(key) or type(numel) is not int \
                or numel < 0:
            raise TorchFileError(f"bad storage record {key!r:.80} of {numel!r:.40} elements")
        if key in self.storages:
            storage = self.storages[key]
            if storage.stype.name != stype.name or storage.numel != numel:
                raise TorchFileError(f"storage record data/{key} is read as {numel} x "
                                     f"{stype.name} and {storage.numel} x {storage.stype.name}")
            return storage
        try:
            info = self._archive.getinfo(f"{self._root}data/{key}")
        except KeyError:
            raise TorchFileError(f"storage record data/{key} is missing") from None
        need = numel * stype.file_dtype.itemsize
        if info.file_size != need:
            raise TorchFileError(f"storage record data/{key} declares {info.file_size} bytes, "
                                 f"its tensors' storage is {numel} x {stype.name} = {need}")
        self.storages[key] = _Storage(key, stype, numel, info)
        return self.storages[key]


def _overlaps(size, stride):
    """Whether two indices of a view of ``size``/``stride`` may reach the same element (exact
    for every view torch makes: stride-0 and overlapping windows say True)."""
    last = 0        # the largest offset reachable through the dims already seen
    for n, s in sorted(((n, s) for n, s in zip(size, stride) if n > 1), key=lambda d: d[1]):
        if s <= last:
            return True
        last += s * (n - 1)
    return False


def _check_tensor(t):
    """Check a recorded tensor's geometry and extend its storage's reach."""
    size, stride, offset = t.size, t.stride, t.offset
    for what, v in (("size", size), ("stride", stride)):
        if not isinstance(v, tuple) or len(v) > MAX_DIMS or \
                not all(type(i) is int and 0 <= i < 2 ** 63 for i in v):
            raise TorchFileError(f"its {what} {v!r:.80} is not a tuple of at most {MAX_DIMS} "
                                 f"ints in 0..2**63-1")
    if len(size) != len(stride) or type(offset) is not int or offset < 0:
        raise TorchFileError(f"bad geometry: offset {offset!r:.40}, size {size}, stride "
                             f"{stride}")
    if 0 in size:
        return
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= t.storage.numel:
        raise TorchFileError(f"size {size}, stride {stride}, offset {offset} reaches element "
                             f"{last} of a storage of {t.storage.numel} elements")
    t.storage.reach = max(t.storage.reach, last + 1)


def _walk(obj, tensors):
    """Check the unpickled ``obj``: dicts (keys plain values), lists, tuples, tensors and plain
    values, at most MAX_DEPTH deep, no cycles; name each tensor by its (first) key path. A
    container the pickle shares (memo) is walked once: 60 lists each holding the previous one
    twice are 2**60 paths."""
    active, done = set(), set()

    def rec(o, path):
        if isinstance(o, _Tensor):
            if o.name is None:
                o.name = _tree.name_of(path)
                tensors.append(o)
            return
        if type(o) in _tree.PLAIN or type(o) is bytes or id(o) in done:
            return
        if type(o) not in (dict, collections.OrderedDict, list, tuple):
            raise TorchFileError(f"entry {_tree.name_of(path)!r:.80} is a {type(o).__name__}, "
                                 f"not a tensor, container or plain value")
        if len(path) >= _tree.MAX_DEPTH or id(o) in active:
            raise TorchFileError(f"entry {_tree.name_of(path)!r:.80} nests deeper than "
                                 f"{_tree.MAX_DEPTH} levels or contains itself")
        active.add(id(o))
        if isinstance(o, dict):
            for k, v in o.items():
                if type(k) not in _tree.PLAIN:
                    raise TorchFileError(f"entry {_tree.name_of(path)!r:.80} has a key of type "
                                         f"{type(k).__name__}")
                rec(v, path + [k])
        else:
            for i, v in enumerate(o):
                rec(v, path + [i])
        active.discard(id(o))
        done.add(id(o))

    rec(obj, [])


def _build(obj, memo):
    """The loaded object: containers rebuilt as dict/list/tuple, tensors as their arrays."""
    if isinstance(obj, _Tensor):
        return obj.array
    if type(obj) in _tree.PLAIN or type(obj) is bytes:
        return obj
    if id(obj) not in memo:
        if isinstance(obj, dict):
            memo[id(obj)] = out = {}
            out.update((k, _build(v, memo)) for k, v in obj.items())
        elif isinstance(obj, list):
            memo[id(obj)] = out = []
            out.extend(_build(v, memo) for v in obj)
        else:
            memo[id(obj)] = tuple(_build(v, memo) for v in obj)
    return memo[id(obj)]


def _read_storage(archive, s, big):
    """Read storage ``s`` as far as its tensors reach, as a 1-d array of the loaded dtype
    (``big``: the records are big-endian)."""
    nbytes = s.reach * s.stype.file_dtype.itemsize
    with archive.open(s.info) as f:   # reading to the record's end checks its CRC
        raw = f.read(nbytes)
    if len(raw) != nbytes:
        raise TorchFileError(f"holds {len(raw)} of the {nbytes} bytes its tensors need")
    a = np.frombuffer(raw, s.stype.file_dtype.newbyteorder(">" if big else "<"))
    return widen_bf16(a) if s.stype.name == "BFloat16Storage" else a.astype(s.stype.dtype)


def _make_arrays(s):
    """Each tensor of storage ``s``: a copy, or a read-only view where copies would hold more
    elements than the storage (see the module doc)."""
    data, sizes = s.data, [int(np.prod(t.size, dtype=object)) for t in s.tensors]
    views = sum(sizes) > SHARED_COPIES * max(s.reach, 1) or \
        any(_overlaps(t.size, t.stride) for t in s.tensors)
    for t, n in zip(s.tensors, sizes):
        if n == 0:
            try:
                t.array = np.zeros(t.size, s.stype.dtype)
            except ValueError as e:   # "array is too big": dims whose product overflows
                raise TorchFileError(f"tensor {t.name!r:.80} of size {t.size}: {e}") from None
            continue
        view = np.lib.stride_tricks.as_strided(
            data[t.offset:], shape=t.size, strides=[i * data.itemsize for i in t.stride],
            writeable=False)
        t.array = view if views else np.array(view, order="C", copy=True)


def _open(path):
    """The zip archive ``path``, refusing what is not one (legacy format named)."""
    with open(path, "rb") as f:
        head = f.read(32)
    if is_legacy(head):
        raise TorchFileError(
            f"{path} is a PyTorch file in the legacy format (torch.save before PyTorch 1.6, or "
            f"with _use_new_zipfile_serialization=False): a plain pickle, which nbconv does not "
            f"read because loading it could run code. Re-save it with a current PyTorch: "
            f"torch.save(torch.load(path, weights_only=True), new_path)")
    if head[:4] != b"PK\x03\x04":
        raise TorchFileError(f"{path} is not a torch zip archive (torch.save's format since "
                             f"PyTorch 1.6); plain pickles are refused because loading them "
                             f"could run code")
    return open_zip(path, TorchFileError, "not a torch .pt file that can be read")


_READ_ERRORS = ZIP_ERRORS + (OSError,)


def load_torch(path):
    """Read a ``torch.save(obj, path)`` file (zip format) as nested dicts/lists/tuples of
    ndarrays and plain values: a ``state_dict`` gives ``{name: ndarray}`` in the file's order
    (int64 buffers such as ``num_batches_tracked`` as 0-d int64 arrays, bfloat16 widened to
    float32), an optimizer's ``state_dict()`` its nested dict.

    Does not import torch and runs no code from the file: see :mod:`the module doc
    <nbconv.serialization._torch_read>` for what is accepted and how memory is bounded. Raises
    :class:`UnsafeFileError` for a pickle that asks for anything but tensors and plain
    values, :class:`TorchFileError` (both ``ValueError``) for a file that is not a torch zip
    archive (the legacy format named), is damaged or truncated, or holds an impossible
    tensor, naming the file and, where there is one, the tensor.
    """
    path = os.fspath(path)
    with _open(path) as archive:
        pkls = [i for i in archive.infolist() if i.filename.endswith("/data.pkl")
                and i.filename.count("/") == 1]
        if len(pkls) != 1:
            raise TorchFileError(f"{path}: expected one <root>/data.pkl record, found "
                                 f"{[i.filename for i in pkls] or 'none'}")
        root = pkls[0].filename[:-len("data.pkl")]
        if pkls[0].file_size > MAX_PICKLE_BYTES:
            raise TorchFileError(f"{path}: data.pkl declares {pkls[0].file_size} bytes, more "
                                 f"than the {MAX_PICKLE_BYTES} read (tensor data lives in "
                                 f"separate records; this is not a state_dict file)")
        try:
            order = b"little"
            if f"{root}byteorder" in archive.namelist():
                with archive.open(f"{root}byteorder") as f:
                    order = f.read(16).strip()
            if order not in (b"little", b"big"):
                raise TorchFileError(f"{path}: unknown byteorder {order!r:.20}")
            with archive.open(pkls[0]) as f:
                pkl = f.read(MAX_PICKLE_BYTES)
        except _READ_ERRORS as e:
            raise TorchFileError(f"{path}: data.pkl is unreadable ({type(e).__name__}: "
                                 f"{e})") from None
        unpickler = _TensorUnpickler(pkl, archive, root)
        try:
            obj = unpickler.load()
        except TorchFileError as e:
            raise type(e)(f"{path}: {e}") from None
        except Exception as e:  # truncated or malformed pickle: EOFError, UnpicklingError...
            raise TorchFileError(f"{path}: data.pkl is not a valid pickle ({type(e).__name__}: "
                                 f"{e})") from None
        tensors = []
        try:
            _walk(obj, tensors)
        except TorchFileError as e:
            raise TorchFileError(f"{path}: {e}") from None
        for t in tensors:
            try:
                _check_tensor(t)
            except TorchFileError as e:
                raise TorchFileError(f"{path}: tensor {t.name!r:.80}: {e}") from None
        for s in unpickler.storages.values():
            used = [t for t in s.tensors if t.name is not None]
            if not used:
                continue
            s.tensors = used
            try:
                s.data = _read_storage(archive, s, order == b"big")
            except (TorchFileError,) + _READ_ERRORS as e:
                raise TorchFileError(f"{path}: storage record data/{s.key} (tensor "
                                     f"{used[0].name!r:.80}): {type(e).__name__}: {e}") from None
            try:
                _make_arrays(s)
            except TorchFileError as e:
                raise TorchFileError(f"{path}: {e}") from None
    return _build(obj, {})
