"""The checkpoint file format: one ``.npz`` (no pickles) written atomically and verified on load.

Layout (format ``"nbconv-checkpoint"``, version 2):

- ``param/<key>``: the model's parameters and ``buffer/<key>`` its other ``state_dict`` entries
  (buffers, ``num_batches_tracked`` as a 0-d int64 array), PyTorch's keys;
- ``best_params/<key>``, ``best_buffers/<key>``: the best epoch's copies, if any;
- ``<section>/...``: arrays of the nested states (optimizer, scheduler, extra state), referenced
  from the metadata by name (:func:`encode` / :func:`decode`);
- ``__meta__``: UTF-8 JSON (``format``, ``version``, ``signature`` = the ``state_dict``'s names,
  shapes and dtypes, and whatever the writer adds: epoch, history, random generator states...);
- ``__checksum__``: SHA-256 over the metadata bytes and every array's name, dtype, shape and
  bytes (:func:`checksum`).

:func:`read` raises :class:`CheckpointError` on an unreadable, truncated, altered or foreign
file, and on metadata that is not a JSON object nested at most :data:`MAX_META_DEPTH` deep; it
reads every array with bounds (the members' declared sizes within the file's, each ``.npy``
header matching its member before the data is read, no object arrays). Version 1 files
(written before layers had ``state_dict``/``get_extra_state``: random generators and batch
counters were stored by attribute path) are read and converted to the version 2 layout in
memory. :func:`model_state` (what ``nbconv.load`` returns for a checkpoint) is the model's
``state_dict`` alone. The training loop that writes and restores checkpoints is
:class:`nbconv.train.Trainer`.
"""
import hashlib
import io
import json
import os

import numpy as np

from ._io import atomic_write, open_zip

__all__ = ["FORMAT", "VERSION", "CheckpointError", "encode", "decode", "checksum", "signature",
           "signature_diff", "write", "read", "model_state", "check_entries"]

FORMAT = "nbconv-checkpoint"
VERSION = 2


class CheckpointError(ValueError):
    """A checkpoint file cannot be used: unreadable, corrupted, or made for another model."""


# ---- nested state <-> JSON + arrays -------------------------------------------------------------

