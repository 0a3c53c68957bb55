"""Normalisation layers: GroupNorm and BatchNorm2d, stateful wrappers around the norm ops of
:mod:`nbconv.functional`. BatchNorm2d's ``state_dict`` holds ``running_mean``,
``running_var`` and ``num_batches_tracked`` (a 0-d int64 array), as PyTorch's."""
import numpy as np

from .. import functional as F
from .._checks import check_dtype, check_float, check_groups, check_int
from .base import COUNTER, Layer


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
        """What only the layer knows: ``x``'s dtype and channels must be the layer's (the
        functional op checks the rest, and raises on anything that is not a 4-d array)."""
        if isinstance(x, np.ndarray) and x.ndim == 4:
            if x.dtype != self.dtype:
                raise TypeError(f"x has dtype {x.dtype} but {self.dtype} is expected (the "
                                f"layer's dtype); cast it with .astype()")
            if x.shape[1] != self.num_channels:
                raise ValueError(f"x must have {self.num_channels} channels (N, C, H, W), "
                                 f"got shape {x.shape}")
        return x

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        if len(shape) != 4 or shape[1] != self.num_channels:
            raise ValueError(f"{type(self).__name__} takes (N, {self.num_channels}, H, W) "
                             f"inputs, got shape {shape}")
        return shape

    def macs(self, input_shape):
        return 0   # normalisation arithmetic is not counted

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
        self.num_groups = check_groups(num_groups, num_channels)
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
                f"affine={self.affine}, bias={self.affine})")   # torch 2.13's repr


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

    def _own_state(self):
        out = super()._own_state()
        if not self.track_running_stats:   # as PyTorch: no counter without running stats
            out.pop(COUNTER, None)
        return out

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
                f"affine={self.affine}, bias={self.affine}, "
                f"track_running_stats={self.track_running_stats})")
