"""The layer protocol: :class:`Layer`, the base class of every layer.

::

    y  = layer(x)            # same as layer.forward(x)
    dx = layer.backward(dy)  # gradient w.r.t. the last forward's input
    layer.params             # name -> ndarray, trainable parameters (may be empty)
    layer.grads              # same keys and shapes, filled by backward (overwritten, not summed)
    layer.buffers            # name -> ndarray, non-trainable state (BatchNorm2d running stats)
    layer.train(); layer.eval()
    layer.to(np.float64); layer.double(); layer.float()   # cast params, grads, buffers
    layer.parameters(), layer.named_parameters()       # iterate the parameter arrays
    layer.children(), layer.named_modules(), ...       # sub-layers, as torch.nn.Module
    layer.state_dict(), layer.load_state_dict(sd)       # PyTorch's keys and shapes
    layer.get_extra_state(), layer.set_extra_state(s)   # non-array state (random generators)
    layer.output_shape(x_shape), layer.macs(x_shape)    # sizes without running (nbconv.summary)

Sub-layers: a layer may hold other layers as attributes (``self.conv1 = Conv2d(...)``, after
``super().__init__()``); they are registered in assignment order (``_modules``, as
``torch.nn.Module``) and every method above sees them under dotted names
(``"layer1.0.conv1.weight"``). ``params``/``grads``/``buffers`` of a layer with sub-layers are
flat dicts built from the tree at each access, holding the SAME arrays as the sub-layers (so an
optimizer given them updates the layers); assigning an undotted key there (``self.params["scale"]
= a``) sets the layer's own entry. Registering a layer as a sub-layer sets its ``input_grad`` to
True (its parent needs its dx).

``forward`` saves only what ``backward`` needs. ``backward`` before any ``forward`` raises
``RuntimeError``; a ``dy`` whose shape is not the last output's raises ``ValueError``; every
other check of ``x`` and ``dy`` is the functional op's (:mod:`nbconv.functional`). Setting
``layer.input_grad = False`` makes ``backward`` skip dx and return ``None`` (the first layer of
a network never needs it; ``Sequential`` does this for you). ``backward`` overwrites ``grads``
(PyTorch's ``.grad`` accumulates): a second ``backward`` replaces the first one's gradients.
"""
import collections
import weakref
from collections.abc import Mapping

import numpy as np

from .._checks import check_dtype, check_shape

COUNTER = "num_batches_tracked"  # the int attribute a layer's state_dict holds as a 0-d int64
_STORES = ("_params", "_grads", "_buffers")

IncompatibleKeys = collections.namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


# Parameter -> gradient, for optimizers given arrays the torch way (``SGD(model.parameters(),
# lr=...)``): every array that parameters()/named_parameters() hands out is entered here with
# its layer's gradient array, keyed by id and dropped when the parameter array dies.
_GRAD_OF = {}


def _register_grad(param, grad):
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


class _Counter:
    """An int attribute of a layer seen as a 0-d ``int64`` state_dict entry (as PyTorch keeps
    ``num_batches_tracked``)."""

    shape = ()
    dtype = np.dtype(np.int64)

    def __init__(self, layer, name):
        self.layer, self.name = layer, name

    def get(self):
        return np.array(getattr(self.layer, self.name), np.int64)

    def set(self, value):
        setattr(self.layer, self.name, int(value))


