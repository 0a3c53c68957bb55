"""PyTorch's state protocol of a layer tree, a mixin of :class:`nbconv.layers.Layer`:
``state_dict``/``load_state_dict`` (the parameters and buffers of the layer and its sub-layers
under dotted keys, BatchNorm2d's ``num_batches_tracked`` as a 0-d int64) and the extra,
non-array state (``get_extra_state``/``set_extra_state``: random generators)."""
import collections
from collections.abc import Mapping

import numpy as np

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


class StateProtocol:
    """The state methods of :class:`~nbconv.layers.Layer` (which holds ``_params``,
    ``_buffers`` and ``_modules``)."""

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
