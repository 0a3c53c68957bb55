"""Restricted unpicklers: pickles that may build plain data only, in bounded memory.

A pickle is a program: ``pickle.load`` calls whatever global a file names (``os.system``, ...),
so opening a crafted "batch" would run code. :class:`RestrictedUnpickler` is the base of both
of nbconv's pickle readers (the CIFAR-10 batches here, ``data.pkl`` of torch ``.pt`` files in
:mod:`nbconv.serialization`): Python's pure-Python unpickler reading bytes already in memory
(so a length in the stream can never ask for more than the file holds; ``BYTEARRAY8``, which
Python's version allocates before reading, is checked first), with the opcodes that
instantiate classes (``INST``, ``OBJ``, ``NEWOBJ``, ``NEWOBJ_EX``) refused and ``BUILD`` (which
sets an object's state) routed to :meth:`RestrictedUnpickler.build`, which refuses it unless a
subclass admits that object. Globals come only from the subclass's ``find_class``.

:func:`load` reads a CIFAR-10 python batch. The official batches hold nothing but a dict of
byte strings, lists, ints and one uint8 array, so it admits exactly that:

- the pickle opcodes for dicts, lists, tuples, bytes/str, ints, floats, bools and None (they
  call no global);
- NumPy's array and dtype reconstruction, as written by NumPy 1.x (``numpy.core.multiarray``)
  and 2.x (``numpy._core.multiarray``) at every pickle protocol: ``_reconstruct`` (of
  ``numpy.ndarray``, with no elements) followed by its ``BUILD`` state (shape, dtype, and the
  raw bytes, exactly ``prod(shape) * itemsize`` of them), ``numpy.dtype`` (a type code, and a
  ``BUILD`` state that only sets its byte order), ``scalar`` and, for protocol 5,
  ``numpy._core.numeric._frombuffer`` (bytes of exactly the array's size); booleans,
  integers and floats only (no object arrays, no structured dtypes);
- ``_codecs.encode(text, 'latin1')``, which is how Python 3 writes ``bytes`` at protocol 2.

So every array is backed by bytes that are in the file: calling ``numpy.ndarray`` directly (a
view of a buffer with strides the file chooses, such as a zero-stride view claiming 200,000
images over one byte) is refused, so is a ``_reconstruct`` whose ``BUILD`` never comes (it
would hand back uninitialised memory), and the arrays of one file may not claim more bytes
in all than the file has. Any other global is refused before it is looked up, so nothing it
names is imported or called; the loaded value is then checked to hold only the types above.
Refusals raise :class:`UnsafePickleError` (a ``ValueError``) naming the file.
"""
import codecs
import io
import pickle

import numpy as np

__all__ = ["UnsafePickleError", "RestrictedUnpickler", "load"]


class UnsafePickleError(ValueError):
    """A file that the restricted unpickler refuses (it names a global no data file needs)."""


#: how deep lists, dicts and tuples may nest in a data file (the official batches: 2)
MAX_DEPTH = 100

_NUMERIC_KINDS = "biuf"
# NumPy's own reconstruction functions, taken from what it pickles (no deprecated imports).
_RECONSTRUCT = np.empty(0).__reduce__()[0]
_SCALAR = np.float64(0).__reduce__()[0]


class RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler over ``data`` (bytes), refusing the class-instantiating
    opcodes; ``BUILD`` calls :meth:`build`. Refusals raise ``self.error``."""

    error = UnsafePickleError
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, data, **kwargs):
        super().__init__(io.BytesIO(data), **kwargs)
        self._size = len(data)

    def _load_bytearray8(self):
        # Python's version allocates the length the stream claims before reading it
        n = int.from_bytes(self.read(8), "little")
        if n > self._size:
            raise self.error(f"it claims a bytearray of {n} bytes in a pickle of {self._size}")
        b = self.read(n)
        if len(b) != n:
            raise pickle.UnpicklingError("pickle data was truncated")
        self.append(bytearray(b))

    def _refuse_opcode(self, name):
        raise self.error(f"it uses the pickle opcode {name}, which builds instances of "
                         f"classes (refused, nothing was run)")

    def _load_build(self):
        state = self.stack.pop()
        self.build(self.stack[-1], state)

    def build(self, inst, state):
        """Set the state of ``inst`` (the ``BUILD`` opcode): refused unless overridden."""
        raise self.error(f"refusing to set the state of a {type(inst).__name__}")

    def persistent_load(self, pid):
        raise self.error("it holds a persistent id, which this file never holds")


for _op in ("INST", "OBJ", "NEWOBJ", "NEWOBJ_EX"):
    RestrictedUnpickler.dispatch[getattr(pickle, _op)[0]] = \
        lambda self, _name=_op: self._refuse_opcode(_name)
RestrictedUnpickler.dispatch[pickle.BUILD[0]] = RestrictedUnpickler._load_build
RestrictedUnpickler.dispatch[pickle.BYTEARRAY8[0]] = RestrictedUnpickler._load_bytearray8


def _numeric(dt):
    dt = np.dtype(dt)
    if dt.kind not in _NUMERIC_KINDS or dt.fields is not None or dt.subdtype is not None:
        raise UnsafePickleError(f"dtype {dt} (only booleans, integers and floats are admitted)")
    return dt


def _shape(shape, what):
    if not isinstance(shape, tuple) or len(shape) > 32 or \
            not all(type(n) is int and n >= 0 for n in shape):
        raise UnsafePickleError(f"{what}: shape {shape!r:.80} (a tuple of at most 32 "
                                f"non-negative ints)")
    count = 1
    for n in shape:
        count *= n
    return count


class _NdarrayType:
    """What ``numpy.ndarray`` resolves to: the first argument of ``_reconstruct``, nothing that
    can be called (``numpy.ndarray(shape, dtype, buffer, offset, strides)`` would build a view
    with strides the file chooses)."""

    def __call__(self, *args, **kwargs):
        raise UnsafePickleError("it calls numpy.ndarray(...) directly (a view with strides "
                                "the file chooses); NumPy pickles arrays through "
                                "_reconstruct or _frombuffer with their bytes")


_NDARRAY = _NdarrayType()


class _DataUnpickler(RestrictedUnpickler):
    """Plain data and numeric arrays, every array's bytes in the file (see the module doc)."""

    def __init__(self, data):
        super().__init__(data, encoding="bytes")
        self._budget = len(data)      # bytes the file's arrays may claim in all
        self._pending = {}            # id -> array of a _reconstruct still waiting for BUILD
        self._dtypes = {}             # id -> dtype this file built (BUILD allowed on it)
        self._allowed = {}
        for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
            self._allowed[(mod, "_reconstruct")] = self._reconstruct
            self._allowed[(mod, "scalar")] = self._scalar
        for mod in ("numpy.core.numeric", "numpy._core.numeric"):
            self._allowed[(mod, "_frombuffer")] = self._frombuffer
        self._allowed[("numpy", "ndarray")] = _NDARRAY
        self._allowed[("numpy", "dtype")] = self._dtype
        self._allowed[("_codecs", "encode")] = _encode

    def find_class(self, module, name):
        fn = self._allowed.get((module, name))
        if fn is None:
            raise UnsafePickleError(f"it refers to {module}.{name}, which a data file never "
                                    f"holds (refused, nothing was imported or run)")
        return fn

    def _spend(self, nbytes, what):
        self._budget -= nbytes
        if self._budget < 0:
            raise UnsafePickleError(f"{what} claims more bytes than the file holds (every "
                                    f"array must be backed by bytes in the file)")

    def _dtype(self, spec, align=False, copy=False):
        if not isinstance(spec, (str, bytes)):
            raise UnsafePickleError(f"numpy.dtype({spec!r:.80}) (only a type code is admitted)")
        if isinstance(spec, bytes):
            spec = spec.decode("ascii")
        dt = _numeric(np.dtype(spec, align=bool(align), copy=True))  # never a shared dtype
        self._dtypes[id(dt)] = dt
        return dt

    def _reconstruct(self, subtype, shape, dtype):
        if subtype is not _NDARRAY:
            raise UnsafePickleError(f"_reconstruct of {subtype!r:.80} (only numpy.ndarray is "
                                    f"admitted)")
        if isinstance(dtype, bytes):
            dtype = dtype.decode("ascii")
        if not isinstance(dtype, str) or _shape(shape, "_reconstruct") != 0:
            raise UnsafePickleError(f"_reconstruct of shape {shape} (NumPy writes an empty "
                                    f"array and its data in the BUILD state)")
        a = _RECONSTRUCT(np.ndarray, shape, _numeric(dtype))
        self._pending[id(a)] = a
        return a

    def _frombuffer(self, buf, dtype, shape, order):
        if type(buf) not in (bytes, bytearray) or order not in ("C", "F"):
            raise UnsafePickleError(f"_frombuffer of a {type(buf).__name__} in order "
                                    f"{order!r:.10}")
        dt = _numeric(dtype)
        nbytes = _shape(shape, "_frombuffer") * dt.itemsize
        if len(buf) != nbytes:
            raise UnsafePickleError(f"_frombuffer of shape {shape} {dt} needs {nbytes} bytes, "
                                    f"the buffer has {len(buf)}")
        self._spend(nbytes, f"an array of shape {shape}")
        return np.frombuffer(buf, dt).reshape(shape, order=order)

    def _scalar(self, dtype, *args):
        dt = _numeric(dtype)
        if len(args) != 1 or type(args[0]) is not bytes or len(args[0]) != dt.itemsize:
            raise UnsafePickleError(f"scalar of {dt} without its {dt.itemsize} bytes")
        self._spend(dt.itemsize, "a scalar")
        return _SCALAR(dt, *args)

    def build(self, inst, state):
        if isinstance(inst, np.dtype) and id(inst) in self._dtypes:
            # (version, byte order, subarray, names, fields, elsize, alignment, flags)
            if not (isinstance(state, tuple) and len(state) == 8
                    and state[1] in ("<", ">", "|", "=", b"<", b">", b"|", b"=")
                    and state[2:5] == (None, None, None)):
                raise UnsafePickleError(f"a dtype state {state!r:.80} (only a byte order)")
            inst.__setstate__(state)
            _numeric(inst)
            return
        if not isinstance(inst, np.ndarray) or self._pending.pop(id(inst), None) is None:
            raise UnsafePickleError(f"refusing to set the state of a {type(inst).__name__}")
        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], np.dtype)
                and type(state[3]) is bool and type(state[4]) is bytes):
            raise UnsafePickleError(f"an array state of {type(state).__name__} (expected "
                                    f"(version, shape, dtype, fortran, bytes))")
        dt = _numeric(state[2])
        nbytes = _shape(state[1], "an array state") * dt.itemsize
        if len(state[4]) != nbytes:
            raise UnsafePickleError(f"an array of shape {state[1]} {dt} needs {nbytes} bytes, "
                                    f"its state holds {len(state[4])}")
        self._spend(nbytes, f"an array of shape {state[1]}")
        inst.__setstate__(state)

    def load(self):
        obj = super().load()
        if self._pending:
            raise UnsafePickleError("it holds an array without its data (a _reconstruct with "
                                    "no BUILD state)")
        return obj


