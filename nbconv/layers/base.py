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

``forward`` saves only what ``backward`` needs (:meth:`Layer.save_for_backward`; nothing
under ``nbconv.no_grad()``, :mod:`.grad_mode`). ``backward`` before any ``forward``, or after
one under ``no_grad``, raises ``RuntimeError``; a ``dy`` whose shape is not the last output's
raises ``ValueError``; every other check of ``x`` and ``dy`` is the functional op's
(:mod:`nbconv.functional`). Setting ``layer.input_grad = False`` makes ``backward`` skip dx and
return ``None`` (the first layer of a network never needs it; ``Sequential`` does this for you).
``backward`` overwrites ``grads`` (PyTorch's ``.grad`` accumulates): a second ``backward``
replaces the first one's gradients.
"""
import numpy as np

from .._checks import check_dtype, check_shape
from ._tree import TreeDict, check_device, grad_of, is_half, register_grad, to_args
from .grad_mode import NOT_SAVED, is_grad_enabled
from .state import COUNTER, IncompatibleKeys, StateProtocol

__all__ = ["Layer", "grad_of", "COUNTER", "IncompatibleKeys"]

_STORES = ("_params", "_grads", "_buffers")


class Layer(StateProtocol):
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
        out = TreeDict(own, what)
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
                    register_grad(p, g)
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
        device, dtype = to_args(args, kwargs)
        if device is not None:
            check_device(device)
        if dtype is None:
            return self
        if is_half(dtype):
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
        check_device("cuda")

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

    # -- helpers for subclasses ---------------------------------------------------------------
    def _store_grads(self, dw, db):
        """Copy a backward's weight and bias gradients into ``grads`` (in place: optimizers
        hold these arrays); ``db`` None when the layer has no bias."""
        self._grads["weight"][...] = dw
        if db is not None:
            self._grads["bias"][...] = db

    def save_for_backward(self, out_shape, *saved):
        """Keep ``saved`` (what ``backward`` needs) and the output's shape ``out_shape``; under
        :class:`~nbconv.layers.grad_mode.no_grad` keep nothing (and drop what an earlier
        forward kept). Every library layer keeps its values here, so this is where
        ``no_grad`` acts; a layer of yours gets it by keeping its values here too."""
        if is_grad_enabled():
            self._out_shape = tuple(out_shape)
            self._saved = saved
        else:
            self._out_shape = None
            self._saved = NOT_SAVED

    def saved_for_backward(self, dy, name="dy"):
        """``(dy, *saved)`` after checking that a forward ran, with gradients enabled, and
        that ``dy`` has its output's shape (``RuntimeError``, ``ValueError``); the
        functional op checks the rest."""
        self._check_saved()
        check_shape(dy, name, self._out_shape, "the shape of the last forward's output")
        return (dy,) + tuple(self._saved)

    def _check_saved(self):
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        if self._saved is NOT_SAVED:
            raise RuntimeError(f"{type(self).__name__}.backward: the last forward ran under "
                               f"nbconv.no_grad() and kept nothing for backward; run the "
                               f"forward with gradients enabled (outside no_grad) first")

    _save, _load = save_for_backward, saved_for_backward

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
