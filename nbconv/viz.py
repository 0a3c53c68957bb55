"""PNG pictures without plotting libraries: a tiny PNG writer and two images built on numpy.

- :func:`write_png` writes an RGB8 ``(H, W, 3)`` or gray ``(H, W)`` uint8 array (zlib + struct).
- :func:`filter_grid` tiles conv weights ``(F, C, KH, KW)`` into one image, each filter scaled
  to [0, 255] on its own, enlarged ``scale`` times, separated by ``border``-pixel lines.
- :func:`curves_image` draws training curves: the loss on the left panel, the train (blue), val
  (orange) and test (green) accuracy on the right panel (y from 0 to 1, light grid at 0.1 steps).
"""
import struct
import zlib

import numpy as np

from ._io import atomic_write

__all__ = ["write_png", "read_png", "filter_grid", "curves_image", "save_filters", "save_curves"]

COLORS = {"loss": (200, 30, 30), "train_accuracy": (31, 119, 180),
          "val_accuracy": (255, 127, 14), "test_accuracy": (44, 160, 44)}


def _chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_bytes(img):
    """The PNG file of uint8 ``img`` ``(H, W)`` (gray) or ``(H, W, 3)`` (RGB)."""
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise ValueError(f"img must be uint8 (H, W) or (H, W, 3), got {img.dtype} {img.shape}")
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"img must not be empty, got shape {img.shape}")
    h, w = img.shape[:2]
    color_type = 2 if img.ndim == 3 else 0
    rows = np.ascontiguousarray(img).reshape(h, -1)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()  # filter 0
    ihdr = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw, 9))
            + _chunk(b"IEND", b""))


def write_png(path, img):
    """Write uint8 ``img`` (``(H, W)`` gray or ``(H, W, 3)`` RGB) to ``path`` atomically."""
    atomic_write(path, png_bytes(img))


