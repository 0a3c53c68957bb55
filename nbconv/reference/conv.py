"""Plain NumPy convolution: the textbook loops (``*_naive``), im2col/col2im with one matrix
product per group, and the transposed convolution's loops."""
import numpy as np

from .._checks import conv2d_padding, conv_out_size


# ---- conv -----------------------------------------------------------------------------------
# Shapes: x (N, C, H, W), weight (Fo, C/groups, KH, KW), bias (Fo,), y and dy (N, Fo, OH, OW)
# (Fo filters) with
#     OH = floor((H + pad_top + pad_bottom - dilation_h * (KH - 1) - 1) / stride_h) + 1
# (OW likewise). ``padding`` is an int, a pair (ph, pw), 'valid', 'same' (stride 1; the odd extra
# row/column at the bottom/right, as PyTorch) or 'full' (dilation * (k - 1) on each side), parsed
# by :func:`nbconv._checks.conv2d_padding`, the parser the kernels' wrappers use. Group g maps
# input channels [g*C/G, (g+1)*C/G) to filters [g*Fo/G, (g+1)*Fo/G). Backward returns
# (dx, dweight, dbias).

def _conv_geometry(x_shape, w_shape, stride, padding, dilation):
    pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
    (sh, sw), (dh, dw) = pair(stride), pair(dilation)
    kh, kw = w_shape[2:]
    pt, pb, pl, pr = conv2d_padding(padding, (kh, kw), (sh, sw), (dh, dw))
    oh = conv_out_size(x_shape[2], kh, sh, pt, pb, dh)
    ow = conv_out_size(x_shape[3], kw, sw, pl, pr, dw)
    return (sh, sw), (pt, pb, pl, pr), (dh, dw), (oh, ow)


