"""Layer classes: thin stateful wrappers around :mod:`nbconv.functional`.

Every layer follows one protocol (see ``shared/API.md``)::

    y  = layer(x)            # same as layer.forward(x)
    dx = layer.backward(dy)  # gradient w.r.t. the last forward's input
    layer.params             # name -> ndarray, trainable parameters (may be empty)
    layer.grads              # same keys and shapes, filled by backward
    layer.buffers            # name -> ndarray, non-trainable state (BatchNorm2d running stats)
    layer.train(); layer.eval()

``forward`` saves only what ``backward`` needs. ``backward`` before any ``forward`` raises
``RuntimeError``; a ``dy`` whose shape is not the last output's raises ``ValueError``.
Setting ``layer.input_grad = False`` makes ``backward`` skip dx and return ``None`` (the first
layer of a network never needs it; ``Sequential`` does this for you).
"""
import numpy as np

from . import functional as F
from ._checks import check_array, check_dtype, check_float, check_int, to_pair
from .functional.norm import _check_groups as _norm_groups
from .functional.pool import pool_args as _pool_args
from .init import make_rng, uniform_fan_in


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

    # -- helpers for subclasses ---------------------------------------------------------------
    def _save(self, out_shape, *saved):
        self._out_shape = tuple(out_shape)
        self._saved = saved

    def _load(self, dy, name="dy"):
        """Check ``dy`` against the last forward and return ``(dy_contiguous, *saved)``."""
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        if not isinstance(dy, np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray, got {type(dy).__name__}")
        if dy.shape != self._out_shape:
            raise ValueError(f"{name} must have the shape of the last forward's output "
                             f"{self._out_shape}, got {dy.shape}")
        return (check_array(dy, name),) + tuple(self._saved)

    def __repr__(self):
        return f"{type(self).__name__}()"


# ---- conv: Conv2d --------------------------------------------------------------------------


class Conv2d(Layer):
    """2-d convolution ``(N, C, H, W) -> (N, F, OH, OW)`` as ``torch.nn.Conv2d``, with
    ``OH = floor((H + pad_top + pad_bottom - dilation*(KH-1) - 1) / stride) + 1`` (OW likewise).

    ``padding``: int, pair, ``'valid'``, ``'same'`` (stride 1; extra row/column at the
    bottom/right) or ``'full'`` (``dilation*(k-1)`` each side). Params ``weight (F, C/groups,
    KH, KW)`` and ``bias (F,)`` (if ``bias``), initialised ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``
    with ``fan_in = C/groups * KH * KW`` as PyTorch. ``forward`` keeps only the kernel-ready
    layout of ``x`` (a padded copy; ``x`` itself for a 1x1 stride-1 unpadded convolution and
    when each filter reads one input channel, as in depthwise layers, so do not modify it in
    place before ``backward``); ``backward`` skips dx (returns ``None``) when ``input_grad`` is
    False.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, dtype=np.float32, seed=None):
        super().__init__()
        c = check_int(in_channels, "in_channels", 1)
        f = check_int(out_channels, "out_channels", 1)
        k = to_pair(kernel_size, "kernel_size", 1)
        groups = check_int(groups, "groups", 1)
        if c % groups or f % groups:
            raise ValueError(f"groups={groups} must divide in_channels={c} and "
                             f"out_channels={f}")
        stride = to_pair(stride, "stride", 1)
        dilation = to_pair(dilation, "dilation", 1)
        F.conv2d_padding(padding, k, stride, dilation)  # raises on a bad padding
        dtype = check_dtype(dtype)
        rng = make_rng(seed)
        fan_in = c // groups * k[0] * k[1]
        self.params["weight"] = uniform_fan_in((f, c // groups) + k, fan_in, rng, dtype)
        if bias:
            self.params["bias"] = uniform_fan_in((f,), fan_in, rng, dtype)
        self.grads = {n: np.zeros_like(p) for n, p in self.params.items()}
        self._args = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
        self._repr = dict(in_channels=c, out_channels=f, kernel_size=k, **self._args,
                          bias=bool(bias))

    def forward(self, x):
        w, b = self.params["weight"], self.params.get("bias")
        prep = F.conv2d_prepare(x, w, **self._args)
        y = F.conv2d(None, w, b, **self._args, prepared=prep)
        self._save(y.shape, prep)
        return y

    def backward(self, dy):
        dy, prep = self._load(dy)
        dx, dw, db = F.conv2d_backward(dy, None, self.params["weight"], **self._args,
                                       need_dx=self.input_grad,
                                       need_bias="bias" in self.params, prepared=prep)
        self.grads["weight"][...] = dw
        if db is not None:
            self.grads["bias"][...] = db
        return dx

    def __repr__(self):
        return "Conv2d(" + ", ".join(f"{k}={v!r}" for k, v in self._repr.items()) + ")"


# ---- pool: MaxPool2d, AvgPool2d, GlobalAvgPool2d ------------------------------------------


class _Pool2d(Layer):
    """Shared bits of the pooling layers: no parameters; backward checks ``dy``'s dtype against
    the forward input's and returns ``None`` when ``input_grad`` is off."""

    def _load_pool(self, dy):
        dy, *saved = self._load(dy)
        if dy.dtype != saved[-1]:
            raise TypeError(f"dy has dtype {dy.dtype} but the last forward's input had "
                            f"{saved[-1]}; cast it with .astype()")
        return dy, saved

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._args.items())
        return f"{type(self).__name__}({args})"


