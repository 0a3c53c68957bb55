"""PNG images in and out with the standard library's zlib (no imaging package needed), and the
resampling :mod:`nbconv.predict` feeds a network with.

- :func:`read_png` decodes non-interlaced PNGs of 8 or 16 bits per sample, grey, grey + alpha,
  RGB, RGBA and 8-bit palette images, into ``uint8 (H, W, 3)`` RGB (16-bit samples keep their
  high byte, grey is repeated over the three channels, alpha is dropped as PIL's
  ``convert("RGB")`` does). Every chunk's CRC is checked; a file that is not a PNG, is damaged
  or truncated raises :class:`PNGError` (a ``ValueError``) naming the file and the fault, and a
  kind it does not decode (interlaced, 1/2/4-bit grey) raises :class:`PNGError` saying how to
  re-save it. Images over :data:`MAX_PIXELS` are refused before anything is decompressed.
- :func:`write_png` writes ``uint8 (H, W)`` grey, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA
  images (filter 0, zlib level 6), atomically.
- :func:`resize_shorter` and :func:`center_crop` (``(H, W, C)`` float arrays): torchvision's
  ``Resize(size)`` and ``CenterCrop(size)`` for evaluation: a triangle (bilinear) filter widened
  by the scale when shrinking, as PIL's antialiased bilinear resampling.
"""
import struct
import zlib

import numpy as np

from ._io import atomic_write

__all__ = ["PNGError", "read_png", "write_png", "resize_shorter", "center_crop", "MAX_PIXELS"]

SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: the largest image read_png decodes (width * height): 100 megapixels
MAX_PIXELS = 100_000_000
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}   # colour type -> samples per pixel
_KINDS = {0: "grey", 2: "RGB", 3: "palette", 4: "grey + alpha", 6: "RGBA"}


class PNGError(ValueError):
    """A file that is not a PNG nbconv can read (the message names the file and why)."""


def _chunks(data, path):
    """``[(type, payload)]`` of the PNG bytes ``data``, CRCs checked, up to ``IEND``."""
    if data[:8] != SIGNATURE:
        raise PNGError(f"{path} is not a PNG file (its first bytes are {data[:8]!r})")
    out, pos = [], 8
    while True:
        if pos + 8 > len(data):
            raise PNGError(f"{path} is truncated: it ends before its IEND chunk")
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        if end > len(data):
            raise PNGError(f"{path} is truncated: chunk {kind!r} claims {length} bytes, the "
                           f"file ends {len(data) - pos - 12} bytes later")
        payload = data[pos + 8:pos + 8 + length]
        crc, = struct.unpack(">I", data[pos + 8 + length:end])
        if zlib.crc32(kind + payload) & 0xFFFFFFFF != crc:
            raise PNGError(f"{path} is damaged: the CRC of its {kind.decode('latin-1')!r} "
                           f"chunk does not match")
        out.append((kind, payload))
        pos = end
        if kind == b"IEND":
            return out


def _header(chunks, path):
    if not chunks or chunks[0][0] != b"IHDR" or len(chunks[0][1]) != 13:
        raise PNGError(f"{path} is damaged: it does not start with a 13-byte IHDR chunk")
    w, h, depth, ctype, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    if ctype not in _CHANNELS or comp != 0 or filt != 0 or interlace not in (0, 1):
        raise PNGError(f"{path} is damaged: IHDR holds colour type {ctype}, compression "
                       f"{comp}, filter {filt}, interlace {interlace}")
    if w == 0 or h == 0:
        raise PNGError(f"{path} is damaged: its size is {w} x {h}")
    if w * h > MAX_PIXELS:
        raise PNGError(f"{path} is {w} x {h} pixels, above the {MAX_PIXELS:,} read_png "
                       f"decodes; shrink it first")
    if interlace:
        raise PNGError(f"{path} is an interlaced (Adam7) PNG, which read_png does not decode; "
                       f"re-save it without interlacing")
    ok = depth in (8, 16) if ctype != 3 else depth == 8
    if not ok:
        raise PNGError(f"{path} is a {depth}-bit {_KINDS[ctype]} PNG; read_png decodes 8- and "
                       f"16-bit grey, grey + alpha, RGB and RGBA and 8-bit palette images: "
                       f"re-save it as 8-bit RGB")
    return w, h, depth, ctype


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _unfilter(raw, h, stride, bpp, path):
    """The image bytes ``(h, stride)`` from the filtered scanlines ``raw``."""
    rows = np.frombuffer(raw, np.uint8).reshape(h, stride + 1)
    out = np.zeros((h, stride), np.uint8)
    prior = np.zeros(stride, np.uint8)
    for y in range(h):
        kind, line = rows[y, 0], rows[y, 1:]
        if kind == 0:
            cur = line.copy()
        elif kind == 1:   # Sub: a running sum along each sample position, mod 256
            cur = np.cumsum(line.reshape(-1, bpp), axis=0, dtype=np.uint8).reshape(-1)
        elif kind == 2:   # Up
            cur = line + prior
        elif kind in (3, 4):   # Average, Paeth: each byte depends on the one before
            cur = bytearray(stride)
            lb, pb = line.tobytes(), prior.tobytes()
            for i in range(stride):
                a = cur[i - bpp] if i >= bpp else 0
                if kind == 3:
                    cur[i] = (lb[i] + ((a + pb[i]) >> 1)) & 0xFF
                else:
                    c = pb[i - bpp] if i >= bpp else 0
                    cur[i] = (lb[i] + _paeth(a, pb[i], c)) & 0xFF
            cur = np.frombuffer(bytes(cur), np.uint8)
        else:
            raise PNGError(f"{path} is damaged: scanline {y} has filter type {kind}")
        out[y] = cur
        prior = out[y]
    return out


