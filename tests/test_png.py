"""nbconv.png: the zlib PNG decoder against PIL (every filter type, grey, grey + alpha, RGB,
RGBA, palette, 16-bit), damaged and unsupported files as one clear PNGError, the writer, and
the resampling (torchvision's Resize/CenterCrop for evaluation, PIL's antialiased bilinear)."""
import struct
import zlib

import numpy as np
import pytest

from nbconv import png

PIL = pytest.importorskip("PIL.Image")


def encode(path, samples, ctype, depth=8, filters=(0, 1, 2, 3, 4), interlace=0, plte=None,
           idat_split=1):
    """A PNG of ``samples`` ((H, W, channels) uint8 or uint16), scanline ``y`` filtered with
    ``filters[y % len(filters)]`` (the filters written out from the specification)."""
    h = samples.shape[0]
    raw = samples.astype(">u2" if depth == 16 else np.uint8).tobytes()
    stride = len(raw) // h
    bpp = max(1, samples.shape[2] * depth // 8)
    lines, prior = [], bytes(stride)
    for y in range(h):
        cur = raw[y * stride:(y + 1) * stride]
        f = filters[y % len(filters)]
        out = bytearray(stride)
        for i in range(stride):
            a = cur[i - bpp] if i >= bpp else 0
            b = prior[i]
            c = prior[i - bpp] if i >= bpp else 0
            pred = [0, a, b, (a + b) // 2, png._paeth(a, b, c)][f]
            out[i] = (cur[i] - pred) & 0xFF
        lines.append(bytes([f]) + bytes(out))
        prior = cur
    data = zlib.compress(b"".join(lines))
    w = samples.shape[1]

    def chunk(kind, payload):
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))

    body = chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, interlace))
    if plte is not None:
        body += chunk(b"PLTE", plte.tobytes())
    k = -(-len(data) // idat_split)
    for i in range(0, len(data), k):
        body += chunk(b"IDAT", data[i:i + k])
    path.write_bytes(png.SIGNATURE + body + chunk(b"IEND", b""))
    return path


@pytest.fixture
def img(rng):
    return rng.integers(0, 256, size=(13, 17, 4), dtype=np.uint8)


@pytest.mark.parametrize("ctype,channels", [(0, 1), (2, 3), (4, 2), (6, 4)])
def test_every_filter_and_colour_type_decodes(tmp_path, img, ctype, channels):
    s = img[:, :, :channels]
    got = png.read_png(encode(tmp_path / "a.png", s, ctype, idat_split=3))
    assert got.dtype == np.uint8 and got.shape == (13, 17, 3)
    want = np.repeat(s[:, :, :1], 3, axis=2) if channels < 3 else s[:, :, :3]
    np.testing.assert_array_equal(got, want)


def test_sixteen_bit_samples_keep_their_high_byte(tmp_path, rng):
    s = rng.integers(0, 65536, size=(6, 5, 3), dtype=np.uint16)
    got = png.read_png(encode(tmp_path / "a.png", s, 2, depth=16))
    np.testing.assert_array_equal(got, (s >> 8).astype(np.uint8))


def test_palette_images(tmp_path, rng):
    palette = rng.integers(0, 256, size=(7, 3), dtype=np.uint8)
    idx = rng.integers(0, 7, size=(5, 9, 1), dtype=np.uint8)
    got = png.read_png(encode(tmp_path / "p.png", idx, 3, plte=palette))
    np.testing.assert_array_equal(got, palette[idx[:, :, 0]])
    with pytest.raises(png.PNGError, match="palette index 6 is past its 4 colours"):
        png.read_png(encode(tmp_path / "q.png", idx, 3, plte=palette[:4]))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P"])
def test_files_written_by_pil_read_as_pil_reads_them(tmp_path, rng, mode):
    """PIL picks a filter per scanline (its adaptive filtering)."""
    a = (np.add.outer(np.arange(40), np.arange(33))[:, :, None] * [3, 5, 7, 11]) % 256
    a = (a + rng.integers(0, 3, a.shape)).astype(np.uint8)
    im = PIL.fromarray(a, "RGBA")
    im = (im.convert("RGB") if mode == "P" else im).convert(mode)
    im.save(tmp_path / "x.png", optimize=True)
    want = np.asarray(PIL.open(tmp_path / "x.png").convert("RGB"))
    np.testing.assert_array_equal(png.read_png(tmp_path / "x.png"), want)


def test_write_png_round_trips(tmp_path, img):
    for a in (img, img[:, :, :3], img[:, :, 0]):
        png.write_png(tmp_path / "w.png", a)
        want = np.asarray(PIL.open(tmp_path / "w.png").convert("RGB"))
        got = png.read_png(tmp_path / "w.png")
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got, a[:, :, :3] if a.ndim == 3 else
                                      np.repeat(a[:, :, None], 3, axis=2))
    for bad in (img.astype(np.float32), img[:, :, :2], np.zeros((0, 3), np.uint8)):
        with pytest.raises(ValueError, match="uint8"):
            png.write_png(tmp_path / "bad.png", bad)