def _is_counter(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


class _TreeDict(dict):
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


class Layer:
    """Base class: holds its own ``params``, ``grads``, ``buffers``, its sub-layers
    (``_modules``), the train/eval flag and the values the last ``forward`` saved for
    ``backward``. Subclasses call ``super().__init__()`` first."""

    def __init__(self):
        d = self.__dict__
        d["_modules"] = {}
        for store in _STORES:
            d[store] = {}
        self.training = True
        self.input_grad = True
        self._saved = None      # what forward keeps for backward
        self._out_shape = None  # shape of the last forward's output

    # -- attributes: sub-layers register themselves ----------------------------------------
    def __setattr__(self, name, value):
        modules = self.__dict__.get("_modules")
        if isinstance(value, Layer):
            if modules is None:
                raise AttributeError(f"cannot assign sub-layer {name!r} before "
                                     f"Layer.__init__(): call super().__init__() first")
            self.__dict__.pop(name, None)
            value.input_grad = True   # the parent needs its dx
            modules[name] = value
        elif name in self.__dict__.get("_params", ()) or name in self.__dict__.get(
                "_buffers", ()):
            raise TypeError(f"{name!r} is an array of {type(self).__name__}'s params or "
                            f"buffers: set its values in place ({name}[...] = new) so that "
                            f"the layer, its gradient and optimizers keep the same array")
        elif modules is not None and name in modules:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} as sub-layer {name!r} "
                                f"(a Layer or None expected)")
            modules[name] = None
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):   # only for names not found the normal way
        d = self.__dict__
        for store in ("_modules", "_params", "_buffers"):
            s = d.get(store)
            if s is not None and name in s:
                return s[name]
        if "_modules" not in d and not name.startswith("__"):
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}: "
                                 f"Layer.__init__() was not called; call super().__init__() "
                                 f"first in __init__")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        if name in self.__dict__.get("_modules", ()):
            del self._modules[name]
        else:
            object.__delattr__(self, name)

    def add_module(self, name, layer):
        """Register ``layer`` (a Layer or None) under ``name``, as ``setattr`` does."""
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"a sub-layer name must be a non-empty str without '.', "
                             f"got {name!r}")
        if layer is not None and not isinstance(layer, Layer):
            raise TypeError(f"sub-layer {name!r} must be an nbconv Layer, "
                            f"got {type(layer).__name__}")
        if layer is None:
            self._modules[name] = None
        else:
            setattr(self, name, layer)

    register_module = add_module

    def register_parameter(self, name, array):
        """Add ``array`` as an own parameter ``name`` with a zero gradient of its shape."""
        self._check_own(name, array)
        self._params[name] = array
        self._grads[name] = np.zeros_like(array)

    def register_buffer(self, name, array):
        """Add ``array`` as an own buffer ``name`` (in the state_dict, not trained)."""
        self._check_own(name, array)
        self._buffers[name] = array

    def _check_own(self, name, array):
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"a parameter or buffer name must be a non-empty str without "
                             f"'.', got {name!r}")
        if not isinstance(array, np.ndarray) or array.dtype.kind != "f":
            raise TypeError(f"{name!r} must be a float numpy.ndarray, got "
                            f"{getattr(array, 'dtype', type(array).__name__)}")

    # -- the tree ----------------------------------------------------------------------------
    def named_children(self):
        """``(name, layer)`` of the direct sub-layers, in registration order."""
        for name, m in self._modules.items():
            if m is not None:
                yield name, m

    def children(self):
        """The direct sub-layers, in registration order."""
        for _, m in self.named_children():
            yield m

    def named_modules(self, memo=None, prefix="", remove_duplicate=True):
        """``(dotted name, layer)`` of this layer (name ``prefix``, ``""`` by default) and every
        sub-layer, depth first in registration order; a layer reached twice is listed once."""
        if memo is None:
            memo = set()
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, m in self.named_children():
            yield from m.named_modules(memo, f"{prefix}.{name}" if prefix else name,
                                       remove_duplicate)

    def modules(self):
        """This layer and every sub-layer (see :meth:`named_modules`)."""
        for _, m in self.named_modules():
            yield m

    def get_submodule(self, target):
        """The sub-layer at dotted path ``target`` (``""``: this layer)."""
        m = self
        for part in target.split(".") if target else ():
            child = m._modules.get(part)
            if child is None:
                raise AttributeError(f"{type(m).__name__} has no sub-layer {part!r} "
                                     f"(path {target!r})")
            m = child
        return m

    def apply(self, fn):
        """Call ``fn(layer)`` on every sub-layer (children first) and then on this one."""
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    def _tree(self, store, what):
        own = getattr(self, store)   # AttributeError naming super().__init__() if missing
        if not any(m is not None for m in self._modules.values()):
            return own
        out = _TreeDict(own, what)
        for prefix, m in self.named_modules():
            if m is not self:
                for k, v in m.__dict__[store].items():
                    dict.__setitem__(out, f"{prefix}.{k}", v)
        return out

    @property
    def params(self):
        """name -> parameter array (dotted names for sub-layers' parameters)."""
        return self._tree("_params", "params")

    @params.setter
    def params(self, value):
        self._set_store("_params", value)

    @property
    def grads(self):
        """name -> gradient array, the keys of :attr:`params`."""
        return self._tree("_grads", "grads")

    @grads.setter
    def grads(self, value):
        self._set_store("_grads", value)

    @property
    def buffers(self):
        """name -> buffer array (running statistics), dotted names for sub-layers'."""
        return self._tree("_buffers", "buffers")

    @buffers.setter
    def buffers(self, value):
        self._set_store("_buffers", value)

    def _set_store(self, store, value):
        if not isinstance(value, dict):
            raise TypeError(f"{store[1:]} must be a dict name -> ndarray, "
                            f"got {type(value).__name__}")
        self.__dict__[store] = value

    # -- calling -------------------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def train(self, mode=True):
        """Set train (``True``) or eval mode on this layer and every sub-layer."""
        mode = bool(mode)
        for m in self.modules():
            m.training = mode
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self, set_to_none=True):
        """Set every gradient of the tree to zero, in place (gradients are always arrays here:
        ``set_to_none`` is accepted for PyTorch's signature and changes nothing)."""
        for g in self.grads.values():
            g[...] = 0

    def parameters(self, recurse=True):
        """Iterator over the parameter arrays (the live arrays, not copies)."""
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_parameters(self, prefix="", recurse=True):
        """Iterator over ``(name, array)`` of the parameters (PyTorch's names, e.g.
        ``"0.weight"`` in a :class:`Sequential`, ``"layer1.0.conv1.weight"``). Each array is
        remembered with its gradient array (:func:`grad_of`), so an optimizer given these
        arrays finds their gradients."""
        for m in self.modules() if recurse else (self,):
            for k, p in m._params.items():
                g = m._grads.get(k)
                if isinstance(p, np.ndarray) and isinstance(g, np.ndarray):
                    _register_grad(p, g)
        return self._named("_params", prefix, recurse)

    def named_buffers(self, prefix="", recurse=True):
        """Iterator over ``(name, array)`` of the buffers (``num_batches_tracked`` is an int
        attribute: in the state_dict, not here)."""
        return self._named("_buffers", prefix, recurse)

    def _named(self, store, prefix, recurse):
        d = self._tree(store, store[1:]) if recurse else self.__dict__[store]
        pre = f"{prefix}." if prefix else ""
        return ((pre + k, v) for k, v in list(d.items()))

    # -- dtype and device: torch's Module.to ---------------------------------------------------
    def to(self, *args, **kwargs):
        """Cast every float parameter, gradient and buffer to a dtype (float32 or float64) and
        return the layer, as ``torch.nn.Module.to``: ``to(dtype)``, ``to("cpu")``,
        ``to("cpu", dtype)``, ``to(device="cpu", dtype=...)``. The device can only be the CPU
        (a no-op). The casts are new arrays put in place of the ``params``/``grads``/
        ``buffers`` entries (a no-op for entries already of ``dtype``): an optimizer built
        before holds the old arrays, so build it after ``to`` (PyTorch's advice too). Forget
        the last forward (its saved values have the old dtype)."""
        device, dtype = _to_args(args, kwargs)
        if device is not None:
            _check_device(device)
        if dtype is None:
            return self
        if _is_half(dtype):
            raise TypeError(f"{np.dtype(dtype).name} is not a compute dtype in nbconv (its "
                            f"kernels run float32 and float64): keep float32, or store a "
                            f"float16 copy of the state_dict")
        dtype = check_dtype(dtype)
        for m in self.modules():
            m._cast(dtype)
        return self

    def _cast(self, dtype):
        for store in _STORES:
            d = self.__dict__[store]
            for k, v in d.items():
                if v.dtype != dtype and v.dtype.kind == "f":
                    d[k] = v.astype(dtype)
        if isinstance(self.__dict__.get("dtype"), np.dtype):
            self.dtype = dtype
        self._saved = None

    def double(self):
        """``self.to(np.float64)``."""
        return self.to(np.float64)

    def float(self):
        """``self.to(np.float32)``."""
        return self.to(np.float32)

    def half(self):
        """Refused: float16 is not a compute dtype here (``TypeError`` saying so)."""
        return self.to(np.float16)

    def cpu(self):
        """The layer itself (nbconv runs on the CPU)."""
        return self

    def cuda(self, device=None):
        """Refused with a ``ValueError``: nbconv runs on the CPU only."""
        _check_device("cuda")

    # -- sizes without running a kernel (nbconv.summary) ---------------------------------------
    def output_shape(self, input_shape):
        """The shape ``forward`` returns for an input of ``input_shape`` (a tuple), computed
        from the arguments alone. ``NotImplementedError`` here: layers override it
        (:func:`nbconv.summary` runs ``forward`` instead for a layer that does not)."""
        raise NotImplementedError(f"{type(self).__name__}.output_shape")

    def macs(self, input_shape):
        """Multiply-adds of one ``forward`` on ``input_shape``, or ``None`` when unknown (this
        default: a user's layer). The library's layers count the convolutions and ``Linear``
        (one per weight tap per output) and 0 for the others."""
        return None

    # -- state: PyTorch's state_dict protocol ------------------------------------------------
    def _own_state(self):
        """``key -> live ndarray`` (or a counter handle) of this layer's own entries: params,
        then buffers, then an int ``num_batches_tracked`` attribute if the layer has one."""
        out = dict(self._params)
        out.update(self._buffers)
        if _is_counter(self.__dict__.get(COUNTER)):
            out[COUNTER] = _Counter(self, COUNTER)
        return out

    def _state_targets(self):
        """Every state_dict entry of the tree: own entries, then each sub-layer's under
        ``"<name>."`` (as PyTorch: a layer registered twice appears under both names)."""
        out = self._own_state()
        for name, m in self.named_children():
            for k, t in m._state_targets().items():
                out[f"{name}.{k}"] = t
        return out

    def state_dict(self):
        """Copies of the parameters and buffers (and ``num_batches_tracked`` as a 0-d ``int64``
        array) keyed as PyTorch's ``state_dict``."""
        return {k: t.get() if isinstance(t, _Counter) else t.copy()
                for k, t in self._state_targets().items()}

    def load_state_dict(self, state_dict, strict=True):
        """Copy ``state_dict`` (as from :meth:`state_dict`, or a PyTorch module's converted with
        ``.numpy()``) into the parameters and buffers, in place (optimizers keep their
        references). Arrays of another float dtype are cast to the parameter's dtype.

        All or nothing: everything is checked before anything is written. ``ValueError`` lists
        the missing and unexpected keys (only with ``strict``) and the shape mismatches;
        ``TypeError`` names the keys whose value is not an ndarray of a float (integer for
        ``num_batches_tracked``) dtype. Returns ``(missing_keys, unexpected_keys)``."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        targets = self._state_targets()
        missing = [k for k in targets if k not in state_dict]
        unexpected = [k for k in state_dict if k not in targets]
        sizes, types = [], []
        for k, t in targets.items():
            if k not in state_dict:
                continue
            v = state_dict[k]
            kind, what = ("iu", "an integer") if isinstance(t, _Counter) else ("f", "a float")
            if not isinstance(v, np.ndarray) or v.dtype.kind not in kind:
                got = f"dtype {v.dtype}" if isinstance(v, np.ndarray) else type(v).__name__
                types.append(f"{k!r} must be a numpy.ndarray of {what} dtype, got {got}")
            elif v.shape != t.shape:
                sizes.append(f"size mismatch for {k!r}: the state_dict's shape is {v.shape}, "
                             f"the model's {t.shape}")
        problems = []
        if strict and missing:
            problems.append(f"missing keys {missing}")
        if strict and unexpected:
            problems.append(f"unexpected keys {unexpected}")
        problems += sizes
        if problems:
            raise ValueError(f"error(s) loading the state_dict into {type(self).__name__}: "
                             + "; ".join(problems))
        if types:
            raise TypeError(f"error(s) loading the state_dict into {type(self).__name__}: "
                            + "; ".join(types))
        for k, t in targets.items():
            if k in state_dict:
                if isinstance(t, _Counter):
                    t.set(state_dict[k])
                else:
                    t[...] = state_dict[k]
        return IncompatibleKeys(missing, unexpected)

    def _generators(self):
        return {k: v for k, v in sorted(vars(self).items())
                if isinstance(v, np.random.Generator)}

    def get_extra_state(self):
        """Non-array state a checkpoint needs, JSON-able, or ``None`` when there is none. The
        default: ``{attribute: bit_generator.state}`` for each ``numpy.random.Generator`` the
        layer itself holds, and ``{name: state}`` of each sub-layer that has extra state;
        layers with other state override this and :meth:`set_extra_state`."""
        out = {k: g.bit_generator.state for k, g in self._generators().items()}
        for name, m in self.named_children():
            state = m.get_extra_state()
            if state is not None:
                out[name] = state
        return out or None

    def set_extra_state(self, state):
        """Restore what :meth:`get_extra_state` returned (``ValueError`` if it does not fit)."""
        gens = self._generators()
        subs = [name for name, m in self.named_children() if m.get_extra_state() is not None]
        state = {} if state is None else state
        if not isinstance(state, Mapping) or sorted(state) != sorted([*gens, *subs]):
            have = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"{type(self).__name__} extra state holds entries {have}; the "
                             f"layer's random generators are {sorted(gens)} and its sub-layers "
                             f"with extra state {subs}")
        for k, g in gens.items():
            st = state[k]
            want = type(g.bit_generator).__name__
            if not isinstance(st, Mapping) or st.get("bit_generator") != want:
                raise ValueError(f"{type(self).__name__} extra state {k!r} is not a {want} "
                                 f"state")
        for k, g in gens.items():
            g.bit_generator.state = state[k]
        for name in subs:
            self._modules[name].set_extra_state(state[name])

    # -- helpers for subclasses ---------------------------------------------------------------
    def _store_grads(self, dw, db):
        """Copy a backward's weight and bias gradients into ``grads`` (in place: optimizers
        hold these arrays); ``db`` None when the layer has no bias."""
        self._grads["weight"][...] = dw
        if db is not None:
            self._grads["bias"][...] = db

    def _save(self, out_shape, *saved):
        self._out_shape = tuple(out_shape)
        self._saved = saved

    def _load(self, dy, name="dy"):
        """``(dy, *saved)`` after checking that a forward ran and that ``dy`` has its output's
        shape; the functional op checks the rest."""
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        check_shape(dy, name, self._out_shape, "the shape of the last forward's output")
        return (dy,) + tuple(self._saved)

    def extra_repr(self):
        """The arguments shown between the parentheses of :meth:`__repr__` (as torch)."""
        return ""

    def __repr__(self):
        """``Name(extra)``, or torch's nested form with one ``(name): repr`` line per
        sub-layer."""
        lines = self.extra_repr().split("\n") if self.extra_repr() else []
        lines += [f"({name}): " + repr(m).replace("\n", "\n  ")
                  for name, m in self._modules.items()]
        if not self._modules:
            return f"{type(self).__name__}({self.extra_repr()})"
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)"


def _to_args(args, kwargs):
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


def _check_device(device):
    if str(device).split(":")[0] != "cpu":
        raise ValueError(f"nbconv runs on the CPU only: device {str(device)!r} is not available "
                         f"(.to('cpu') is accepted, as a no-op)")


def _is_half(dtype):
    try:
        return np.dtype(dtype) == np.float16
    except TypeError:
        return False