class MaxPool2d(_Pool2d):
    """Max pooling ``(N, C, H, W) -> (N, C, OH, OW)``, PyTorch's ``nn.MaxPool2d`` semantics
    (``OH = floor((H + 2*ph - dh*(kh-1) - 1) / sh) + 1``, ceil with ``ceil_mode``; see
    :func:`nbconv.functional.max_pool2d`). Saves only the window offsets of the maxima (uint8
    for kernels up to 16x16) and the input shape."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        super().__init__()
        _pool_args(kernel_size, stride, padding, dilation)
        self._args = dict(kernel_size=kernel_size, stride=stride, padding=padding,
                          dilation=dilation, ceil_mode=ceil_mode)

    def forward(self, x):
        y, idx = F.max_pool2d(x, **self._args, return_indices=True)
        self._save(y.shape, idx, x.shape, x.dtype)
        return y

    def backward(self, dy):
        dy, (idx, x_shape, _) = self._load_pool(dy)
        if not self.input_grad:
            return None
        return F.max_pool2d_backward(dy, idx, x_shape, **self._args)


class AvgPool2d(_Pool2d):
    """Average pooling ``(N, C, H, W) -> (N, C, OH, OW)``, PyTorch's ``nn.AvgPool2d`` semantics
    (``OH = floor((H + 2*ph - kh) / sh) + 1``, ceil with ``ceil_mode``; divisor rules in
    :func:`nbconv.functional.avg_pool2d`). Saves only the input shape."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True):
        super().__init__()
        _pool_args(kernel_size, stride, padding)
        self._args = dict(kernel_size=kernel_size, stride=stride, padding=padding,
                          ceil_mode=ceil_mode, count_include_pad=count_include_pad)

    def forward(self, x):
        y = F.avg_pool2d(x, **self._args)
        self._save(y.shape, x.shape, x.dtype)
        return y

    def backward(self, dy):
        dy, (x_shape, _) = self._load_pool(dy)
        if not self.input_grad:
            return None
        return F.avg_pool2d_backward(dy, x_shape, **self._args)


class GlobalAvgPool2d(_Pool2d):
    """Mean over the spatial axes: ``(N, C, H, W) -> (N, C)``. Saves only the input shape."""

    def __init__(self):
        super().__init__()
        self._args = {}

    def forward(self, x):
        y = F.global_avg_pool2d(x)
        self._save(y.shape, x.shape, x.dtype)
        return y

    def backward(self, dy):
        dy, (x_shape, _) = self._load_pool(dy)
        if not self.input_grad:
            return None
        return F.global_avg_pool2d_backward(dy, x_shape)


# ---- norm: GroupNorm, BatchNorm2d ---------------------------------------------------------


class _Norm(Layer):
    """Shared bits of the normalisation layers: ``weight`` (ones) and ``bias`` (zeros) of shape
    ``(C,)`` when ``affine``; forward checks ``x``'s dtype and channels against the layer's."""

    def _init_affine(self, C, affine, eps, dtype):
        self.num_channels = check_int(C, "num_channels", 1)
        self.eps = check_float(eps, "eps", 0)
        self.affine = bool(affine)
        self.dtype = check_dtype(dtype)
        if self.affine:
            self.params = {"weight": np.ones(C, self.dtype), "bias": np.zeros(C, self.dtype)}
            self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def _check_input(self, x):
        x = check_array(x, "x", ndim=4, dtype=self.dtype)
        if x.shape[1] != self.num_channels:
            raise ValueError(f"x must have {self.num_channels} channels (N, C, H, W), "
                             f"got shape {x.shape}")
        return x

    def _affine_args(self):
        return (self.params["weight"], self.params["bias"]) if self.affine else (None, None)

    def _store_grads(self, dw, db):
        if self.affine:
            self.grads["weight"][...] = dw
            self.grads["bias"][...] = db


