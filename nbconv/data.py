"""CIFAR-10: read the official python batches, download them, normalise, split and batch.

The official ``cifar-10-python.tar.gz`` unpacks to ``cifar-10-batches-py/`` holding
``data_batch_1`` ... ``data_batch_5`` and ``test_batch`` (pickled dicts with bytes keys
``b'data'``: uint8 ``(N, 3072)`` = 1024 R, 1024 G, 1024 B values of a row-major 32x32 image, and
``b'labels'``: N ints in 0..9) plus ``batches.meta`` (class names). :func:`load_cifar10` reads such
a directory whatever its row counts (they come from ``b'data'``, never from ``batches.meta``), so
it reads the full data set, the shared subset and the sample bundled in this package alike.

Images come out as ``(N, 3, 32, 32)`` uint8 arrays (NCHW) and labels as ``(N,)`` int64.
:func:`channel_stats` / :func:`normalize` turn them into float arrays with zero mean and unit
variance per channel (statistics from the training images only); :class:`BatchIterator` shuffles
and batches, optionally with a random crop (zero padding, i.e. the channel mean after
normalisation) and a random horizontal flip.
"""
import hashlib
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request

import numpy as np

from . import _unpickle
from ._checks import check_dtype, check_int
from ._io import atomic_write

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
BATCHES_DIR = "cifar-10-batches-py"
#: the sample bundled with the package (official format, a class-balanced part of the data)
SAMPLE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sample", BATCHES_DIR)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck")
IMAGE_SHAPE = (3, 32, 32)

__all__ = ["URL", "MD5", "SAMPLE_DIR", "CLASSES", "load_batch", "save_batch", "load_cifar10",
           "download", "channel_stats", "normalize", "split_validation", "prepare",
           "prepare_loaded", "BatchIterator"]


# ---- reading and writing the official format -----------------------------------------------

def load_batch(path):
    """Read one official python batch: ``(images (N, 3, 32, 32) uint8, labels (N,) int64)``.

    ``N`` is the number of rows of ``b'data'``; ``b'labels'`` must hold ``N`` integers in
    0..9 (a list of ints or an integer array; floats and bools are refused). The file is read
    with a restricted unpickler (:mod:`nbconv._unpickle`) that builds dicts, lists, strings,
    numbers and numeric NumPy arrays only, each backed by bytes that are in the file: a file
    naming any other global (a crafted pickle that would run code) is refused before anything
    runs, and one whose arrays claim more data than it holds (a zero-stride view, an array
    without its bytes) is refused before anything is allocated. A malformed or refused file
    raises ``ValueError`` naming it.
    """
    d = _unpickle.load(path, "a CIFAR-10 python batch")
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise ValueError(f"{path} is not a CIFAR-10 python batch (no b'data'/b'labels' keys)")
    data = d[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        raise ValueError(f"{path}: b'data' must be a uint8 (N, 3072) array, got "
                         f"{getattr(data, 'dtype', type(data).__name__)} "
                         f"{getattr(data, 'shape', '')}")
    labels = _labels(d[b"labels"], path)
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: b'labels' has {labels.size} entries for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: labels must be in 0..9, got {labels.min()}..{labels.max()}")
    return data.reshape(-1, *IMAGE_SHAPE), labels.astype(np.int64)


def _labels(v, path):
    """``b'labels'`` as a 1-d integer array: a list/tuple of ints (not bools) or an integer
    ndarray; anything else (floats such as ``0.5``, strings, nested lists) is a ``ValueError``."""
    if isinstance(v, (list, tuple)):
        bad = [x for x in v if type(x) is not int and not isinstance(x, np.integer)]
        if bad:
            raise ValueError(f"{path}: b'labels' must hold integers 0..9, got {bad[0]!r} "
                             f"({type(bad[0]).__name__})")
        return np.array(v, dtype=np.int64).reshape(len(v))
    if isinstance(v, np.ndarray) and v.dtype.kind in "iu" and v.ndim == 1:
        return v
    raise ValueError(f"{path}: b'labels' must be a list of integers 0..9, got "
                     f"{getattr(v, 'dtype', type(v).__name__)}")


def _pickle_py2(d):
    """The bytes of ``d`` pickled exactly as the official (Python 2) batches are: protocol 2,
    byte-string keys, the ndarray as ``numpy.core.multiarray._reconstruct`` + raw bytes."""
    import struct

    def s(b):  # a Python 2 str (bytes): SHORT_BINSTRING / BINSTRING
        return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<I", len(b)) + b)

    def i(v):  # BININT1 / BININT2 / BININT
        if 0 <= v < 256:
            return b"K" + bytes([v])
        if 0 <= v < 65536:
            return b"M" + struct.pack("<H", v)
        return b"J" + struct.pack("<i", v)

    def value(v):
        if isinstance(v, bytes):
            return s(v)
        if isinstance(v, list):  # EMPTY_LIST, then MARK items APPENDS per 1000 items
            return b"]" + b"".join(b"(" + b"".join(value(x) for x in v[k:k + 1000]) + b"e"
                                   for k in range(0, len(v), 1000))
        if isinstance(v, np.ndarray):
            a = np.ascontiguousarray(v, dtype=np.uint8)
            return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + i(0) + b"\x85"
                    + s(b"b") + b"\x87R(" + i(1) + b"".join(i(n) for n in a.shape)
                    + (b"\x86" if a.ndim == 2 else b"\x85") + b"cnumpy\ndtype\n" + s(b"u1") + i(0)
                    + i(1) + b"\x87R(" + i(3) + s(b"|") + b"NNN" + i(-1) + i(-1) + i(0) + b"tb\x89"
                    + s(a.tobytes()) + b"tb")
        return i(int(v))

    body = b"".join(value(k) + value(v) for k, v in d.items())
    return b"\x80\x02}(" + body + b"u."


