"""What nbconv saves: nested dicts, lists and tuples of arrays and plain values.

:func:`walk` checks an object before any file is written and returns it normalised (NumPy
scalars as Python numbers); :func:`flatten` / :func:`unflatten` are the safetensors form of a
nested object (tensor names and a JSON tree, see :mod:`nbconv.serialization`).
"""
import json

import numpy as np

__all__ = ["MAX_DEPTH", "PLAIN", "walk", "is_flat", "name_of", "flatten", "unflatten"]

#: how deep dicts, lists and tuples may nest in a saved or loaded object
MAX_DEPTH = 100
#: the plain values saved as they are
PLAIN = (type(None), bool, int, float, str)
#: the most entries a safetensors tree holds (JSON cannot share a container found twice)
MAX_TREE_NODES = 1_000_000
#: the JSON tree's key in a safetensors file's ``__metadata__``
TREE_KEY = "nbconv.tree"


def name_of(path):
    """The display name of a key path: its keys joined by ``/`` (``"model/0.weight"``)."""
    return "/".join(str(k) for k in path) or "(the object itself)"


def walk(obj, array_check=None):
    """``obj`` with every NumPy scalar made a Python number, after checking that it holds only
    dicts (keys ``str`` or ``int``), lists, tuples, ndarrays (passed to ``array_check(array,
    name)``, which raises for a dtype the format cannot hold) and ``None``/bool/int/float/str,
    nested at most :data:`MAX_DEPTH` deep, without cycles (a container found twice is checked
    once and stays one object). Raises ``TypeError`` (a value or key of another type) or
    ``ValueError`` (a cycle, too deep), naming the entry."""
    active, done = set(), {}

    def rec(o, path):
        if isinstance(o, np.ndarray):
            if array_check is not None:
                array_check(o, name_of(path))
            return o
        if isinstance(o, np.generic) and o.dtype.kind in "biuf":
            return o.item()
        if type(o) in PLAIN:
            return o
        if not isinstance(o, (dict, list, tuple)):
            raise TypeError(f"cannot save {name_of(path)!r}: a {type(o).__name__} (nbconv saves "
                            f"dicts, lists and tuples of numpy arrays and None, bool, int, "
                            f"float, str)")
        if id(o) in done:
            return done[id(o)][1]
        if len(path) >= MAX_DEPTH:
            raise ValueError(f"cannot save {name_of(path)!r}: nested deeper than {MAX_DEPTH}")
        if id(o) in active:
            raise ValueError(f"cannot save {name_of(path)!r}: it contains itself")
        active.add(id(o))
        try:
            if isinstance(o, dict):
                out = {}
                for k, v in o.items():
                    if type(k) not in (str, int):
                        raise TypeError(f"cannot save {name_of(path)!r}: key {k!r:.40} is a "
                                        f"{type(k).__name__} (keys must be str or int)")
                    out[k] = rec(v, path + [k])
            else:
                items = [rec(v, path + [i]) for i, v in enumerate(o)]
                out = tuple(items) if isinstance(o, tuple) else items
        finally:
            active.discard(id(o))
        done[id(o)] = (o, out)     # o kept alive: its id stays its own
        return out

    return rec(obj, [])


def is_flat(obj):
    """Whether ``obj`` is a plain state dict: a dict of str -> ndarray."""
    return isinstance(obj, dict) and all(type(k) is str and isinstance(v, np.ndarray)
                                         for k, v in obj.items())


def _escape(key):
    return str(key).replace("~", "~0").replace("/", "~1")


def flatten(obj):
    """``(tensors, tree)`` of a :func:`walk`-checked object: ``tensors`` maps each array's name
    (its key path, keys joined by ``/``, with ``~`` written ``~0`` and ``/`` written ``~1``)
    to the array, ``tree`` is the JSON text of the object with arrays replaced by
    ``{"tensor": name}``, dicts by ``{"dict": [[key, value], ...]}`` and tuples by
    ``{"tuple": [...]}``. One array object found twice is stored once; a container found twice
    is written out twice, up to :data:`MAX_TREE_NODES` entries in all (``ValueError``)."""
    tensors, names = {}, {}
    budget = [MAX_TREE_NODES]

    def rec(o, path):
        budget[0] -= 1
        if budget[0] < 0:
            raise ValueError(f"cannot save this object as safetensors: its tree has more than "
                             f"{MAX_TREE_NODES} entries once the containers it shares are "
                             f"written out (save it as .pt, which keeps them shared)")
        if isinstance(o, np.ndarray):
            if id(o) not in names:
                name = "/".join(_escape(k) for k in path)
                if name in tensors:
                    raise ValueError(f"cannot save {name_of(path)!r}: two keys give the tensor "
                                     f"name {name!r} (an int key and its str, e.g. 0 and '0')")
                names[id(o)] = name
                tensors[name] = o
            return {"tensor": names[id(o)]}
        if isinstance(o, dict):
            return {"dict": [[k, rec(v, path + [k])] for k, v in o.items()]}
        if isinstance(o, (list, tuple)):
            items = [rec(v, path + [i]) for i, v in enumerate(o)]
            return {"tuple": items} if isinstance(o, tuple) else items
        return o

    tree = rec(obj, [])
    return tensors, json.dumps(tree, separators=(",", ":"), ensure_ascii=False)


def unflatten(tree_text, tensors, error):
    """The object :func:`flatten` made ``tree_text`` from, its arrays taken from ``tensors``;
    every tensor must be used. Raises ``error`` (an exception class) on a malformed tree."""
    try:
        tree = json.loads(tree_text)
    except (ValueError, RecursionError) as e:
        raise error(f"its {TREE_KEY} metadata is not JSON ({type(e).__name__})") from None
    used = set()

    def rec(t, depth):
        if depth > MAX_DEPTH:
            raise error(f"its {TREE_KEY} metadata nests deeper than {MAX_DEPTH}")
        if type(t) in PLAIN:
            return t
        if isinstance(t, list):
            return [rec(v, depth + 1) for v in t]
        if isinstance(t, dict) and len(t) == 1:
            (kind, v), = t.items()
            if kind == "tensor" and isinstance(v, str):
                if v not in tensors:
                    raise error(f"its {TREE_KEY} metadata names tensor {v!r:.80}, which is not "
                                f"in the file")
                used.add(v)
                return tensors[v]
            if kind == "tuple" and isinstance(v, list):
                return tuple(rec(x, depth + 1) for x in v)
            if kind == "dict" and isinstance(v, list) and all(
                    isinstance(p, list) and len(p) == 2 and type(p[0]) in (str, int) for p in v):
                return {k: rec(x, depth + 1) for k, x in v}
        raise error(f"its {TREE_KEY} metadata holds {json.dumps(t)[:80]}, which is not a "
                    f"tensor, dict, tuple, list or plain value")

    out = rec(tree, 0)
    unused = [n for n in tensors if n not in used]
    if unused:
        raise error(f"tensors {unused[:5]} are not in its {TREE_KEY} metadata")
    return out
