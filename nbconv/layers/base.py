"""The layer protocol: :class:`Layer`, the base class of every layer.

::

    y  = layer(x)            # same as layer.forward(x)
    dx = layer.backward(dy)  # gradient w.r.t. the last forward's input
    layer.params             # name -> ndarray, trainable parameters (may be empty)
    layer.grads              # same keys and shapes, filled by backward
    layer.buffers            # name -> ndarray, non-trainable state (BatchNorm2d running stats)
    layer.train(); layer.eval()
    layer.to(np.float64); layer.double(); layer.float()   # cast params, grads, buffers
    layer.parameters(), layer.named_parameters()       # iterate the parameter arrays
    layer.state_dict(), layer.load_state_dict(sd)       # PyTorch's keys and shapes
    layer.get_extra_state(), layer.set_extra_state(s)   # non-array state (random generators)
    layer.output_shape(x_shape), layer.macs(x_shape)    # sizes without running (nbconv.summary)

``forward`` saves only what ``backward`` needs. ``backward`` before any ``forward`` raises
``RuntimeError``; a ``dy`` whose shape is not the last output's raises ``ValueError``; every
other check of ``x`` and ``dy`` is the functional op's (:mod:`nbconv.functional`). Setting
``layer.input_grad = False`` makes ``backward`` skip dx and return ``None`` (the first layer of
a network never needs it; ``Sequential`` does this for you).
"""
import collections
from collections.abc import Mapping

import numpy as np

from .._checks import check_dtype, check_shape

COUNTER = "num_batches_tracked"  # the int attribute a layer's state_dict holds as a 0-d int64

IncompatibleKeys = collections.namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


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


class Layer:
    """Base class: holds ``params``, ``grads``, ``buffers``, the train/eval flag and the values
    the last ``forward`` saved for ``backward``."""

    def __init__(self):
        self.params = {}
        self.grads = {}
        self.buffers = {}
        self.training = True
        self.input_grad = True
        self._saved = None      # what forward keeps for backward
        self._out_shape = None  # shape of the last forward's output

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for g in self.grads.values():
            g[...] = 0

    # -- dtype: torch's Module.to(dtype) / .double() / .float() --------------------------------
    def children(self):
        """The direct sub-layers (none; containers override this)."""
        return iter(())

    def to(self, dtype):
        """Cast every float parameter, gradient and buffer to ``dtype`` (float32 or float64) and
        return the layer, as ``torch.nn.Module.to(dtype)``. The casts are new arrays put in
        place of the ``params``/``grads``/``buffers`` entries (a no-op for entries already of
        ``dtype``): an optimizer built before holds the old arrays, so build it after ``to``
        (PyTorch's advice for ``.to()`` too). Forget the last forward (its saved values have
        the old dtype)."""
        dtype = check_dtype(dtype)
        for child in self.children():
            child.to(dtype)
        for d in (self.params, self.grads, self.buffers):
            for k, v in d.items():
                if v.dtype != dtype and v.dtype.kind == "f":
                    d[k] = v.astype(dtype)
        if isinstance(getattr(self, "dtype", None), np.dtype):
            self.dtype = dtype
        self._saved = None
        return self

    def double(self):
        """``self.to(np.float64)``."""
        return self.to(np.float64)

    def float(self):
        """``self.to(np.float32)``."""
        return self.to(np.float32)

    # -- sizes without running a kernel (nbconv.summary) ---------------------------------------
    def output_shape(self, input_shape):
        """The shape ``forward`` returns for an input of ``input_shape`` (a tuple), computed
        from the arguments alone. ``NotImplementedError`` here: layers override it
        (:func:`nbconv.summary` runs ``forward`` on zeros for a layer that does not)."""
        raise NotImplementedError(f"{type(self).__name__}.output_shape")

    def macs(self, input_shape):
        """Multiply-adds of one ``forward`` on ``input_shape``: counted for the convolutions and
        ``Linear`` (one per weight tap per output), 0 for every other layer."""
        return 0

    def parameters(self):
        """Iterator over the parameter arrays (the live arrays, not copies)."""
        return iter(self.params.values())

    def named_parameters(self):
        """Iterator over ``(name, array)`` of the parameters (PyTorch's names, e.g.
        ``"0.weight"`` in a :class:`Sequential`)."""
        return iter(self.params.items())

    # -- state: PyTorch's state_dict protocol ------------------------------------------------
    def _state_targets(self):
        """``key -> live ndarray`` (or a counter handle) for every state_dict entry: params, then
        buffers, then an int ``num_batches_tracked`` attribute if the layer has one. Containers
        override this to merge their children's under ``"<name>."`` prefixes."""
        out = dict(self.params)
        out.update(self.buffers)
        if _is_counter(getattr(self, COUNTER, None)):
            out[COUNTER] = _Counter(self, COUNTER)
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
        layer itself holds (not its children's); layers with other state override this and
        :meth:`set_extra_state`."""
        return {k: g.bit_generator.state for k, g in self._generators().items()} or None

    def set_extra_state(self, state):
        """Restore what :meth:`get_extra_state` returned (``ValueError`` if it does not fit)."""
        gens = self._generators()
        state = {} if state is None else state
        if not isinstance(state, Mapping) or sorted(state) != sorted(gens):
            have = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"{type(self).__name__} extra state holds random generators "
                             f"{have}, the layer {sorted(gens)}")
        for k, g in gens.items():
            st = state[k]
            want = type(g.bit_generator).__name__
            if not isinstance(st, Mapping) or st.get("bit_generator") != want:
                raise ValueError(f"{type(self).__name__} extra state {k!r} is not a {want} "
                                 f"state")
        for k, g in gens.items():
            g.bit_generator.state = state[k]

    # -- helpers for subclasses ---------------------------------------------------------------
    def _store_grads(self, dw, db):
        """Copy a backward's weight and bias gradients into ``grads`` (in place: optimizers
        hold these arrays); ``db`` None when the layer has no bias."""
        self.grads["weight"][...] = dw
        if db is not None:
            self.grads["bias"][...] = db

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

    def __repr__(self):
        return f"{type(self).__name__}()"
