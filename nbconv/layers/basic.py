"""Basic layers: ReLU, Linear, Flatten, Dropout and the SoftmaxCrossEntropy loss, stateful
wrappers around the basic ops of :mod:`nbconv.functional`."""
import numpy as np

from .. import functional as F
from .._checks import check_array, check_dtype, check_float, check_int
from ..init import make_rng, uniform_fan_in
from .base import Layer


def _check_dy_dtype(dy, dtype):
    if dy.dtype != dtype:
        raise TypeError(f"dy has dtype {dy.dtype} but the last forward's output had {dtype}; "
                        f"cast it with .astype()")


class ReLU(Layer):
    """``max(x, 0)`` elementwise, any shape ``(N, ...)`` -> same shape, float32 or float64.
    Saves the output; the gradient is 0 where the output is <= 0 and passes elsewhere, NaN
    included (none at 0, as PyTorch)."""

    def forward(self, x):
        y = F.relu(x)
        self._save(y.shape, y)
        return y

    def backward(self, dy):
        dy, y = self._load(dy)
        return F.relu_backward(dy, y) if self.input_grad else None

    def output_shape(self, input_shape):
        return tuple(input_shape)


class Linear(Layer):
    """Fully connected layer ``(N, in_features) -> (N, out_features)``,
    ``y = x @ weight.T + bias``, as ``torch.nn.Linear`` (2-d inputs only; put a
    :class:`Flatten` in front of images).

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
        y = F.linear(x, self.params["weight"], self.params.get("bias"))
        self._save(y.shape, x)
        return y

    def backward(self, dy):
        dy, x = self._load(dy)
        dx, dw, db = F.linear_backward(dy, x, self.params["weight"], need_dx=self.input_grad,
                                       need_bias="bias" in self.params)
        self._store_grads(dw, db)
        return dx

    def output_shape(self, input_shape):
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
        return (input_shape[0], int(np.prod(input_shape[1:])))

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