def read_png(path):
    """The image in the PNG file ``path`` as ``uint8 (H, W, 3)`` RGB (see the module doc)."""
    with open(path, "rb") as f:
        data = f.read()
    chunks = _chunks(data, path)
    w, h, depth, ctype = _header(chunks, path)
    channels = _CHANNELS[ctype]
    bpp = channels * depth // 8
    stride = w * bpp
    expected = h * (stride + 1)
    d = zlib.decompressobj()
    try:
        raw = d.decompress(b"".join(p for k, p in chunks if k == b"IDAT"), expected + 1)
    except zlib.error as e:
        raise PNGError(f"{path} is damaged: its image data does not decompress ({e})") from None
    if len(raw) != expected:
        raise PNGError(f"{path} is damaged: its image data holds {len(raw)} bytes"
                       f"{' or more' if len(raw) > expected else ''} for {w} x {h} pixels "
                       f"({expected} expected)")
    img = _unfilter(raw, h, stride, bpp, path).reshape(h, w, channels * depth // 8)
    if depth == 16:
        img = img[:, :, 0::2]   # the high byte of each big-endian sample
    if ctype == 3:
        plte = [p for k, p in chunks if k == b"PLTE"]
        if not plte or len(plte[0]) % 3 or not plte[0]:
            raise PNGError(f"{path} is damaged: a palette image without a valid PLTE chunk")
        palette = np.frombuffer(plte[0], np.uint8).reshape(-1, 3)
        idx = img[:, :, 0]
        if idx.max() >= len(palette):
            raise PNGError(f"{path} is damaged: a pixel's palette index {idx.max()} is past "
                           f"its {len(palette)} colours")
        return palette[idx]
    if ctype in (0, 4):
        return np.repeat(img[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


def write_png(path, image):
    """Write ``image`` (``uint8 (H, W)`` grey, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA) to
    ``path`` as a PNG, atomically."""
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) \
            or 0 in a.shape:
        raise ValueError(f"image must be uint8 (H, W), (H, W, 3) or (H, W, 4), got {a.dtype} "
                         f"{a.shape}")
    h, w = a.shape[:2]
    ctype = 0 if a.ndim == 2 else (2 if a.shape[2] == 3 else 6)
    rows = np.ascontiguousarray(a).reshape(h, -1)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()

    def chunk(kind, payload):
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))

    data = (SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, ctype, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
    atomic_write(path, data)


def _triangle(n_in, n_out):
    """``(n_out, n_in)`` weights: output pixel centres mapped onto the input, a triangle filter
    of radius ``max(scale, 1)`` input pixels, each row summing to 1."""
    scale = n_in / n_out
    radius = max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale
    x = np.arange(n_in) + 0.5
    w = np.maximum(0.0, 1.0 - np.abs(x[None, :] - centres[:, None]) / radius)
    return w / w.sum(axis=1, keepdims=True)


def resize_shorter(image, size):
    """``image (H, W, C)`` (any numeric dtype) resized so that its shorter side is ``size``
    (the other keeps the aspect ratio, rounded down as torchvision does), float64."""
    a = np.asarray(image, np.float64)
    h, w = a.shape[:2]
    if h <= w:
        oh, ow = size, max(1, int(size * w / h))
    else:
        oh, ow = max(1, int(size * h / w)), size
    if (oh, ow) == (h, w):
        return a
    wh, ww = _triangle(h, oh), _triangle(w, ow)
    return np.einsum("ph,hwc,qw->pqc", wh, a, ww, optimize=True)


def center_crop(image, size):
    """The central ``size x size`` window of ``image (H, W, C)`` (H, W >= size)."""
    h, w = image.shape[:2]
    if h < size or w < size:
        raise ValueError(f"image {h} x {w} is smaller than the {size} x {size} crop")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return image[top:top + size, left:left + size]
