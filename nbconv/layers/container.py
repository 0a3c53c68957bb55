"""Sequential: layers applied in order, with PyTorch's ``"<index>.<name>"`` keys."""
from collections.abc import Mapping

from .._checks import check_array
from .base import Layer


class Sequential(Layer):
    """Layers applied in order: ``Sequential(l0, l1, ...)(x) = ...l1(l0(x))``.

    ``params``, ``grads`` and ``buffers`` are flat dicts keyed ``"<index>.<name>"`` (as PyTorch's
    ``state_dict``; nested Sequentials give ``"i.j.name"``) whose values are the SAME arrays as
    the layers' own, so in-place updates (optimizers) reach the layers. They are collected at
    construction: replace parameter values in place (``p[...] = new``), not the arrays.
    ``train()``/``eval()`` are passed to every layer. ``backward`` runs the layers in reverse
    and returns the gradient w.r.t. the input; by default the model's input gradient is not
    needed, so ``input_grad`` is ``False``: the first layer skips its dx and ``backward``
    returns ``None``. Set ``model.input_grad = True`` to get dx (the first layer's
    ``input_grad`` is set from the model's at every forward/backward; the others' to True).
    Indexing, ``len`` and iteration work as in PyTorch (a slice is a new Sequential sharing
    the layers). ``state_dict()``/``load_state_dict()`` gather the layers' entries under
    ``"<index>."`` (BatchNorm2d's ``num_batches_tracked`` included, as PyTorch), and
    ``get_extra_state()`` is ``{"<index>": state}`` of the layers that have extra state.
    """

    def __init__(self, *layers):
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential layer {i} must be an nbconv Layer, "
                                f"got {type(layer).__name__}")
        self.layers = list(layers)
        self.input_grad = False
        self._collect()

    def _collect(self):
        """``params``/``grads``/``buffers``: the layers' arrays (the same objects) under
        ``"<index>."`` keys."""
        self.params, self.grads, self.buffers = {}, {}, {}
        for i, layer in enumerate(self.layers):
            for src, dst in ((layer.params, self.params), (layer.grads, self.grads),
                             (getattr(layer, "buffers", None) or {}, self.buffers)):
                for name, arr in src.items():
                    dst[f"{i}.{name}"] = arr

    def children(self):
        return iter(self.layers)

    def output_shape(self, input_shape):
        for layer in self.layers:
            input_shape = layer.output_shape(input_shape)
        return tuple(input_shape)

    def macs(self, input_shape):
        total = 0
        for layer in self.layers:
            total += layer.macs(input_shape)
            input_shape = layer.output_shape(input_shape)
        return total

    def to(self, dtype):
        super().to(dtype)   # casts the layers' arrays (its own dicts only hold those)
        self._collect()
        return self

    def _set_input_grads(self):
        for i, layer in enumerate(self.layers):
            layer.input_grad = self.input_grad if i == 0 else True

    def forward(self, x):
        self._set_input_grads()
        if not self.layers:
            x = check_array(x, "x").copy()
        for layer in self.layers:
            x = layer(x)
        self._save(x.shape, x.dtype)
        return x

    def backward(self, dy):
        dy, dtype = self._load(dy)
        self._set_input_grads()
        if not self.layers:   # no layer to check dy: do it here
            dy = check_array(dy, "dy", dtype=dtype)
            return dy if self.input_grad else None
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    def train(self, mode=True):
        super().train(mode)
        for layer in self.layers:
            layer.train(mode)
        return self

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return Sequential(*self.layers[idx])
        return self.layers[idx]

    # -- state: the layers' entries under "<index>." -------------------------------------------
    def _state_targets(self):
        return {f"{i}.{k}": t for i, layer in enumerate(self.layers)
                for k, t in layer._state_targets().items()}

    def get_extra_state(self):
        out = {}
        for i, layer in enumerate(self.layers):
            state = layer.get_extra_state()
            if state is not None:
                out[str(i)] = state
        return out or None

    def set_extra_state(self, state):
        state = {} if state is None else state
        mine = [str(i) for i, layer in enumerate(self.layers)
                if layer.get_extra_state() is not None]
        if not isinstance(state, Mapping) or sorted(state) != sorted(mine):
            have = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"Sequential extra state is for layers {have}, the layers with "
                             f"extra state are {mine}")
        for i, layer in enumerate(self.layers):
            if str(i) in state:
                layer.set_extra_state(state[str(i)])

    def __repr__(self):
        if not self.layers:
            return "Sequential()"
        lines = [f"  ({i}): " + repr(layer).replace("\n", "\n  ")
                 for i, layer in enumerate(self.layers)]
        return "Sequential(\n" + "\n".join(lines) + "\n)"