def save_batch(path, images, labels, batch_label, filenames=None):
    """Write ``images (N, 3, 32, 32) uint8`` and ``labels (N,)`` as an official python batch
    (byte for byte the layout of the official files: a Python 2 pickle, protocol 2, keys
    ``b'batch_label'``, ``b'labels'``, ``b'data'`` ``(N, 3072)``, ``b'filenames'``), atomically."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"images must be uint8 (N, 3, 32, 32), got {images.dtype} {images.shape}")
    n = images.shape[0]
    if len(labels) != n:
        raise ValueError(f"labels has {len(labels)} entries for {n} images")
    if filenames is None:
        filenames = [f"image_{i:05d}.png".encode() for i in range(n)]
    d = {b"batch_label": batch_label.encode() if isinstance(batch_label, str) else batch_label,
         b"labels": [int(v) for v in labels],
         b"data": images.reshape(n, 3072),
         b"filenames": [f.encode() if isinstance(f, str) else f for f in filenames]}
    payload = _pickle_py2(d)
    atomic_write(path, payload)


#: the training batch names: ``data_batch_1`` .. ``data_batch_5``, ASCII digits, no leading zero
_TRAIN_NAME = re.compile(r"data_batch_[1-5]", re.ASCII)


def _train_batch_files(data_dir):
    names = [n for n in os.listdir(data_dir) if _TRAIN_NAME.fullmatch(n)]
    return [os.path.join(data_dir, n) for n in sorted(names)]


def _load_meta(path):
    """The class names of ``batches.meta`` (a dict whose ``b'label_names'`` lists 10 names), or
    ``None`` when it has none; a malformed or refused file is a ``ValueError`` naming it."""
    d = _unpickle.load(path, "a CIFAR-10 batches.meta file")
    if not isinstance(d, dict):
        raise ValueError(f"{path} is not a CIFAR-10 batches.meta file (a {type(d).__name__}, "
                         f"not a dict)")
    names = d.get(b"label_names", d.get("label_names"))
    if names is None:
        return None
    if not isinstance(names, (list, tuple)) or len(names) != len(CLASSES) \
            or not all(isinstance(n, (bytes, str)) for n in names):
        raise ValueError(f"{path}: b'label_names' must be a list of {len(CLASSES)} names, got "
                         f"{names!r:.200}")
    try:
        return tuple(n.decode() if isinstance(n, bytes) else n for n in names)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: b'label_names' is not UTF-8 text ({e})") from e


def load_cifar10(data_dir=None):
    """Read a ``cifar-10-batches-py`` directory (default: the bundled sample).

    ``data_dir`` may also be its parent (where the tarball was unpacked). Returns a dict with
    ``x_train (N, 3, 32, 32) uint8``, ``y_train (N,) int64``, ``x_test``, ``y_test`` and
    ``classes`` (names, from ``batches.meta`` when present). Training batches are the files
    ``data_batch_1`` .. ``data_batch_5`` present (exactly these names), in that order. Every file
    is read with a restricted unpickler (see :func:`load_batch`); a malformed one raises
    ``ValueError`` naming it.
    """
    data_dir = os.fspath(SAMPLE_DIR if data_dir is None else data_dir)
    if os.path.isdir(os.path.join(data_dir, BATCHES_DIR)):
        data_dir = os.path.join(data_dir, BATCHES_DIR)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data_dir {data_dir!r} is not a directory; point it at a "
                                f"'{BATCHES_DIR}' directory or download the data set first")
    files = _train_batch_files(data_dir)
    test_file = os.path.join(data_dir, "test_batch")
    if not files or not os.path.isfile(test_file):
        raise FileNotFoundError(f"data_dir {data_dir!r} must hold data_batch_1..5 and test_batch "
                                f"(the official CIFAR-10 python format), found "
                                f"{sorted(os.listdir(data_dir))}")
    parts = [load_batch(p) for p in files]
    x_test, y_test = load_batch(test_file)
    classes = CLASSES
    meta = os.path.join(data_dir, "batches.meta")
    if os.path.isfile(meta):
        classes = _load_meta(meta) or classes
    return dict(x_train=np.concatenate([p[0] for p in parts]),
                y_train=np.concatenate([p[1] for p in parts]),
                x_test=x_test, y_test=y_test, classes=classes)


# ---- download ---------------------------------------------------------------------------------

def _md5(path, chunk=1 << 20):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def download(dest, url=URL, md5=MD5, progress=True, timeout=30):
    """Download the official tarball into directory ``dest``, verify its MD5 and unpack it.

    Returns the path of ``dest/cifar-10-batches-py``. Nothing is fetched if that directory
    already holds the data. The tarball is streamed into a temp file with a tqdm progress bar,
    checked against ``md5`` and only then renamed to ``dest/cifar-10-python.tar.gz``; it is
    unpacked into a temp directory that is renamed into place. Errors: ``ConnectionError`` when
    the URL cannot be reached (e.g. offline), ``ValueError`` on an MD5 mismatch (the bad file
    is deleted).
    """
    from tqdm.auto import tqdm

    dest = os.path.abspath(os.fspath(dest))
    os.makedirs(dest, exist_ok=True)
    out_dir = os.path.join(dest, BATCHES_DIR)
    if os.path.isfile(os.path.join(out_dir, "test_batch")):
        return out_dir
    tarball = os.path.join(dest, os.path.basename(url.split("?")[0]) or "cifar-10-python.tar.gz")
    if not (os.path.isfile(tarball) and _md5(tarball) == md5):
        fd, tmp = tempfile.mkstemp(prefix=".download.", suffix=".tmp", dir=dest)
        try:
            with os.fdopen(fd, "wb") as f:
                try:
                    resp = urllib.request.urlopen(url, timeout=timeout)
                except (urllib.error.URLError, OSError) as e:
                    raise ConnectionError(
                        f"cannot download CIFAR-10 from {url} ({e}); this machine may be offline. "
                        f"Copy the extracted '{BATCHES_DIR}' directory here by hand and pass it "
                        f"as data_dir (or --data-dir), or use the bundled sample") from e
                with resp:
                    total = int(resp.headers.get("Content-Length") or 0) or None
                    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                              desc="cifar-10-python.tar.gz", disable=not progress) as bar:
                        for block in iter(lambda: resp.read(1 << 16), b""):
                            f.write(block)
                            bar.update(len(block))
            got = _md5(tmp)
            if got != md5:
                raise ValueError(f"MD5 of the file downloaded from {url} is {got}, expected {md5} "
                                 f"(corrupted or incomplete download); it was deleted")
            os.replace(tmp, tarball)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    tmp_dir = tempfile.mkdtemp(prefix=".extract.", dir=dest)
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp_dir, filter="data")
            else:  # pragma: no cover - Python without extraction filters
                tar.extractall(tmp_dir)
        src = os.path.join(tmp_dir, BATCHES_DIR)
        if not os.path.isdir(src):
            raise ValueError(f"{tarball} does not contain '{BATCHES_DIR}/'")
        if os.path.isdir(out_dir):
            shutil.rmtree(out_dir)
        os.replace(src, out_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out_dir


# ---- preprocessing ----------------------------------------------------------------------------

def channel_stats(x):
    """Per-channel mean and standard deviation of ``x (N, C, H, W)`` (uint8 images are scaled to
    [0, 1] first), as float64 ``(C,)`` arrays."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x must be (N, C, H, W), got shape {x.shape}")
    xf = x.astype(np.float64) / 255.0 if x.dtype == np.uint8 else x.astype(np.float64)
    return xf.mean(axis=(0, 2, 3)), xf.std(axis=(0, 2, 3))


