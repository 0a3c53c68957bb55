"""A restricted unpickler for the CIFAR-10 python batches: it builds only plain data.

A pickle is a program: ``pickle.load`` calls whatever global a file names (``os.system``, ...),
so opening a crafted "batch" would run code. The official batches hold nothing but a dict of
byte strings, lists, ints and one uint8 array, so :func:`load` admits exactly that:

- the pickle opcodes for dicts, lists, tuples, bytes/str, ints, floats, bools and None (they
  call no global);
- NumPy's array and dtype reconstruction, as written by NumPy 1.x (``numpy.core.multiarray``)
  and 2.x (``numpy._core.multiarray``) at every pickle protocol: ``_reconstruct`` (for
  ``numpy.ndarray`` only), ``numpy.ndarray``, ``numpy.dtype``, ``scalar`` and, for protocol 5,
  ``numpy._core.numeric._frombuffer``; each behind a wrapper that refuses any dtype but
  booleans, integers and floats (no object arrays, no structured dtypes);
- ``_codecs.encode(text, 'latin1')``, which is how Python 3 writes ``bytes`` at protocol 2.

Any other global is refused before it is looked up, so nothing it names is imported or called;
the loaded value is then checked to hold only the types above. Refusals raise
:class:`UnsafePickleError` (a ``ValueError``) naming the file.
"""
import codecs
import pickle

import numpy as np

__all__ = ["UnsafePickleError", "load"]


class UnsafePickleError(ValueError):
    """A file that the restricted unpickler refuses (it names a global no data file needs)."""


_NUMERIC_KINDS = "biuf"
# NumPy's own reconstruction functions, taken from what it pickles (no deprecated imports).
_RECONSTRUCT = np.empty(0).__reduce__()[0]
_SCALAR = np.float64(0).__reduce__()[0]
_FROMBUFFER = np.empty(1).__reduce_ex__(5)[0]


def _numeric(dt):
    dt = np.dtype(dt)
    if dt.kind not in _NUMERIC_KINDS or dt.fields is not None or dt.subdtype is not None:
        raise UnsafePickleError(f"dtype {dt} (only booleans, integers and floats are admitted)")
    return dt


def _dtype(spec, align=False, copy=False):
    if not isinstance(spec, (str, bytes)):
        raise UnsafePickleError(f"numpy.dtype({spec!r}) (only a type code is admitted)")
    if isinstance(spec, bytes):
        spec = spec.decode("ascii")
    return _numeric(np.dtype(spec, align=bool(align), copy=bool(copy)))


def _reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"_reconstruct of {subtype!r} (only numpy.ndarray is admitted)")
    return _RECONSTRUCT(np.ndarray, shape, dtype)


def _scalar(dtype, *args):
    return _SCALAR(_numeric(dtype), *args)


def _frombuffer(buf, dtype, shape, order):
    return _FROMBUFFER(buf, _numeric(dtype), shape, order)


def _encode(text, encoding="utf-8", errors="strict"):
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise UnsafePickleError(f"_codecs.encode(..., {encoding!r}) (only latin1 is admitted)")
    return codecs.encode(text, "latin1", errors)


_ALLOWED = {}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_mod, "_reconstruct")] = _reconstruct
    _ALLOWED[(_mod, "scalar")] = _scalar
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED[(_mod, "_frombuffer")] = _frombuffer
_ALLOWED[("numpy", "ndarray")] = np.ndarray
_ALLOWED[("numpy", "dtype")] = _dtype
_ALLOWED[("_codecs", "encode")] = _encode


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        fn = _ALLOWED.get((module, name))
        if fn is None:
            raise UnsafePickleError(f"it refers to {module}.{name}, which a data file never "
                                    f"holds (refused, nothing was imported or run)")
        return fn

    def persistent_load(self, pid):
        raise UnsafePickleError("it holds a persistent id, which a data file never holds")


_PLAIN = (bytes, str, int, float, bool, type(None))


def _check_plain(obj, seen):
    """Raise :class:`UnsafePickleError` unless ``obj`` is built of plain data only."""
    if isinstance(obj, _PLAIN):
        return
    if isinstance(obj, (np.ndarray, np.generic)):
        if type(obj) is not np.ndarray and not isinstance(obj, np.generic):
            raise UnsafePickleError(f"it holds a {type(obj).__name__}")
        _numeric(obj.dtype)
        return
    if type(obj) not in (dict, list, tuple):
        raise UnsafePickleError(f"it holds a {type(obj).__name__}")
    if id(obj) in seen:
        return
    seen.add(id(obj))
    items = obj.items() if isinstance(obj, dict) else ((v, None) for v in obj)
    for k, v in items:
        _check_plain(k, seen)
        _check_plain(v, seen)


def load(path, what="a CIFAR-10 python batch"):
    """Unpickle ``path`` (bytes keys for Python 2 strings, as ``encoding='bytes'``) admitting
    plain data and numeric NumPy arrays only (see the module doc).

    Raises :class:`UnsafePickleError` for a file that names anything else, ``ValueError`` for
    one that is not a pickle (truncated, garbage), both naming ``path`` and saying it is not
    ``what``; ``FileNotFoundError`` / ``OSError`` as ``open`` does.
    """
    with open(path, "rb") as f:
        try:
            obj = _Unpickler(f, encoding="bytes").load()
            _check_plain(obj, set())
        except UnsafePickleError as e:
            raise UnsafePickleError(f"{path} is not {what}: {e}") from None
        except RecursionError as e:
            raise ValueError(f"{path} is not {what} (nested too deeply)") from e
        except Exception as e:  # truncated, garbage, a malformed array state...
            raise ValueError(f"{path} is not {what} ({type(e).__name__}: {e})") from e
    return obj