class GroupNorm(_Norm):
    """Group normalisation ``(N, C, H, W) -> (N, C, H, W)``, PyTorch's ``nn.GroupNorm``: the C
    channels form ``num_groups`` contiguous groups of ``C // num_groups``, each (sample, group)
    is normalised over its ``C/G * H * W`` values with the biased variance, then scaled by
    ``weight[c]`` and shifted by ``bias[c]`` (if ``affine``). ``num_groups=1`` is layer norm
    over (C, H, W), ``num_groups=C`` instance norm. Independent of the batch and of the mode.
    Saves ``x`` and the float64 ``(N, G)`` mean and ``1/sqrt(var + eps)``."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, dtype=np.float32):
        super().__init__()
        check_int(num_channels, "num_channels", 1)
        self.num_groups = _norm_groups(num_groups, num_channels)
        self._init_affine(num_channels, affine, eps, dtype)

    def forward(self, x):
        x = self._check_input(x)
        w, b = self._affine_args()
        y, mean, rstd = F.group_norm(x, self.num_groups, w, b, self.eps, return_stats=True)
        self._save(y.shape, x, mean, rstd)
        return y

    def backward(self, dy):
        dy, x, mean, rstd = self._load(dy)
        w, _ = self._affine_args()
        dx, dw, db = F.group_norm_backward(dy, x, mean, rstd, self.num_groups, w,
                                           need_dx=self.input_grad)
        self._store_grads(dw, db)
        return dx

    def __repr__(self):
        return (f"GroupNorm({self.num_groups}, {self.num_channels}, eps={self.eps}, "
                f"affine={self.affine})")


class BatchNorm2d(_Norm):
    """Batch normalisation ``(N, C, H, W) -> (N, C, H, W)``, PyTorch's ``nn.BatchNorm2d``.

    Train mode (or ``track_running_stats=False``): each channel is normalised over its
    ``N * H * W`` values with the batch mean and biased variance (one value per channel raises
    ``ValueError``); with ``track_running_stats`` the buffers ``running_mean`` (starts at 0) and
    ``running_var`` (starts at 1, unbiased variance) in ``layer.buffers`` are updated as
    ``running = (1 - momentum) * running + momentum * batch`` (``momentum=None``: cumulative
    average ``1 / num_batches_tracked``). Eval mode with running statistics normalises with
    them, and backward treats them as constants. ``track_running_stats=False``: no buffers
    (``running_mean``/``running_var`` are ``None``), always batch statistics."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, dtype=np.float32):
        super().__init__()
        self._init_affine(num_features, affine, eps, dtype)
        self.momentum = None if momentum is None else check_float(momentum, "momentum", 0, 1)
        self.track_running_stats = bool(track_running_stats)
        self.num_batches_tracked = 0
        if self.track_running_stats:
            self.buffers = {"running_mean": np.zeros(num_features, self.dtype),
                            "running_var": np.ones(num_features, self.dtype)}

    @property
    def num_features(self):
        return self.num_channels

    @property
    def running_mean(self):
        return self.buffers.get("running_mean")

    @property
    def running_var(self):
        return self.buffers.get("running_var")

    def forward(self, x):
        x = self._check_input(x)
        w, b = self._affine_args()
        batch_stats = self.training or not self.track_running_stats
        update = self.training and self.track_running_stats
        momentum = self.momentum
        if momentum is None:   # cumulative moving average over the batches seen
            momentum = 1.0 / (self.num_batches_tracked + 1)
        # running stats: updated in train mode, used in eval mode (None without tracking)
        y, mean, rstd = F.batch_norm2d(x, self.running_mean, self.running_var, w, b,
                                       batch_stats, momentum, self.eps, return_stats=True)
        if update:
            self.num_batches_tracked += 1
        self._save(y.shape, x, mean, rstd, batch_stats)
        return y

    def backward(self, dy):
        dy, x, mean, rstd, batch_stats = self._load(dy)
        w, _ = self._affine_args()
        dx, dw, db = F.batch_norm2d_backward(dy, x, mean, rstd, w, batch_stats,
                                             need_dx=self.input_grad)
        self._store_grads(dw, db)
        return dx

    def __repr__(self):
        return (f"BatchNorm2d({self.num_channels}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats})")


# ---- basic: ReLU, Linear, Flatten, Dropout, Sequential --------------------------------------


def _check_dy_dtype(dy, dtype):
    if dy.dtype != dtype:
        raise TypeError(f"dy has dtype {dy.dtype} but the last forward's output had {dtype}; "
                        f"cast it with .astype()")