def test_damaged_and_unsupported_files_raise_one_clear_error(tmp_path, img):
    good = encode(tmp_path / "g.png", img[:, :, :3], 2).read_bytes()

    def check(data, words, name="b.png"):
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(png.PNGError, match=words) as e:
            png.read_png(p)
        assert str(p) in str(e.value)

    check(b"GIF89a" + good[6:], "is not a PNG file")
    check(good[:-20], "truncated")
    bad = bytearray(good)
    bad[60] ^= 0xFF   # inside IDAT's data
    check(bytes(bad), "CRC of its 'IDAT' chunk does not match")
    check(encode(tmp_path / "i.png", img[:, :, :3], 2, interlace=1).read_bytes(),
          "interlaced.*re-save it without interlacing")
    check(encode(tmp_path / "f.png", img[:, :, :3], 2, filters=(0,)).read_bytes()
          .replace(b"IHDR" + struct.pack(">II", 17, 13), b"IHDR" + struct.pack(">II", 17, 12)),
          "CRC")   # a header edited without its CRC
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    big = png.SIGNATURE + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(
        ">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    check(big + good[33:], "20000 x 20000 pixels, above the 100,000,000")
    grey4 = struct.pack(">IIBBBBB", 4, 4, 4, 0, 0, 0, 0)
    check(png.SIGNATURE + struct.pack(">I", 13) + b"IHDR" + grey4 + struct.pack(
        ">I", zlib.crc32(b"IHDR" + grey4) & 0xFFFFFFFF) + good[33:],
        "4-bit grey PNG.*re-save it as 8-bit RGB")
    # image data of the wrong length (too much: decompression stops early)
    short = encode(tmp_path / "s.png", img[:12, :, :3], 2).read_bytes()
    ihdr13 = struct.pack(">IIBBBBB", 17, 11, 8, 2, 0, 0, 0)
    check(short[:16] + ihdr13 + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr13) & 0xFFFFFFFF)
          + short[33:], "holds .* or more for 17 x 11 pixels")


def test_resize_matches_pil_antialiased_bilinear(rng):
    a = rng.uniform(0, 255, size=(45, 70)).astype(np.float32)
    for size in (32, 20, 90):
        got = png.resize_shorter(a[:, :, None], size)[:, :, 0]
        ow, oh = int(size * 70 / 45), size
        want = np.asarray(PIL.fromarray(a, "F").resize((ow, oh), PIL.BILINEAR))
        assert got.shape == want.shape == (oh, ow)
        np.testing.assert_allclose(got, want, atol=1e-2)
    tall = png.resize_shorter(np.zeros((70, 45, 3)), 32)
    assert tall.shape == (49, 32, 3)
    same = np.ones((32, 40, 3))
    assert png.resize_shorter(same, 32) is not None and png.resize_shorter(same, 32).shape == \
        (32, 40, 3)


def test_center_crop_is_torchvisions():
    a = np.arange(7 * 10).reshape(7, 10, 1)
    np.testing.assert_array_equal(png.center_crop(a, 4)[:, :, 0], a[2:6, 3:7, 0])   # round
    with pytest.raises(ValueError, match="smaller than the 8 x 8 crop"):
        png.center_crop(a, 8)