def normalize(x, mean, std, dtype=np.float32):
    """``(x / 255 - mean[c]) / std[c]`` for uint8 ``x (N, C, H, W)`` (without the ``/ 255`` for
    float ``x``), as a new C-contiguous array of ``dtype``."""
    dtype = check_dtype(dtype)
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x must be (N, C, H, W), got shape {x.shape}")
    mean = np.asarray(mean, np.float64).reshape(1, -1, 1, 1)
    std = np.asarray(std, np.float64).reshape(1, -1, 1, 1)
    if mean.size != x.shape[1] or std.size != x.shape[1]:
        raise ValueError(f"mean/std must have one value per channel ({x.shape[1]}), got "
                         f"{mean.size} and {std.size}")
    xf = x.astype(np.float64) / 255.0 if x.dtype == np.uint8 else x.astype(np.float64)
    return np.ascontiguousarray(((xf - mean) / std).astype(dtype))


def split_validation(x, y, val_size, seed=0):
    """Hold out ``val_size`` images (an int, or a fraction in (0, 1)) chosen at random with
    ``seed``: returns ``(x_train, y_train, x_val, y_val)``; the order of each part is kept."""
    n = len(x)
    if isinstance(val_size, float):
        if not 0.0 <= val_size < 1.0:
            raise ValueError(f"val_size as a fraction must be in [0, 1), got {val_size}")
        val_size = int(round(val_size * n))
    val_size = check_int(val_size, "val_size", 0)
    if val_size >= n:
        raise ValueError(f"val_size ({val_size}) must be smaller than the number of images ({n})")
    if len(y) != n:
        raise ValueError(f"x has {n} images but y has {len(y)} labels")
    is_val = np.zeros(n, bool)
    is_val[np.random.default_rng(seed).permutation(n)[:val_size]] = True
    return x[~is_val], y[~is_val], x[is_val], y[is_val]