def encode(obj, arrays, prefix):
    """A JSON-able tree of ``obj`` (dicts with any keys, lists, tuples, arrays, NumPy scalars,
    ``None``/bool/int/float/str); arrays go into ``arrays`` under ``prefix/...`` names."""
    if isinstance(obj, np.ndarray):
        name = f"{prefix}"
        arrays[name] = obj
        return {"__array__": name}
    if isinstance(obj, dict):
        return {"__dict__": [[encode(k, arrays, f"{prefix}/k{i}"),
                              encode(v, arrays, f"{prefix}/{i}")]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        items = [encode(v, arrays, f"{prefix}/{i}") for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if isinstance(obj, np.generic):
        return {"__scalar__": obj.item(), "dtype": obj.dtype.str}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint ({prefix})")


def decode(tree, arrays):
    """The object :func:`encode` made ``tree`` from (arrays looked up in ``arrays``)."""
    if isinstance(tree, list):
        return [decode(v, arrays) for v in tree]
    if isinstance(tree, dict):
        if "__array__" in tree:
            return arrays[tree["__array__"]]
        if "__dict__" in tree:
            return {decode(k, arrays): decode(v, arrays) for k, v in tree["__dict__"]}
        if "__tuple__" in tree:
            return tuple(decode(v, arrays) for v in tree["__tuple__"])
        if "__scalar__" in tree:
            return np.dtype(tree["dtype"]).type(tree["__scalar__"])
        raise CheckpointError(f"unknown entry in checkpoint: {sorted(tree)}")
    return tree


def checksum(meta_bytes, arrays):
    """SHA-256 hex digest of the metadata bytes and the arrays (sorted by name)."""
    h = hashlib.sha256(meta_bytes)
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


# ---- model state ------------------------------------------------------------------------------

def signature(state_dict, param_names):
    """``{"params": {key: [shape, dtype]}, "buffers": {...}}`` of a ``state_dict``: the keys in
    ``param_names`` are parameters, the others buffers."""
    params = set(param_names)
    sig = {"params": {}, "buffers": {}}
    for k, v in state_dict.items():
        sig["params" if k in params else "buffers"][k] = [list(v.shape), v.dtype.str]
    return sig


def signature_diff(theirs, mine):
    """A short description of how two signatures differ."""
    out = []
    for kind in ("params", "buffers"):
        a, b = theirs.get(kind, {}), mine.get(kind, {})
        if set(a) - set(b):
            out.append(f"{kind} only in the checkpoint: {sorted(set(a) - set(b))}")
        if set(b) - set(a):
            out.append(f"{kind} only in the model: {sorted(set(b) - set(a))}")
        for k in sorted(set(a) & set(b)):
            if a[k] != b[k]:
                out.append(f"{kind} {k!r}: checkpoint shape/dtype {a[k]}, model {b[k]}")
    return "; ".join(out[:6]) or "differs"


# ---- files ------------------------------------------------------------------------------------

def write(path, meta, arrays):
    """Write ``meta`` (JSON-able; ``format`` and ``version`` are added) and ``arrays`` (name ->
    ndarray) to ``path`` atomically, with their checksum."""
    meta = dict(meta, format=FORMAT, version=VERSION)
    meta_bytes = json.dumps(meta, sort_keys=True).encode()
    out = dict(arrays)
    out["__meta__"] = np.frombuffer(meta_bytes, np.uint8)
    out["__checksum__"] = np.frombuffer(checksum(meta_bytes, arrays).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **out)
    atomic_write(path, buf.getvalue())


#: how deep the metadata's JSON may nest (a version 2 checkpoint's is about 10 levels deep)
MAX_META_DEPTH = 100


def _depth(tree, limit):
    """Whether the JSON tree ``tree`` nests at most ``limit`` deep (iterative)."""
    todo = [(tree, 0)]
    while todo:
        node, depth = todo.pop()
        if isinstance(node, (dict, list)):
            if depth >= limit:
                return False
            todo.extend((v, depth + 1) for v in (node.values() if isinstance(node, dict)
                                                 else node))
    return True


def _read_arrays(path):
    """The ``.npy`` members of the npz ``path`` as ``{name: array}``, read with bounds: the
    members may declare no more bytes than the file has (nbconv writes them uncompressed),
    each array's header must match its member's size before the data is read, and object
    arrays are refused. Raises :class:`CheckpointError` naming the member."""
    size = os.path.getsize(path)
    with open_zip(path, CheckpointError, "an unreadable checkpoint (corrupted or truncated?)") \
            as z:
        infos = z.infolist()
        declared = sum(i.file_size for i in infos)
        if declared > size:
            raise CheckpointError(f"checkpoint {path}: its members declare {declared} bytes "
                                  f"uncompressed, more than the file's {size} (nbconv writes "
                                  f"checkpoints uncompressed; a deflate bomb?)")
        arrays = {}
        for info in infos:
            name = info.filename[:-4]
            if not info.filename.endswith(".npy") or name in arrays:
                raise CheckpointError(f"{path} is not an nbconv checkpoint (member "
                                      f"{info.filename!r:.80} is not one array)")
            try:
                arrays[name] = _read_npy(z, info)
            except CheckpointError as e:
                raise CheckpointError(f"checkpoint {path}: array {name!r}: {e}") from None
            except Exception as e:  # zip/CRC/.npy header errors of a damaged file
                raise CheckpointError(f"checkpoint {path} is unreadable (corrupted or "
                                      f"truncated?): array {name!r}: {type(e).__name__}: "
                                      f"{e}") from e
    return arrays


def _read_npy(z, info):
    fmt = np.lib.format
    with z.open(info) as f:
        version = fmt.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise CheckpointError(f".npy format version {version} (1.0 and 2.0 are read)")
        read_header = fmt.read_array_header_1_0 if version == (1, 0) else \
            fmt.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        if dtype.hasobject:
            raise CheckpointError(f"dtype {dtype} holds Python objects (refused: loading them "
                                  f"would unpickle)")
        need = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if need != info.file_size - f.tell():
            raise CheckpointError(f"its header says {shape} {dtype} ({need} bytes), the "
                                  f"member holds {info.file_size - f.tell()}")
        data = bytearray(f.read(need))   # reading to the member's end checks its CRC
        if len(data) != need:
            raise CheckpointError(f"{len(data)} of its {need} bytes are in the file")
    return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")


def read(path):
    """Read and verify a checkpoint file: ``(meta, arrays)`` in the version 2 layout;
    ``CheckpointError`` if it is unreadable, truncated, altered (checksum), of another
    format/version, or its metadata is not a JSON object of the expected form (nested at most
    :data:`MAX_META_DEPTH` deep). Memory stays within a small multiple of the file's size."""
    arrays = _read_arrays(path)
    if "__meta__" not in arrays or "__checksum__" not in arrays:
        raise CheckpointError(f"{path} is not an nbconv checkpoint (no __meta__/__checksum__)")
    meta_bytes = arrays.pop("__meta__").tobytes()
    stored = arrays.pop("__checksum__").tobytes().decode("ascii", "replace")
    if checksum(meta_bytes, arrays) != stored:
        raise CheckpointError(f"checkpoint {path} is corrupted: checksum mismatch")
    try:
        meta = json.loads(meta_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: its metadata is not JSON ({e})") from None
    except RecursionError:
        raise CheckpointError(f"checkpoint {path}: its metadata is nested too deeply") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path}: its metadata is not a JSON object (a "
                              f"{type(meta).__name__})")
    if not _depth(meta, MAX_META_DEPTH):
        raise CheckpointError(f"checkpoint {path}: its metadata is nested deeper than "
                              f"{MAX_META_DEPTH} levels")
    if meta.get("format") != FORMAT or meta.get("version") not in (1, VERSION):
        raise CheckpointError(f"{path}: format {meta.get('format')!r:.40} version "
                              f"{meta.get('version')!r:.40}, expected {FORMAT!r} 1 or "
                              f"{VERSION}")
    if meta["version"] == 1:
        try:
            meta = _upgrade_v1(meta, arrays)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise CheckpointError(f"checkpoint {path}: its version 1 metadata is malformed "
                                  f"({type(e).__name__}: {e})") from None
    return meta, arrays


def _v1_path(path):
    """A version 1 attribute path (``"layers.0.layers.1."``, ``"layers.4.rng"``) as the
    ``state_dict`` / extra-state key parts (``["0", "1"]``, ``["4", "rng"]``): a Sequential's
    ``layers`` list is what its ``"<index>."`` prefixes stand for."""
    return [p for p in path.split(".") if p and p != "layers"]


def _upgrade_v1(meta, arrays):
    """Version 1 kept ``num_batches_tracked`` counters and layer random generators in the
    metadata by attribute path; version 2 keeps counters as 0-d int64 ``buffer/`` arrays and
    generators in the model's extra state (``meta["extra"]``)."""
    meta = dict(meta, version=VERSION)
    sig = {"params": dict(meta["signature"]["params"]),
           "buffers": dict(meta["signature"]["buffers"])}
    for path, count in meta.pop("counters", {}).items():
        key = ".".join(_v1_path(path) + ["num_batches_tracked"])
        sig["buffers"][key] = [[], np.dtype(np.int64).str]
        arrays[f"buffer/{key}"] = np.array(count, np.int64)
    meta["signature"] = sig
    extra = {}
    for path, state in meta["rng"].get("model", {}).items():
        *layers, attr = _v1_path(path)
        node = extra
        for part in layers:
            node = node.setdefault(part, {})
        node[attr] = state
    meta["rng"] = {"data": meta["rng"]["data"]}
    meta["extra"] = encode(extra or None, arrays, "extra")
    return meta


# ---- the model's state_dict ---------------------------------------------------------------------

def _take(arrays, name, shape, dtype):
    """``arrays[name]``, checked against the shape and dtype string its metadata gives."""
    if name not in arrays:
        raise CheckpointError(f"array {name!r} is missing")
    a = arrays[name]
    if list(a.shape) != list(shape) or a.dtype.str != dtype:
        raise CheckpointError(f"array {name!r} has shape {a.shape} dtype {a.dtype.str}, "
                              f"its metadata says {tuple(shape)} {dtype!r:.20}")
    return a


def model_state(path, best=False):
    """The model's ``state_dict`` stored in the checkpoint ``path`` (verified as :func:`read`
    does): its parameters then its buffers, PyTorch's keys, each checked against the
    signature. ``best=True``: the best validation epoch's parameters and buffers instead (the
    ones a run with a validation split reports its test accuracy for), with the last epoch's
    entries for buffers the best copy does not keep (``num_batches_tracked``);
    :class:`CheckpointError` if the run recorded no best epoch. ``nbconv.load(path)`` is
    ``model_state(path)``; the rest (optimizer, scheduler, epoch, history) is restored by
    :meth:`nbconv.Trainer.load` or read by :func:`read`."""
    meta, arrays = read(path)
    sig = meta.get("signature")
    try:
        _check_signature(sig)
        if best and not isinstance(meta.get("best"), dict):
            raise CheckpointError("it records no best epoch (the run had no validation "
                                  "split): use best=False for the last epoch's state")
        out, rank = {}, {name: i for i, name in enumerate(arrays)}  # the order written
        for kind, prefix in (("params", "param"), ("buffers", "buffer")):
            for k in sorted(sig[kind], key=lambda k: rank.get(f"{prefix}/{k}", len(rank))):
                shape, dtype = sig[kind][k]
                name = f"{prefix}/{k}"
                if best and (kind == "params" or f"best_{kind}/{k}" in arrays):
                    name = f"best_{kind}/{k}"
                out[k] = _take(arrays, name, shape, dtype)
    except CheckpointError as e:
        raise CheckpointError(f"checkpoint {path}: {e}") from None
    return out


def _check_signature(sig):
    """Raise :class:`CheckpointError` unless ``sig`` has the form :func:`signature` gives."""
    ok = isinstance(sig, dict) and set(sig) == {"params", "buffers"} and all(
        isinstance(sig[kind], dict) and all(
            isinstance(v, list) and len(v) == 2 and isinstance(v[0], list)
            and all(type(n) is int and n >= 0 for n in v[0]) and isinstance(v[1], str)
            for v in sig[kind].values())
        for kind in ("params", "buffers"))
    if not ok:
        raise CheckpointError(f"its signature is malformed: {json.dumps(sig)[:120]}")


# ---- the training entries of the metadata ----------------------------------------------------

def check_entries(meta, arrays, mine, rng, buffers):
    """Build and check, changing nothing, what a trainer restores from a checkpoint whose
    signature matched ``mine``: ``(state_dict, extra, optimizer state, scheduler state,
    best_params)``; ``rng`` is the trainer's generator (its bit generator type must match the
    stored states), ``buffers`` the model's buffers (the best copies kept). Raises
    :class:`CheckpointError` (or KeyError/TypeError/ValueError on malformed metadata)."""
    def take(name, shape, dtype):
        return _take(arrays, name, shape, dtype)

    state = {}
    for kind, prefix in (("params", "param"), ("buffers", "buffer")):
        for k, (shape, dtype) in mine[kind].items():
            state[k] = take(f"{prefix}/{k}", shape, dtype)
    epoch = meta["epoch"]
    if type(epoch) is not int or epoch < 0:
        raise CheckpointError(f"epoch must be an integer >= 0, got {epoch!r}")
    history = meta["history"]
    if (not isinstance(history, list) or len(history) != epoch
            or not all(isinstance(h, dict) for h in history)):
        raise CheckpointError(f"history must be a list of {epoch} dicts (one per epoch)")
    best_params, best = None, meta["best"]
    if best is not None:
        if (not isinstance(best, dict) or type(best.get("epoch")) is not int
                or not 1 <= best["epoch"] <= epoch
                or not isinstance(best.get("score"), (int, float))
                or isinstance(best.get("score"), bool)):
            raise CheckpointError(f"best entry must be {{'epoch': 1..{epoch}, 'score': a "
                                  f"number}}, got {best!r}")
        best_params = {kind: {k: take(f"best_{kind}/{k}", shape, dtype).copy()
                              for k, (shape, dtype) in mine[kind].items()
                              if kind == "params" or k in buffers}
                       for kind in ("params", "buffers")}
    rng_state = meta["rng"]["data"]
    probe = type(rng.bit_generator)()
    want = type(probe).__name__
    if not isinstance(rng_state, dict) or rng_state.get("bit_generator") != want:
        got = rng_state.get("bit_generator") if isinstance(rng_state, dict) else rng_state
        raise CheckpointError(f"data generator state is for {got!r}, the trainer's "
                              f"generator is {want}")
    _set_state(probe, rng_state, "data generator")
    partial = meta.get("partial")
    if partial is not None:
        keys = {"rng", "batch", "loss", "correct", "seen", "seconds"}
        if not isinstance(partial, dict) or set(partial) != keys:
            raise CheckpointError(f"partial-epoch entry must have keys {sorted(keys)}")
        _set_state(probe, partial["rng"], "partial-epoch generator")
        for k in ("batch", "correct", "seen"):
            if type(partial[k]) is not int or partial[k] < 0:
                raise CheckpointError(f"partial-epoch {k!r} must be an integer >= 0")
    extra = decode(meta["extra"], arrays)
    opt_state = decode(meta["optimizer"], arrays)
    sched_state = None if meta["scheduler"] is None else decode(meta["scheduler"], arrays)
    return state, extra, opt_state, sched_state, best_params


def _set_state(bit_generator, state, what):
    """``bit_generator.state = state``, a :class:`CheckpointError` if NumPy refuses it."""
    try:
        bit_generator.state = state
    except (TypeError, ValueError, KeyError, OverflowError, AttributeError) as e:
        raise CheckpointError(f"{what} state is malformed ({type(e).__name__}: {e})") from None
