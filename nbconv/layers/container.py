"""Sequential: layers applied in order, with PyTorch's ``"<index>.<name>"`` keys."""
from collections.abc import Mapping

from .._checks import check_array
from .base import Layer


class _Appends:
    """``append`` and ``extend`` of the list-like containers (PyTorch's): a layer goes at the
    end, named ``str(len(self))``; both return the container."""

    def append(self, layer):
        if not isinstance(layer, Layer):
            raise TypeError(f"{type(self).__name__}.append takes an nbconv Layer, got "
                            f"{type(layer).__name__}")
        self.add_module(str(len(self)), layer)
        return self

    def extend(self, layers):
        for layer in layers:
            self.append(layer)
        return self


class Sequential(_Appends, Layer):
    """Layers applied in order: ``Sequential(l0, l1, ...)(x) = ...l1(l0(x))``, or
    ``Sequential(OrderedDict([("conv", l0), ("relu", l1)]))`` with named sub-layers.

    The layers are sub-layers named ``"0"``, ``"1"``, ... (or the dict's keys), so ``params``,
    ``grads`` and ``buffers`` are flat dicts keyed ``"<name>.<key>"`` (as PyTorch's
    ``state_dict``; nested Sequentials give ``"i.j.key"``) whose values are the SAME arrays as
    the layers' own, so in-place updates (optimizers) reach the layers. ``backward`` runs the
    layers in reverse and returns the gradient w.r.t. the input; by default the model's input
    gradient is not needed, so ``input_grad`` is ``False``: the first layer skips its dx and
    ``backward`` returns ``None``. Set ``model.input_grad = True`` to get dx (the first layer's
    ``input_grad`` is set from the model's at every forward/backward; the others' to True; a
    Sequential registered as a sub-layer gets ``input_grad = True``). Indexing (an int, or a
    slice: a new Sequential sharing the layers, numbered from 0 again, or under their names
    when the layers have names of their own), ``len``, iteration, ``append`` and ``extend``
    work as in PyTorch.
    """

    def __init__(self, *layers):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], Mapping):
            items = [(name, layer, repr(name)) for name, layer in layers[0].items()]
        else:
            items = [(str(i), layer, str(i)) for i, layer in enumerate(layers)]
        for name, layer, shown in items:
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential layer {shown} must be an nbconv Layer, "
                                f"got {type(layer).__name__}")
            self.add_module(name, layer)
        self.input_grad = False

    @property
    def layers(self):
        """The layers, in order (a new list)."""
        return list(self.children())

    def output_shape(self, input_shape):
        for layer in self.layers:
            input_shape = layer.output_shape(input_shape)
        return tuple(input_shape)

    def macs(self, input_shape):
        """The layers' sum (``None`` if one of them does not know its count)."""
        total = 0
        for layer in self.layers:
            m = layer.macs(input_shape)
            if m is None:
                return None
            total += m
            input_shape = layer.output_shape(input_shape)
        return total

    def _set_input_grads(self, layers):
        for i, layer in enumerate(layers):
            layer.input_grad = self.input_grad if i == 0 else True

    def forward(self, x):
        layers = self.layers
        self._set_input_grads(layers)
        if not layers:
            x = check_array(x, "x").copy()
        for layer in layers:
            x = layer(x)
        self._save(x.shape, x.dtype)
        return x

    def backward(self, dy):
        dy, dtype = self._load(dy)
        layers = self.layers
        self._set_input_grads(layers)
        if not layers:   # no layer to check dy: do it here
            dy = check_array(dy, "dy", dtype=dtype)
            return dy if self.input_grad else None
        for layer in reversed(layers):
            dy = layer.backward(dy)
        return dy

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            named = list(self.named_children())
            if [n for n, _ in named] == [str(i) for i in range(len(named))]:
                return Sequential(*self.layers[idx])   # numbered from 0 again
            return Sequential(dict(named[idx]))        # named layers keep their names
        return self.layers[idx]

    def __setitem__(self, idx, layer):
        name = [n for n, _ in self.named_children()][idx]
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential[{idx}] must be an nbconv Layer, "
                            f"got {type(layer).__name__}")
        self.add_module(name, layer)


class ModuleList(_Appends, Layer):
    """A list of sub-layers named ``"0"``, ``"1"``, ... (``torch.nn.ModuleList``): it registers
    them (parameters, state_dict, train/eval, ``to``) and has no ``forward`` of its own; the
    layer holding it calls them. Indexing, ``len``, iteration, ``append`` and ``extend``."""

    def __init__(self, layers=()):
        super().__init__()
        self.extend(layers)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(list(self._modules.values()))

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return ModuleList(list(self._modules.values())[idx])
        return list(self._modules.values())[idx]

    def __repr__(self):
        """torch's: runs of equal sub-layers shown once, ``(0-2): 3 x Linear(...)``."""
        if not self._modules:
            return "ModuleList()"
        runs = []   # [first name, last name, count, repr]
        for name, m in self._modules.items():
            r = repr(m)
            if runs and runs[-1][3] == r:
                runs[-1][1], runs[-1][2] = name, runs[-1][2] + 1
            else:
                runs.append([name, name, 1, r])
        lines = [f"({a}): {r}" if n == 1 else f"({a}-{b}): {n} x {r}"
                 for a, b, n, r in runs]
        return "ModuleList(\n  " + "\n  ".join(x.replace("\n", "\n  ") for x in lines) + "\n)"
