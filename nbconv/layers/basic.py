"""Basic layers: Identity, ReLU, Linear, Flatten, Dropout and the losses SoftmaxCrossEntropy
and CrossEntropyLoss, stateful wrappers around the basic ops of :mod:`nbconv.functional`."""
import numpy as np

from .. import functional as F
from .._checks import check_array, check_bool, check_dtype, check_float, check_int
from ..init import make_rng, uniform_fan_in
from .base import Layer


def _check_dy_dtype(dy, dtype):
    if dy.dtype != dtype:
        raise TypeError(f"dy has dtype {dy.dtype} but the last forward's output had {dtype}; "
                        f"cast it with .astype()")


class Identity(Layer):
    """Returns its input unchanged (the same array, as ``torch.nn.Identity``); ``backward``
    returns ``dy``. Takes and ignores any constructor arguments, as PyTorch's."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        x = check_array(x, "x", allow_empty=True)
        self._save(x.shape, x.dtype)
        return x

    def backward(self, dy):
        dy, dtype = self._load(dy)
        _check_dy_dtype(dy, dtype)
        return dy if self.input_grad else None

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def macs(self, input_shape):
        return 0


class ReLU(Layer):
    """``max(x, 0)`` elementwise, any shape ``(N, ...)`` -> same shape, float32 or float64.
    Saves the output; the gradient is 0 where the output is <= 0 and passes elsewhere, NaN
    included (none at 0, as PyTorch). ``inplace`` is accepted (torch's signature and repr); the
    output is always a new array."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = check_bool(inplace, "inplace")

    def forward(self, x):
        y = F.relu(x)
        self._save(y.shape, y)
        return y

    def backward(self, dy):
        dy, y = self._load(dy)
        return F.relu_backward(dy, y) if self.input_grad else None

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def macs(self, input_shape):
        return 0

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""


class Linear(Layer):
    """Fully connected layer ``(N, in_features) -> (N, out_features)``,
    ``y = x @ weight.T + bias``, as ``torch.nn.Linear``: any input ``(*, in_features)``
    (a 1-d ``(in_features,)`` one included) gives ``(*, out_features)`` (put a :class:`Flatten`
    in front of images).

    Params ``weight (out_features, in_features)`` and ``bias (out_features,)`` (if ``bias``), of
    ``dtype``, initialised ``U(-1/sqrt(in_features), 1/sqrt(in_features))`` as PyTorch,
    reproducible from ``seed`` (an int, a ``numpy.random.Generator`` or ``None``). An input of
    another dtype raises ``TypeError``. Saves the input for ``backward``."""

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, seed=None):
        super().__init__()
        self.in_features = check_int(in_features, "in_features", 1)
        self.out_features = check_int(out_features, "out_features", 1)
        self.dtype = check_dtype(dtype)
        rng = make_rng(seed)
        shape, fan_in = (self.out_features, self.in_features), self.in_features
        self.params["weight"] = uniform_fan_in(shape, fan_in, rng, self.dtype)
        if bias:
            self.params["bias"] = uniform_fan_in(shape[:1], fan_in, rng, self.dtype)
        self.grads = {n: np.zeros_like(p) for n, p in self.params.items()}

    def forward(self, x):
        shape = None
        if isinstance(x, np.ndarray) and x.ndim != 2 and x.ndim >= 1:
            if x.shape[-1] != self.in_features:
                raise ValueError(f"x has {x.shape[-1]} features in its last axis (shape "
                                 f"{x.shape}) but the layer expects in_features="
                                 f"{self.in_features}")
            shape, x = x.shape, x.reshape(-1, self.in_features)   # (*, in) -> (M, in)
        y = F.linear(x, self.params["weight"], self.params.get("bias"))
        if shape is not None:
            y = y.reshape(shape[:-1] + (self.out_features,))
        self._save(y.shape, x, shape)
        return y

    def backward(self, dy):
        dy, x, shape = self._load(dy)
        if shape is not None:
            dy = dy.reshape(-1, self.out_features)
        dx, dw, db = F.linear_backward(dy, x, self.params["weight"], need_dx=self.input_grad,
                                       need_bias="bias" in self.params)
        self._store_grads(dw, db)
        return dx if dx is None or shape is None else dx.reshape(shape)

    def output_shape(self, input_shape):
        if not input_shape or input_shape[-1] != self.in_features:
            raise ValueError(f"Linear({self.in_features}, {self.out_features}) takes inputs "
                             f"(*, {self.in_features}), got shape {tuple(input_shape)}")
        return tuple(input_shape[:-1]) + (self.out_features,)

    def macs(self, input_shape):
        """``N * in_features * out_features``."""
        return int(np.prod(input_shape[:-1])) * self.in_features * self.out_features

    def __repr__(self):
        return (f"Linear(in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={'bias' in self.params})")


