"""Transposed convolution (``torch.nn.functional.conv_transpose2d``) built on the conv kernels.

Shapes: ``input`` ``(N, C_in, H, W)`` (or unbatched ``(C_in, H, W)``), ``weight`` in PyTorch's
layout ``(C_in, C_out/groups, KH, KW)``, ``bias`` ``(C_out,)``, output ``(N, C_out, OH, OW)``
with, per axis,

    OH = (H - 1) * stride - 2 * padding + dilation * (KH - 1) + output_padding + 1

``output_padding`` (extra rows/columns at the bottom/right) must be smaller than the stride or
the dilation of its axis, as in PyTorch. ``y[n, g*Cog + o, i*s - p + k*d] += x[n, g*Cig + c, i]
* weight[g*Cig + c, o, k]`` (per axis; ``Cig = C_in/groups``, ``Cog = C_out/groups``).

The transpose relation, used as is: a conv2d with weight ``weight`` (``C_in`` filters of
``C_out/groups`` channels), the same stride, padding, dilation and groups, on an input of the
transposed conv's *output* shape ``(N, C_out, OH, OW)``, has an output of ``(N, C_in, H', W')``
with ``H' = H + floor(output_padding / stride) >= H``. So

- the forward is that conv's **input gradient** with ``dy = input`` (zero padded at the
  bottom/right to ``H' x W'`` when ``output_padding >= stride``, which the dilation rule
  allows), plus the bias;
- the input gradient is that conv's **forward** on ``dy`` (cropped back to ``H x W``);
- the weight gradient is that conv's **weight gradient** with the roles swapped
  (``x = dy``, ``dy = input``), already in ``(C_in, C_out/groups, KH, KW)``; the bias
  gradient sums ``dy`` over ``(N, OH, OW)``.

The forward calls :func:`nbconv.functional.conv.conv2d_input_grad` (the conv's dx-only entry
point, which needs no ``x``); the backward :func:`nbconv.functional.conv.conv2d_prepare`,
:func:`~nbconv.functional.conv.conv2d` and :func:`~nbconv.functional.conv.conv2d_backward`. So
every path of the conv planner (including depthwise-shaped transposed convolutions, one input
channel per filter of the conv) serves this module unchanged.
"""
import numpy as np

from .._checks import check_array, check_int, check_out_size, conv_out_size, to_pair
from .conv import conv2d, conv2d_backward, conv2d_input_grad, conv2d_prepare

__all__ = ["conv_transpose2d", "conv_transpose2d_backward", "conv_transpose2d_out_size",
           "conv_transpose2d_args"]


def conv_transpose2d_out_size(size, kernel, stride=1, padding=0, output_padding=0, dilation=1):
    """``(size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1``."""
    return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def conv_transpose2d_args(weight, bias, stride, padding, output_padding, dilation, groups):
    """The arguments of :func:`conv_transpose2d` checked and normalised: ``(weight, bias,
    stride, padding, output_padding, dilation, groups)`` with pairs of ints; ``TypeError`` /
    ``ValueError`` naming the bad one (``ConvTranspose2d`` calls it at construction)."""
    weight = check_array(weight, "weight", ndim=4)
    groups = check_int(groups, "groups", 1)
    stride = to_pair(stride, "stride", 1)
    if isinstance(padding, str):
        raise ValueError(f"padding must be an int or a pair for conv_transpose2d (as PyTorch), "
                         f"got {padding!r}")
    padding = to_pair(padding, "padding", 0)
    output_padding = to_pair(output_padding, "output_padding", 0)
    dilation = to_pair(dilation, "dilation", 1)
    for a in range(2):
        if output_padding[a] >= max(stride[a], dilation[a]):
            raise ValueError(f"output_padding {output_padding} must be smaller than either "
                             f"stride {stride} or dilation {dilation} (per axis, as PyTorch)")
    c_in = weight.shape[0]
    if c_in % groups:
        raise ValueError(f"groups={groups} must divide in_channels: weight has shape "
                         f"{weight.shape} (C_in, C_out/groups, KH, KW)")
    c_out = weight.shape[1] * groups
    if bias is not None:
        bias = check_array(bias, "bias", ndim=1, dtype=weight.dtype)
        if bias.shape != (c_out,):
            raise ValueError(f"bias must have shape ({c_out},) (C_out) for weight of shape "
                             f"{weight.shape} with groups={groups}, got {bias.shape}")
    return weight, bias, stride, padding, output_padding, dilation, groups


def _check_input(x, weight, name="input"):
    """``x`` as ``(N, C_in, H, W)`` and whether it came unbatched ``(C_in, H, W)``."""
    if isinstance(x, np.ndarray) and x.ndim not in (3, 4):
        raise ValueError(f"{name} must be 4-d (N, C_in, H, W) or 3-d (C_in, H, W), got shape "
                         f"{x.shape}")
    x = check_array(x, name, dtype=weight.dtype)
    unbatched = x.ndim == 3
    if unbatched:
        x = x[None]
    if x.shape[1] != weight.shape[0]:
        raise ValueError(f"{name} of shape {x.shape[unbatched:]} has {x.shape[1]} channels but "
                         f"weight of shape {weight.shape} (C_in, C_out/groups, KH, KW) expects "
                         f"{weight.shape[0]}")
    return x, unbatched