class ReLU(Layer):
    """``max(x, 0)`` elementwise, any shape ``(N, ...)`` -> same shape, float32 or float64.
    Saves the output; the gradient passes where the output is > 0 (none at 0, as PyTorch)."""

    def forward(self, x):
        y = F.relu(x)
        self._save(y.shape, y)
        return y

    def backward(self, dy):
        dy, y = self._load(dy)
        _check_dy_dtype(dy, y.dtype)
        return F.relu_backward(dy, y) if self.input_grad else None


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
        x = check_array(x, "x", ndim=2, dtype=self.dtype)
        y = F.linear(x, self.params["weight"], self.params.get("bias"))
        self._save(y.shape, x)
        return y

    def backward(self, dy):
        dy, x = self._load(dy)
        dx, dw, db = F.linear_backward(dy, x, self.params["weight"], need_dx=self.input_grad,
                                       need_bias="bias" in self.params)
        self.grads["weight"][...] = dw
        if db is not None:
            self.grads["bias"][...] = db
        return dx

    def __repr__(self):
        return (f"Linear(in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={'bias' in self.params})")


class Flatten(Layer):
    """``(N, d1, d2, ...) -> (N, d1 * d2 * ...)`` (C order, as ``torch.nn.Flatten()``); the
    output is a new array. ``backward`` reshapes ``dy`` back to the input shape."""

    def forward(self, x):
        xc = check_array(x, "x")
        if xc.ndim < 2:
            raise ValueError(f"x must have at least 2 dimensions (N, ...), got shape {xc.shape}")
        if xc is x:
            xc = xc.copy()
        y = xc.reshape(xc.shape[0], -1)
        self._save(y.shape, x.shape, x.dtype)
        return y

    def backward(self, dy):
        dy, x_shape, dtype = self._load(dy)
        _check_dy_dtype(dy, dtype)
        if not self.input_grad:
            return None
        return np.array(dy, copy=True).reshape(x_shape)


class Dropout(Layer):
    """Inverted dropout, any shape -> same shape, as ``torch.nn.Dropout(p)``.

    Train mode: each element is zeroed with probability ``p`` and the others are scaled by
    ``1 / (1 - p)`` (``p == 1``: all zeros); eval mode: identity. The masks come from
    ``self.rng``, a ``numpy.random.Generator`` made from ``seed``, so a seeded layer repeats
    its masks. ``p`` must be in ``[0, 1]``."""

    def __init__(self, p=0.5, seed=None):
        super().__init__()
        self.p = check_float(p, "p", 0.0, 1.0)
        self.rng = make_rng(seed)

    def forward(self, x):
        x = check_array(x, "x")
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

    def __repr__(self):
        return f"Dropout(p={self.p})"


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
    the layers). ``state_dict()``/``load_state_dict()`` copy the params and buffers.
    """

    def __init__(self, *layers):
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential layer {i} must be an nbconv Layer, "
                                f"got {type(layer).__name__}")
        self.layers = list(layers)
        self.input_grad = False
        for i, layer in enumerate(self.layers):
            for src, dst in ((layer.params, self.params), (layer.grads, self.grads),
                             (getattr(layer, "buffers", None) or {}, self.buffers)):
                for name, arr in src.items():
                    dst[f"{i}.{name}"] = arr

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
        dy, _ = self._load(dy)
        self._set_input_grads()
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        if not self.layers and not self.input_grad:
            return None
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

    def state_dict(self):
        """Copies of every parameter and buffer: ``{"<index>.<name>": ndarray}``."""
        return {k: v.copy() for d in (self.params, self.buffers) for k, v in d.items()}

    def load_state_dict(self, state):
        """Copy ``state`` (as from :meth:`state_dict`) into the parameters and buffers, in place.

        All or nothing: the keys must be exactly this model's (``ValueError`` naming the missing
        and unexpected ones), each value an ndarray of the same shape (``ValueError``) and dtype
        (``TypeError``) naming the key; everything is checked before anything is written."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        targets = {**self.params, **self.buffers}
        missing = [k for k in targets if k not in state]
        unexpected = [k for k in state if k not in targets]
        if missing or unexpected:
            raise ValueError(f"state_dict keys do not match the model: missing {missing}, "
                             f"unexpected {unexpected}")
        for k, t in targets.items():
            v = state[k]
            if not isinstance(v, np.ndarray):
                raise TypeError(f"state_dict[{k!r}] must be a numpy.ndarray, "
                                f"got {type(v).__name__}")
            if v.shape != t.shape:
                raise ValueError(f"state_dict[{k!r}] has shape {v.shape}, the model's is "
                                 f"{t.shape}")
            if v.dtype != t.dtype:
                raise TypeError(f"state_dict[{k!r}] has dtype {v.dtype}, the model's is "
                                f"{t.dtype}")
        for k, t in targets.items():
            t[...] = state[k]

    def __repr__(self):
        if not self.layers:
            return "Sequential()"
        lines = [f"  ({i}): " + repr(layer).replace("\n", "\n  ")
                 for i, layer in enumerate(self.layers)]
        return "Sequential(\n" + "\n".join(lines) + "\n)"


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