class Flatten(Layer):
    """``(N, d1, d2, ...) -> (N, d1 * d2 * ...)`` (C order, as ``torch.nn.Flatten()``). Like
    PyTorch's, the output is a view of a C-contiguous input (no copy; a non-contiguous input is
    copied first), and ``backward`` returns ``dy`` reshaped to the input shape (a view too):
    no nbconv layer writes to its input, so sharing memory is safe and saves a pass over the
    activation each way."""

    def forward(self, x):
        xc = check_array(x, "x")
        if xc.ndim < 2:
            raise ValueError(f"x must have at least 2 dimensions (N, ...), got shape {xc.shape}")
        y = xc.reshape(xc.shape[0], -1)
        self._save(y.shape, x.shape, x.dtype)
        return y

    def backward(self, dy):
        dy, x_shape, dtype = self._load(dy)
        _check_dy_dtype(dy, dtype)
        if not self.input_grad:
            return None
        return check_array(dy, "dy").reshape(x_shape)

    def output_shape(self, input_shape):
        if len(input_shape) < 2:
            raise ValueError(f"Flatten takes inputs (N, ...) of at least 2 dimensions, got "
                             f"shape {tuple(input_shape)}")
        return (input_shape[0], int(np.prod(input_shape[1:])))

    def macs(self, input_shape):
        return 0

    def __repr__(self):
        return "Flatten(start_dim=1, end_dim=-1)"


class Dropout(Layer):
    """Inverted dropout, any shape -> same shape, as ``torch.nn.Dropout(p)``.

    Train mode: each element is zeroed with probability ``p`` and the others are scaled by
    ``1 / (1 - p)`` (``p == 1``: all zeros); eval mode: identity. The masks come from
    ``self.rng``, a ``numpy.random.Generator`` made from ``seed``, so a seeded layer repeats
    its masks; its state is the layer's extra state (:meth:`get_extra_state`, ``{"rng":
    bit_generator.state}``), so a checkpoint resumes the same masks. ``p`` must be in
    ``[0, 1]``."""

    def __init__(self, p=0.5, seed=None):
        super().__init__()
        self.p = check_float(p, "p", 0.0, 1.0)
        self.rng = make_rng(seed)

    def forward(self, x):
        x = check_array(x, "x")   # the mask needs x's shape and dtype before F.dropout runs
        if self.training and self.p > 0:
            mask = F.dropout_mask(x.shape, self.p, self.rng, x.dtype)
            y = F.dropout(x, mask, self.p)
        else:
            mask, y = None, x.copy()
        self._save(y.shape, mask, self.p, x.dtype)
        return y

    def backward(self, dy):
        dy, mask, p, dtype = self._load(dy)
        _check_dy_dtype(dy, dtype)
        if not self.input_grad:
            return None
        return dy.copy() if mask is None else F.dropout_backward(dy, mask, p)

    def get_extra_state(self):
        return {"rng": self.rng.bit_generator.state}

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def macs(self, input_shape):
        return 0

    def __repr__(self):
        return f"Dropout(p={self.p}, inplace=False)"


class SoftmaxCrossEntropy:
    """Softmax cross-entropy loss, mean over the batch (``torch.nn.CrossEntropyLoss()``).

    ``loss, dlogits = SoftmaxCrossEntropy()(logits, labels)`` with ``logits (N, K)`` float32 or
    float64 and ``labels (N,)`` integers in ``[0, K)`` (else ``ValueError``; a non-integer
    dtype is a ``TypeError``). ``loss`` is a scalar of the logits' dtype, ``dlogits (N, K)``
    its gradient. Computed with log-sum-exp, so extreme logits (e.g. 1e4) stay finite."""

    def __call__(self, logits, labels):
        return self.forward(logits, labels)

    def forward(self, logits, labels):
        return F.softmax_cross_entropy(logits, labels)

    def __repr__(self):
        return "SoftmaxCrossEntropy()"


class CrossEntropyLoss(Layer):
    """The cross-entropy loss as a PyTorch-style loss layer::

        crit = CrossEntropyLoss()               # reduction="mean", label_smoothing=0.0
        loss = crit(logits, labels)             # a scalar of the logits' dtype
        dlogits = crit.backward()               # d loss / d logits, (N, K)

    ``logits (N, K)`` float32/float64, ``labels (N,)`` class indices in ``[0, K)``.
    ``reduction``: ``"mean"`` or ``"sum"`` over the batch; ``label_smoothing`` ``eps`` in
    ``[0, 1]`` mixes the one-hot target with the uniform one, ``(1 - eps) onehot + eps / K``,
    as ``torch.nn.CrossEntropyLoss``. ``backward(dloss=1.0)`` scales the gradient (before any
    forward: ``RuntimeError``). Class weights (``weight``) are not supported.
    :class:`SoftmaxCrossEntropy` returns ``(loss, dlogits)`` in one call instead."""

    def __init__(self, weight=None, reduction="mean", label_smoothing=0.0):
        super().__init__()
        if weight is not None:
            raise ValueError("CrossEntropyLoss: class weights (weight=...) are not supported")
        self.reduction = F.check_reduction(reduction)
        self.label_smoothing = check_float(label_smoothing, "label_smoothing", 0.0, 1.0)

    def forward(self, logits, labels):
        loss, d = F.cross_entropy_and_grad(logits, labels, self.reduction, self.label_smoothing)
        self._save((), d)
        return loss

    def backward(self, dloss=1.0):
        self._check_saved()
        d = self._saved[0]
        dloss = check_float(dloss, "dloss")
        return d.copy() if dloss == 1.0 else d * d.dtype.type(dloss)