def read_png(path):
    """Read back a PNG written by :func:`write_png` (8-bit, no interlace, filter 0 rows only)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG file")
    pos, idat, hdr = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0] != zlib.crc32(kind + body):
            raise ValueError(f"{path}: bad CRC in chunk {kind!r}")
        if kind == b"IHDR":
            hdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    w, h, _, color_type = hdr[:4]
    ch = 3 if color_type == 2 else 1
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + w * ch)
    if rows[:, 0].any():
        raise ValueError(f"{path}: only filter type 0 is supported")
    img = rows[:, 1:].reshape(h, w, ch)
    return img if ch == 3 else img[:, :, 0]


# ---- filter grid ------------------------------------------------------------------------------

def filter_grid(weight, scale=4, border=1, ncols=None):
    """Tile ``weight (F, C, KH, KW)`` into a uint8 image.

    C = 3 gives RGB filters, other C the mean over channels in gray. Each filter is mapped
    linearly from its own [min, max] to [0, 255], enlarged by ``scale`` (nearest neighbour) and
    placed on a ``rows x ncols`` grid (``ncols`` default ``ceil(sqrt(F))``) with ``border``
    white pixels around every tile. Size: ``rows * (KH*scale + border) + border`` by
    ``ncols * (KW*scale + border) + border``.
    """
    w = np.asarray(weight, np.float64)
    if w.ndim != 4:
        raise ValueError(f"weight must be (F, C, KH, KW), got shape {w.shape}")
    f, c, kh, kw = w.shape
    if c != 3:
        w = np.repeat(w.mean(axis=1, keepdims=True), 3, axis=1)
    lo = w.min(axis=(1, 2, 3), keepdims=True)
    span = w.max(axis=(1, 2, 3), keepdims=True) - lo
    tiles = (w - lo) / np.where(span > 0, span, 1.0)
    tiles = np.round(255 * tiles).astype(np.uint8).transpose(0, 2, 3, 1)  # (F, KH, KW, 3)
    tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    ncols = ncols or int(np.ceil(np.sqrt(f)))
    nrows = -(-f // ncols)
    th, tw = kh * scale, kw * scale
    img = np.full((nrows * (th + border) + border, ncols * (tw + border) + border, 3), 255, np.uint8)
    for i in range(f):
        r, q = divmod(i, ncols)
        y0, x0 = border + r * (th + border), border + q * (tw + border)
        img[y0:y0 + th, x0:x0 + tw] = tiles[i]
    return img


def save_filters(path, weight, scale=4, border=1):
    """:func:`filter_grid` of ``weight (F, C, KH, KW)`` written as a PNG."""
    write_png(path, filter_grid(weight, scale, border))


# ---- curves -----------------------------------------------------------------------------------

def _line(img, xs, ys, color, width=2):
    """Draw the polyline through pixel coordinates ``(xs, ys)`` onto ``img`` (H, W, 3)."""
    h, w = img.shape[:2]
    for x0, y0, x1, y1 in zip(xs[:-1], ys[:-1], xs[1:], ys[1:]):
        n = int(max(abs(x1 - x0), abs(y1 - y0))) * 2 + 2
        px = np.round(np.linspace(x0, x1, n)).astype(int)
        py = np.round(np.linspace(y0, y1, n)).astype(int)
        for dy in range(width):
            for dx in range(width):
                qx = np.clip(px + dx - width // 2, 0, w - 1)
                qy = np.clip(py + dy - width // 2, 0, h - 1)
                img[qy, qx] = color
    if len(xs) == 1:  # one epoch: a dot
        x, y = int(round(xs[0])), int(round(ys[0]))
        img[max(y - 2, 0):y + 3, max(x - 2, 0):x + 3] = color


def _panel(img, x0, y0, pw, ph, series, ymin, ymax, grid_step):
    """Axes (black), horizontal grid lines every ``grid_step`` (light gray), and ``series`` (a
    list of ``(values, color)``) scaled to the panel's box."""
    for g in np.arange(ymin, ymax + 1e-9, grid_step):
        y = int(round(y0 + ph - (g - ymin) / (ymax - ymin) * ph))
        img[y, x0:x0 + pw] = (225, 225, 225)
    n = max(len(v) for v, _ in series)
    for v, color in series:
        v = np.asarray(v, np.float64)
        if not len(v):
            continue
        xs = x0 + (np.arange(len(v)) / max(n - 1, 1)) * pw
        ys = y0 + ph - (np.clip(v, ymin, ymax) - ymin) / (ymax - ymin) * ph
        _line(img, xs, ys, color)
    img[y0:y0 + ph + 1, x0:x0 + 2] = 0           # y axis
    img[y0 + ph:y0 + ph + 2, x0:x0 + pw + 1] = 0  # x axis
    for k in range(n):  # a tick per epoch on the x axis
        x = int(round(x0 + k / max(n - 1, 1) * pw))
        img[y0 + ph:y0 + ph + 6, max(x - 1, 0):x + 1] = 0


def curves_image(history, width=640, height=280):
    """An RGB uint8 ``(height, width, 3)`` image of ``history`` (a list of per-epoch dicts with
    ``loss`` and any of ``train_accuracy``/``val_accuracy``/``test_accuracy``; missing or None
    values are skipped). Left: loss from 0 to its maximum. Right: accuracies from 0 to 1."""
    img = np.full((height, width, 3), 255, np.uint8)
    m = 20
    pw, ph = width // 2 - 2 * m, height - 2 * m
    loss = [e["loss"] for e in history if e.get("loss") is not None]
    top = max(loss) * 1.05 if loss and max(loss) > 0 else 1.0
    step = 10 ** np.floor(np.log10(top)) if top > 0 else 1.0
    _panel(img, m, m, pw, ph, [(loss, COLORS["loss"])], 0.0, top, step / 2 if top / step < 4 else step)
    acc = [([e[k] for e in history if e.get(k) is not None], COLORS[k])
           for k in ("train_accuracy", "val_accuracy", "test_accuracy")]
    _panel(img, width // 2 + m, m, pw, ph, acc, 0.0, 1.0, 0.1)
    return img


def save_curves(path, history, width=640, height=280):
    """:func:`curves_image` of ``history`` written as a PNG."""
    write_png(path, curves_image(history, width, height))
