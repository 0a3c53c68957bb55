"""Helpers of the Layer protocol (:mod:`.base`): the flat dict view of a layer tree's arrays,
the parameter -> gradient registry behind ``SGD(model.parameters())``, and the arguments of
``Layer.to``."""
import weakref

import numpy as np

# Parameter -> gradient, for optimizers given arrays the torch way (``SGD(model.parameters(),
# lr=...)``): every array that parameters()/named_parameters() hands out is entered here with
# its layer's gradient array, keyed by id and dropped when the parameter array dies.
_GRAD_OF = {}


def register_grad(param, grad):
    key = id(param)
    entry = _GRAD_OF.get(key)
    if entry is None or entry[0]() is not param or entry[1] is not grad:
        _GRAD_OF[key] = (weakref.ref(param, lambda _, key=key: _GRAD_OF.pop(key, None)), grad)


def grad_of(param):
    """The gradient array of ``param``, a parameter array handed out by a layer's
    :meth:`~Layer.parameters` or :meth:`~Layer.named_parameters`; ``None`` for any other
    array (or after ``to()`` replaced the layer's arrays and ``parameters()`` was not called
    again)."""
    entry = _GRAD_OF.get(id(param))
    return entry[1] if entry is not None and entry[0]() is param else None


class TreeDict(dict):
    """``params``/``grads``/``buffers`` of a layer with sub-layers: a flat dict of the tree's
    arrays (the layers' own objects). Undotted keys write through to the layer's own dict;
    a sub-layer's entry is set on the sub-layer. Copies and pickles as a plain dict."""

    def __init__(self, own, what):
        super().__init__(own)
        self._own, self._what = own, what

    def _check_key(self, key):
        if not isinstance(key, str) or "." in key:
            raise TypeError(f"{self._what}[{key!r}]: a sub-layer's entry; set it on the "
                            f"sub-layer (or change the values in place, a[...] = new)")

    def __setitem__(self, key, value):
        if dict.get(self, key, None) is value:   # d[k] += 1: the array changed in place
            return
        self._check_key(key)
        self._own[key] = value
        super().__setitem__(key, value)

    def __delitem__(self, key):
        self._check_key(key)
        del self._own[key]
        super().__delitem__(key)

    def update(self, *args, **kwargs):
        for k, v in dict(*args, **kwargs).items():
            self[k] = v

    def _refuse(self, *args, **kwargs):
        raise TypeError(f"{self._what} of a layer with sub-layers is a view of the tree: "
                        f"set or delete single keys")

    pop = popitem = clear = setdefault = __ior__ = _refuse

    def __reduce__(self):
        return dict, (dict(self),)


def to_args(args, kwargs):
    """``(device, dtype)`` from the forms of ``torch.nn.Module.to``."""
    unknown = set(kwargs) - {"device", "dtype", "non_blocking"}
    if unknown or len(args) > 2:
        raise TypeError(f"to() takes (device, dtype) or (dtype), got {len(args)} positional "
                        f"arguments and {sorted(kwargs)}")
    device, dtype = kwargs.get("device"), kwargs.get("dtype")
    for a in args:
        if _is_device(a):
            device = a
        else:
            dtype = a
    return device, dtype


def _is_device(a):
    return isinstance(a, str) and a.split(":")[0] in ("cpu", "cuda", "mps", "xpu", "meta") or \
        type(a).__name__ == "device"


def check_device(device):
    if str(device).split(":")[0] != "cpu":
        raise ValueError(f"nbconv runs on the CPU only: device {str(device)!r} is not available "
                         f"(.to('cpu') is accepted, as a no-op)")


def is_half(dtype):
    try:
        return np.dtype(dtype) == np.float16
    except TypeError:
        return False
