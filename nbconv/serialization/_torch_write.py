"""Writing PyTorch's ``.pt`` zip format without importing torch (the layout: :mod:`._torch_read`).

:func:`save_torch` emits the layout ``torch.save`` writes (root ``archive``, as ``torch.save``
into a file object names it): ``data.pkl`` written opcode by opcode (protocol 2; no pickler,
no torch), one stored record per array (C-contiguous, little-endian; one record for an array
found twice), each record's data at a multiple of 64 bytes (padded as torch pads: an extra
field ``FB`` of ``Z`` bytes), so that ``torch.load(path, weights_only=True)`` reads it.
"""
import io
import struct
import zipfile

import numpy as np

from .._io import atomic_write
from . import _tree
from ._torch_read import ALIGN, STORAGES

__all__ = ["save_torch"]

_WRITE = {np.dtype(v[1]): k for k, v in STORAGES.items() if k != "BFloat16Storage"}


def _check_array(a, name):
    if a.dtype.newbyteorder("=") not in _WRITE:
        raise TypeError(f"{name!r} has dtype {a.dtype}, which a .pt file cannot store "
                        f"(supported: {', '.join(str(d) for d in _WRITE)})")


def _long(v):
    """``v`` as pickle's LONG1/LONG4 two's complement little-endian bytes."""
    if v == 0:
        return b"\x8a\x00"
    b = v.to_bytes((v.bit_length() >> 3) + 1, "little", signed=True)
    if v < 0 and len(b) > 1 and b[-1] == 0xFF and b[-2] & 0x80:
        b = b[:-1]
    return (b"\x8a" + bytes([len(b)]) if len(b) < 256 else b"\x8b" + struct.pack("<i", len(b))) + b


class _PickleWriter:
    """``data.pkl`` opcode by opcode (protocol 2, as torch writes it), arrays as tensors."""

    def __init__(self):
        self.out = bytearray(b"\x80\x02")
        self.records = {}   # id(array) -> (key, little-endian C-contiguous array)
        self.memo = {}      # id(container) -> (pickle memo index, container)

    def str(self, s):
        b = s.encode("utf-8", "surrogatepass")
        self.out += b"X" + struct.pack("<I", len(b)) + b

    def value(self, v):
        out = self.out
        if v is None:
            out += b"N"
        elif v is True or v is False:
            out += b"\x88" if v else b"\x89"
        elif type(v) is int:
            if 0 <= v < 256:
                out += b"K" + bytes([v])
            elif -2 ** 31 <= v < 2 ** 31:
                out += b"J" + struct.pack("<i", v)
            else:
                out += _long(v)
        elif type(v) is float:
            out += b"G" + struct.pack(">d", v)
        elif type(v) is str:
            self.str(v)
        elif isinstance(v, np.ndarray):
            self.tensor(v)
        elif id(v) in self.memo:    # a container found before: a reference (LONG_BINGET)
            out += b"j" + struct.pack("<I", self.memo[id(v)][0])
        elif isinstance(v, dict):
            out += b"}" + self.put(v)
            if v:
                out += b"("
                for k, x in v.items():
                    self.value(k)
                    self.value(x)
                out += b"u"
        elif isinstance(v, list):
            out += b"]" + self.put(v)
            if v:
                out += b"("
                for x in v:
                    self.value(x)
                out += b"e"
        else:  # tuple
            out += b"("
            for x in v:
                self.value(x)
            out += b"t" + self.put(v)

    def put(self, v):
        """Memoise container ``v`` (LONG_BINPUT): written once however often it is found."""
        self.memo[id(v)] = (len(self.memo), v)     # v kept alive: its id stays its own
        return b"r" + struct.pack("<I", self.memo[id(v)][0])

    def tensor(self, a):
        if id(a) not in self.records:
            le = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
            self.records[id(a)] = (str(len(self.records)), le)
        key, le = self.records[id(a)]
        dt = a.dtype.newbyteorder("=")
        stride, step = [], 1
        for n in reversed(a.shape):
            stride.insert(0, step)
            step *= max(n, 1)
        self.out += b"ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storage"
        self.out += f"ctorch\n{_WRITE[dt]}\n".encode()
        self.str(key)
        self.str("cpu")
        self.value(a.size)
        self.out += b"tQ"
        self.value(0)
        self.value(tuple(a.shape))
        self.value(tuple(stride))
        self.out += b"\x89ccollections\nOrderedDict\n)Rt" + b"R"


def _add(z, buf, name, payload):
    """Add a stored record whose data starts at a multiple of :data:`ALIGN` bytes."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    start = buf.tell() + 30 + len(name.encode()) + 4
    pad = -start % ALIGN
    info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
    z.writestr(info, payload)


def save_torch(obj, path):
    """Write ``obj`` to ``path`` in PyTorch's zip format, atomically, without torch:
    ``torch.load(path, weights_only=True)`` reads it (arrays as tensors, dicts, lists, tuples
    and plain values as they are), and so does :func:`load_torch`.

    ``obj``: nested dicts (keys str or int), lists and tuples of ndarrays (bool, (u)int8,
    int16/32/64, float16/32/64) and ``None``/bool/int/float/str. Raises ``TypeError`` for a
    value, key or dtype it cannot store, ``ValueError`` for a cycle or too deep a nesting,
    before anything is written."""
    obj = _tree.walk(obj, _check_array)
    w = _PickleWriter()
    w.value(obj)
    w.out += b"."
    buf = io.BytesIO()
    root = "archive/"
    with zipfile.ZipFile(buf, "w", allowZip64=True) as z:
        _add(z, buf, root + "data.pkl", bytes(w.out))
        _add(z, buf, root + ".format_version", b"1")
        _add(z, buf, root + ".storage_alignment", str(ALIGN).encode())
        _add(z, buf, root + "byteorder", b"little")
        for key, le in w.records.values():
            _add(z, buf, f"{root}data/{key}", memoryview(le.reshape(-1).view(np.uint8)))
        _add(z, buf, root + "version", b"3\n")
    atomic_write(path, buf.getvalue())