def _encode(text, encoding="utf-8", errors="strict"):
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise UnsafePickleError(f"_codecs.encode(..., {encoding!r:.20}) (only latin1 is "
                                f"admitted)")
    return codecs.encode(text, "latin1", errors)


_PLAIN = (bytes, str, int, float, bool, type(None))


def _check_plain(obj):
    """Raise :class:`UnsafePickleError` unless ``obj`` is built of plain data only, nested at
    most :data:`MAX_DEPTH` deep (iterative: no recursion limit to hit)."""
    seen, todo = set(), [(obj, 0)]
    while todo:
        obj, depth = todo.pop()
        if isinstance(obj, _PLAIN):
            continue
        if isinstance(obj, (np.ndarray, np.generic)):
            if type(obj) is not np.ndarray and not isinstance(obj, np.generic):
                raise UnsafePickleError(f"it holds a {type(obj).__name__}")
            _numeric(obj.dtype)
            continue
        if type(obj) not in (dict, list, tuple):
            raise UnsafePickleError(f"it holds a {type(obj).__name__}")
        if depth >= MAX_DEPTH:
            raise UnsafePickleError(f"it nests lists/dicts deeper than {MAX_DEPTH} levels")
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        for v in (obj.items() if isinstance(obj, dict) else obj):
            todo.append((v, depth + 1))


def load(path, what="a CIFAR-10 python batch"):
    """Unpickle ``path`` (bytes keys for Python 2 strings, as ``encoding='bytes'``) admitting
    plain data and numeric NumPy arrays backed by the file's bytes only (see the module doc).
    Memory stays within a small multiple of the file's size.

    Raises :class:`UnsafePickleError` for a file that names anything else, ``ValueError`` for
    one that is not a pickle (truncated, garbage), both naming ``path`` and saying it is not
    ``what``; ``FileNotFoundError`` / ``OSError`` as ``open`` does.
    """
    with open(path, "rb") as f:
        raw = f.read()
    try:
        obj = _DataUnpickler(raw).load()
        _check_plain(obj)
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{path} is not {what}: {e}") from None
    except RecursionError as e:
        raise ValueError(f"{path} is not {what} (nested too deeply)") from e
    except Exception as e:  # truncated, garbage, a malformed array state...
        raise ValueError(f"{path} is not {what} ({type(e).__name__}: {e})") from e
    return obj