def conv2d_naive(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Textbook loops: ``y[n,f,oh,ow] = b[f] + sum_{c,i,j} w[f,c,i,j] * x[n, g*Cg + c,
    oh*sh - pt + i*dh, ow*sw - pl + j*dw]`` (terms outside the input are zero)."""
    N, C, H, W = x.shape
    Fo, Cg, KH, KW = weight.shape
    (sh, sw), (pt, _, pl, _), (dh, dw), (OH, OW) = _conv_geometry(x.shape, weight.shape, stride,
                                                                 padding, dilation)
    Fg = Fo // groups
    y = np.zeros((N, Fo, OH, OW), x.dtype)
    for n in range(N):
        for f in range(Fo):
            g = f // Fg
            for oh in range(OH):
                for ow in range(OW):
                    s = 0.0 if bias is None else bias[f]
                    for c in range(Cg):
                        for i in range(KH):
                            for j in range(KW):
                                ih, iw = oh * sh - pt + i * dh, ow * sw - pl + j * dw
                                if 0 <= ih < H and 0 <= iw < W:
                                    s += weight[f, c, i, j] * x[n, g * Cg + c, ih, iw]
                    y[n, f, oh, ow] = s
    return y


def conv2d_backward_naive(dy, x, weight, stride=1, padding=0, dilation=1, groups=1):
    """The same loops as :func:`conv2d_naive`, each product's gradient added to both factors."""
    N, C, H, W = x.shape
    Fo, Cg, KH, KW = weight.shape
    (sh, sw), (pt, _, pl, _), (dh, dw), (OH, OW) = _conv_geometry(x.shape, weight.shape, stride,
                                                                 padding, dilation)
    Fg = Fo // groups
    dx, dwt = np.zeros_like(x), np.zeros_like(weight)
    for n in range(N):
        for f in range(Fo):
            g = f // Fg
            for oh in range(OH):
                for ow in range(OW):
                    d = dy[n, f, oh, ow]
                    for c in range(Cg):
                        for i in range(KH):
                            for j in range(KW):
                                ih, iw = oh * sh - pt + i * dh, ow * sw - pl + j * dw
                                if 0 <= ih < H and 0 <= iw < W:
                                    dx[n, g * Cg + c, ih, iw] += weight[f, c, i, j] * d
                                    dwt[f, c, i, j] += x[n, g * Cg + c, ih, iw] * d
    return dx, dwt, dy.sum(axis=(0, 2, 3))


def im2col(x, kernel_hw, stride=1, padding=0, dilation=1):
    """Columns ``(C*KH*KW, N*OH*OW)`` of ``x`` (rows ordered (c, i, j), columns (n, oh, ow))."""
    N, C, H, W = x.shape
    kh, kw = kernel_hw
    (sh, sw), (pt, pb, pl, pr), (dh, dw), (OH, OW) = _conv_geometry(
        x.shape, (0, 0, kh, kw), stride, padding, dilation)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    s = xp.strides
    v = np.lib.stride_tricks.as_strided(
        xp, (C, kh, kw, N, OH, OW), (s[1], s[2] * dh, s[3] * dw, s[0], s[2] * sh, s[3] * sw))
    return v.reshape(C * kh * kw, N * OH * OW)


def conv2d_im2col(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """im2col + one matrix product per group (CS231n style)."""
    N = x.shape[0]
    Fo, Cg, KH, KW = weight.shape
    _, _, _, (OH, OW) = _conv_geometry(x.shape, weight.shape, stride, padding, dilation)
    cols = im2col(x, (KH, KW), stride, padding, dilation)
    Fg, K = Fo // groups, Cg * KH * KW
    w2 = weight.reshape(Fo, K)
    y = np.empty((Fo, N * OH * OW), x.dtype)
    for g in range(groups):
        np.matmul(w2[g * Fg:(g + 1) * Fg], cols[g * K:(g + 1) * K], out=y[g * Fg:(g + 1) * Fg])
    if bias is not None:
        y += bias[:, None]
    return np.ascontiguousarray(y.reshape(Fo, N, OH, OW).transpose(1, 0, 2, 3))


def conv2d_backward_im2col(dy, x, weight, stride=1, padding=0, dilation=1, groups=1, cols=None):
    """dweight = dy @ cols.T, dcols = weight.T @ dy, then col2im: one strided add per kernel
    tap. ``cols`` (from :func:`im2col`, e.g. kept by the forward pass) is recomputed if None."""
    N, C, H, W = x.shape
    Fo, Cg, KH, KW = weight.shape
    (sh, sw), (pt, pb, pl, pr), (dh, dw), (OH, OW) = _conv_geometry(
        x.shape, weight.shape, stride, padding, dilation)
    if cols is None:
        cols = im2col(x, (KH, KW), stride, padding, dilation)
    Fg, K = Fo // groups, Cg * KH * KW
    w2 = weight.reshape(Fo, K)
    dy2 = dy.transpose(1, 0, 2, 3).reshape(Fo, N * OH * OW)
    dw2 = np.empty((Fo, K), x.dtype)
    dcols = np.empty((C * KH * KW, N * OH * OW), x.dtype)
    for g in range(groups):
        fs, ks = slice(g * Fg, (g + 1) * Fg), slice(g * K, (g + 1) * K)
        np.matmul(dy2[fs], cols[ks].T, out=dw2[fs])
        np.matmul(w2[fs].T, dy2[fs], out=dcols[ks])
    dcols = dcols.reshape(C, KH, KW, N, OH, OW)
    dxp = np.zeros((C, N, H + pt + pb, W + pl + pr), x.dtype)  # (C, N): dcols' order
    for i in range(KH):
        for j in range(KW):
            dxp[:, :, i * dh:i * dh + sh * (OH - 1) + 1:sh,
                j * dw:j * dw + sw * (OW - 1) + 1:sw] += dcols[:, i, j]
    dx = np.ascontiguousarray(dxp[:, :, pt:pt + H, pl:pl + W].transpose(1, 0, 2, 3))
    return dx, dw2.reshape(weight.shape), dy.sum(axis=(0, 2, 3))


# ---- transposed convolution -------------------------------------------------------------------
# x (N, C_in, H, W), weight (C_in, C_out/groups, KH, KW) (PyTorch's layout), bias (C_out,),
# y (N, C_out, OH, OW) with OH = (H - 1)*sh - 2*ph + dh*(KH - 1) + output_padding_h + 1.

def conv_transpose2d_naive(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                           dilation=1):
    """Scatter loops: ``y[n, g*Cog + o, i*sh - ph + k*dh, j*sw - pw + l*dw] += x[n, c, i, j] *
    weight[c, o, k, l]`` for input channel ``c`` of group ``g`` (targets outside are dropped)."""
    pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
    (sh, sw), (ph, pw), (oph, opw), (dh, dw) = (pair(v) for v in (stride, padding,
                                                                   output_padding, dilation))
    N, C, H, W = x.shape
    _, Cog, KH, KW = weight.shape
    Cig = C // groups
    OH = (H - 1) * sh - 2 * ph + dh * (KH - 1) + oph + 1
    OW = (W - 1) * sw - 2 * pw + dw * (KW - 1) + opw + 1
    y = np.zeros((N, Cog * groups, OH, OW), x.dtype)
    for n in range(N):
        for c in range(C):
            g = c // Cig
            for i in range(H):
                for j in range(W):
                    for k in range(KH):
                        oh = i * sh - ph + k * dh
                        if not 0 <= oh < OH:
                            continue
                        for l in range(KW):  # noqa: E741
                            ow = j * sw - pw + l * dw
                            if 0 <= ow < OW:
                                y[n, g * Cog:(g + 1) * Cog, oh, ow] += x[n, c, i, j] * \
                                    weight[c, :, k, l]
    if bias is not None:
        y += bias[None, :, None, None]
    return y


def conv_transpose2d_backward_naive(dy, x, weight, stride=1, padding=0, output_padding=0,
                                    groups=1, dilation=1):
    """``(dx, dweight, dbias)`` of :func:`conv_transpose2d_naive` by the same index map: each
    (input pixel, tap) pair that reached ``y`` reads ``dy`` there."""
    pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
    (sh, sw), (ph, pw), (dh, dw) = (pair(v) for v in (stride, padding, dilation))
    N, C, H, W = x.shape
    _, Cog, KH, KW = weight.shape
    Cig = C // groups
    OH, OW = dy.shape[2:]
    dx = np.zeros_like(x)
    dwt = np.zeros_like(weight)
    for n in range(N):
        for c in range(C):
            g = c // Cig
            for i in range(H):
                for j in range(W):
                    for k in range(KH):
                        oh = i * sh - ph + k * dh
                        if not 0 <= oh < OH:
                            continue
                        for l in range(KW):  # noqa: E741
                            ow = j * sw - pw + l * dw
                            if 0 <= ow < OW:
                                d = dy[n, g * Cog:(g + 1) * Cog, oh, ow]
                                dx[n, c, i, j] += (d * weight[c, :, k, l]).sum()
                                dwt[c, :, k, l] += x[n, c, i, j] * d
    return dx, dwt, dy.sum(axis=(0, 2, 3))