def prepare(data_dir=None, val_size=0.1, dtype=np.float32, seed=0):
    """Load, split and normalise: a dict with float ``x_train``, ``x_val``, ``x_test`` of
    ``dtype`` (``(N, 3, 32, 32)``), int64 labels ``y_*``, ``mean``/``std`` (from the training
    part only) and ``classes``."""
    return prepare_loaded(load_cifar10(data_dir), val_size, dtype, seed)


def prepare_loaded(raw, val_size=0.1, dtype=np.float32, seed=0):
    """:func:`prepare` of data already read by :func:`load_cifar10` (``raw``), so that a caller
    can tell a loading error from a ``val_size`` the data cannot hold (``ValueError``)."""
    x_tr, y_tr, x_val, y_val = split_validation(raw["x_train"], raw["y_train"], val_size, seed)
    mean, std = channel_stats(x_tr)
    return dict(x_train=normalize(x_tr, mean, std, dtype), y_train=y_tr,
                x_val=normalize(x_val, mean, std, dtype), y_val=y_val,
                x_test=normalize(raw["x_test"], mean, std, dtype), y_test=raw["y_test"],
                mean=mean, std=std, classes=raw["classes"])


# ---- batching ---------------------------------------------------------------------------------

class BatchIterator:
    """Iterate over ``(x_batch (B, C, H, W), y_batch (B,))`` in a fresh random order each pass.

    ``shuffle``: permute each epoch with ``self.rng`` (a ``numpy.random.Generator`` from
    ``seed``; its state is what a checkpoint saves). ``crop``: pad each image by ``crop`` zeros
    on every side and cut a random ``H x W`` window. ``flip``: mirror each image left-right with
    probability 1/2. ``drop_last``: skip a final partial batch. Batches are new arrays; the
    data set is never modified.
    """

    def __init__(self, x, y, batch_size, shuffle=True, crop=0, flip=False, drop_last=False,
                 seed=None):
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} images but y has {len(y)} labels")
        self.x, self.y = x, y
        self.batch_size = check_int(batch_size, "batch_size", 1)
        self.crop = check_int(crop, "crop", 0)
        self.shuffle, self.flip, self.drop_last = bool(shuffle), bool(flip), bool(drop_last)
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        n, b = len(self.x), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self):
        n = len(self.x)
        order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        for k in range(len(self)):
            idx = order[k * self.batch_size:(k + 1) * self.batch_size]
            yield self._augment(self.x[idx]), self.y[idx]

    def _augment(self, xb):
        if self.crop:
            p = self.crop
            _, _, h, w = xb.shape
            padded = np.pad(xb, ((0, 0), (0, 0), (p, p), (p, p)))
            offs = self.rng.integers(0, 2 * p + 1, size=(len(xb), 2))
            xb = np.stack([padded[i, :, a:a + h, b:b + w] for i, (a, b) in enumerate(offs)])
        if self.flip:
            mirror = self.rng.random(len(xb)) < 0.5
            xb[mirror] = xb[mirror, :, :, ::-1]
        return np.ascontiguousarray(xb)