def _out_shape(x_shape, weight, stride, padding, output_padding, dilation, groups):
    n, _, h, w = x_shape
    oh = conv_transpose2d_out_size(h, weight.shape[2], stride[0], padding[0],
                                   output_padding[0], dilation[0])
    ow = conv_transpose2d_out_size(w, weight.shape[3], stride[1], padding[1],
                                   output_padding[1], dilation[1])
    check_out_size((oh, ow), ("input of shape", tuple(x_shape)),
                   ("weight of shape", weight.shape), ("stride", stride), ("padding", padding),
                   ("output_padding", output_padding), ("dilation", dilation))
    return (n, weight.shape[1] * groups, oh, ow)


def _conv_out(y_shape, weight, stride, padding, dilation):
    """``(OH, OW)`` of the conv2d whose input is the transposed conv's output ``y_shape``."""
    return tuple(conv_out_size(y_shape[2 + a], weight.shape[2 + a], stride[a], padding[a],
                               padding[a], dilation[a]) for a in range(2))


def _fit(a, shape):
    """``a`` (N, C, h, w) zero padded at the bottom/right or cropped to ``shape``'s (H, W)."""
    H, W = shape[2:]
    if a.shape[2:] == (H, W):
        return a
    out = np.zeros(a.shape[:2] + (H, W), a.dtype)
    h, w = min(H, a.shape[2]), min(W, a.shape[3])
    out[:, :, :h, :w] = a[:, :, :h, :w]
    return out


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1):
    """Transposed convolution as ``torch.nn.functional.conv_transpose2d`` (same argument
    order): ``(N, C_in, H, W) -> (N, C_out, OH, OW)`` with ``OH = (H - 1)*stride - 2*padding
    + dilation*(KH - 1) + output_padding + 1`` (see the module doc); unbatched ``(C_in, H,
    W)`` gives ``(C_out, OH, OW)``."""
    weight, bias, stride, padding, output_padding, dilation, groups = conv_transpose2d_args(
        weight, bias, stride, padding, output_padding, dilation, groups)
    x, unbatched = _check_input(input, weight)
    y_shape = _out_shape(x.shape, weight, stride, padding, output_padding, dilation, groups)
    dy = _fit(x, (0, 0) + _conv_out(y_shape, weight, stride, padding, dilation))
    y = conv2d_input_grad(dy, weight, y_shape, stride, padding, dilation, groups)
    if bias is not None:
        y += bias.reshape(1, -1, 1, 1)
    return y[0] if unbatched else y


def conv_transpose2d_backward(dy, input, weight, stride=1, padding=0, output_padding=0, groups=1,
                              dilation=1, need_dx=True, need_bias=True):
    """Gradients of :func:`conv_transpose2d`: ``(dx (N, C_in, H, W) or None, dweight (C_in,
    C_out/groups, KH, KW), dbias (C_out,) or None)`` for ``dy (N, C_out, OH, OW)`` (unbatched
    ``input`` and ``dy`` give an unbatched ``dx``). ``need_dx=False`` skips the input gradient,
    ``need_bias=False`` the bias gradient."""
    weight, _, stride, padding, output_padding, dilation, groups = conv_transpose2d_args(
        weight, None, stride, padding, output_padding, dilation, groups)
    x, unbatched = _check_input(input, weight)
    y_shape = _out_shape(x.shape, weight, stride, padding, output_padding, dilation, groups)
    if isinstance(dy, np.ndarray) and dy.ndim != 4 - unbatched:
        raise ValueError(f"dy must be {4 - unbatched}-d like input, got shape {dy.shape}")
    dy = check_array(dy, "dy", dtype=weight.dtype)
    if unbatched:
        dy = dy[None]
    if dy.shape != y_shape:
        raise ValueError(f"dy must have the output shape {y_shape[unbatched:]}, got "
                         f"{dy.shape[unbatched:]}")
    xg = _fit(x, (0, 0) + _conv_out(y_shape, weight, stride, padding, dilation))
    prep = conv2d_prepare(dy, weight, stride, padding, dilation, groups)
    _, dw, _ = conv2d_backward(xg, None, weight, stride, padding, dilation, groups,
                                     need_dx=False, need_bias=False, prepared=prep)
    dx = None
    if need_dx:
        dx = _fit(conv2d(None, weight, None, stride, padding, dilation, groups,
                               prepared=prep), x.shape)
        if unbatched:
            dx = dx[0]
    db = dy.sum(axis=(0, 2, 3)) if need_bias else None
    return dx, dw, db
