"""nbconv.data: the official-format loader, the bundled sample, download, preprocessing, batches."""
import hashlib
import os
import pickle
import tarfile

import numpy as np
import pytest

from nbconv import data as D

from helpers import SUBSET, SUBSET_ABSENT
need_subset = pytest.mark.skipif(not os.path.isdir(SUBSET), reason=SUBSET_ABSENT)


@pytest.fixture(scope="module")
def sample():
    return D.load_cifar10()


def _images(rng, n):
    return rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)


# ---- the official format ------------------------------------------------------------------------

def test_batch_round_trip(tmp_path, rng):
    x, y = _images(rng, 7), rng.integers(0, 10, 7)
    D.save_batch(tmp_path / "data_batch_1", x, y, "training batch 1 of 5")
    with open(tmp_path / "data_batch_1", "rb") as f:  # readable the official way
        d = pickle.load(f, encoding="bytes")
    assert set(d) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert d[b"data"].dtype == np.uint8 and d[b"data"].shape == (7, 3072)
    # 1024 R, then 1024 G, then 1024 B values, each a row-major 32x32 plane
    np.testing.assert_array_equal(d[b"data"][3, 1024:2048].reshape(32, 32), x[3, 1])
    assert d[b"labels"] == [int(v) for v in y]
    x2, y2 = D.load_batch(tmp_path / "data_batch_1")
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)
    assert y2.dtype == np.int64 and x2.shape == (7, 3, 32, 32)


@need_subset
def test_writer_reproduces_official_files_byte_for_byte():
    for name in ("data_batch_1", "test_batch"):
        with open(os.path.join(SUBSET, name), "rb") as f:
            raw = f.read()
        assert D._pickle_py2(pickle.loads(raw, encoding="bytes")) == raw


def test_load_directory_row_count_from_data(tmp_path, rng):
    # batches of different sizes (not the 10,000 of batches.meta), test batch, parent dir accepted
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    xs = [_images(rng, n) for n in (3, 5)]
    ys = [rng.integers(0, 10, len(x)) for x in xs]
    D.save_batch(d / "data_batch_2", xs[1], ys[1], "b2")
    D.save_batch(d / "data_batch_1", xs[0], ys[0], "b1")
    D.save_batch(d / "test_batch", xs[1][:2], ys[1][:2], "t")
    for where in (d, tmp_path):
        out = D.load_cifar10(where)
        np.testing.assert_array_equal(out["x_train"], np.concatenate(xs))
        np.testing.assert_array_equal(out["y_train"], np.concatenate(ys))
        np.testing.assert_array_equal(out["x_test"], xs[1][:2])
        assert out["classes"] == D.CLASSES


def test_load_errors(tmp_path, rng):
    with pytest.raises(FileNotFoundError, match="data_dir"):
        D.load_cifar10(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="test_batch"):
        D.load_cifar10(tmp_path)
    D.save_batch(tmp_path / "data_batch_1", _images(rng, 2), [0, 1], "b")
    (tmp_path / "test_batch").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError, match="test_batch"):
        D.load_cifar10(tmp_path)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, f, protocol=2)
    with pytest.raises(ValueError, match="labels"):
        D.load_cifar10(tmp_path)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f, protocol=2)
    with pytest.raises(ValueError, match="3072"):
        D.load_cifar10(tmp_path)


# ---- the bundled sample ---------------------------------------------------------------------------

def test_bundled_sample(sample):
    assert sample["x_train"].shape == (2000, 3, 32, 32) and sample["x_train"].dtype == np.uint8
    assert sample["x_test"].shape == (1017, 3, 32, 32)
    np.testing.assert_array_equal(np.bincount(sample["y_train"], minlength=10), [200] * 10)
    assert sample["classes"][0] == "airplane" and len(sample["classes"]) == 10
    size = sum(os.path.getsize(os.path.join(D.SAMPLE_DIR, f)) for f in os.listdir(D.SAMPLE_DIR))
    assert size <= 20e6
    assert 40 < sample["x_train"].mean() < 200 and sample["x_train"].std() > 30  # real images


@need_subset
def test_sample_is_taken_from_the_subset(sample):
    sub = D.load_cifar10(SUBSET)
    assert len(sub["x_train"]) == 5438 and len(sub["x_test"]) == 1017
    np.testing.assert_array_equal(sample["x_test"], sub["x_test"])
    np.testing.assert_array_equal(sample["y_test"], sub["y_test"])
    # every sample training image is a subset training image with the same label
    key = {img.tobytes(): lab for img, lab in zip(sub["x_train"], sub["y_train"])}
    assert all(key.get(img.tobytes()) == lab for img, lab in zip(sample["x_train"], sample["y_train"]))


# ---- download (never touches the network) ----------------------------------------------------------

def _tarball(tmp_path):
    src = tmp_path / "src"
    (src / "cifar-10-batches-py").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("data_batch_1", "test_batch"):
        D.save_batch(src / "cifar-10-batches-py" / name, _images(rng, 4), [1, 2, 3, 4], name)
    tar = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        t.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return tar, hashlib.md5(tar.read_bytes()).hexdigest()


def test_download_offline_error(tmp_path):
    with pytest.raises(ConnectionError, match="offline"):
        D.download(tmp_path / "dl", url="http://127.0.0.1:9/cifar-10-python.tar.gz", progress=False)
    assert os.listdir(tmp_path / "dl") == []  # no temp file left behind


def test_download_verifies_md5_and_unpacks(tmp_path):
    tar, md5 = _tarball(tmp_path)
    url = tar.as_uri()
    with pytest.raises(ValueError, match="MD5"):
        D.download(tmp_path / "bad", url=url, md5="0" * 32, progress=False)
    assert os.listdir(tmp_path / "bad") == []
    out = D.download(tmp_path / "good", url=url, md5=md5, progress=False)
    assert out == str(tmp_path / "good" / "cifar-10-batches-py")
    assert (tmp_path / "good" / "cifar-10-python.tar.gz").exists()
    loaded = D.load_cifar10(out)
    np.testing.assert_array_equal(loaded["y_train"], [1, 2, 3, 4])
    # present already: nothing is fetched (an unreachable URL would raise)
    assert D.download(tmp_path / "good", url="http://127.0.0.1:9/x.tar.gz", md5=md5,
                      progress=False) == out


def test_default_url_and_md5():
    assert D.URL == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert D.MD5 == "c58f30108f718f92721af3b95e74349a"


# ---- preprocessing --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normalize(sample, dtype):
    x = sample["x_train"][:500]
    before = x.copy()
    mean, std = D.channel_stats(x)
    xn = D.normalize(x, mean, std, dtype)
    assert xn.dtype == dtype and xn.flags.c_contiguous and xn.shape == x.shape
    np.testing.assert_allclose(xn.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(xn.std(axis=(0, 2, 3)), 1, atol=1e-5)
    np.testing.assert_allclose(xn[1, 2, 3, 4], (x[1, 2, 3, 4] / 255 - mean[2]) / std[2], rtol=1e-6)
    np.testing.assert_array_equal(x, before)
    with pytest.raises(ValueError, match="channel"):
        D.normalize(x, mean[:2], std, dtype)


def test_split_validation(rng):
    x, y = np.arange(50), np.arange(50) % 10
    a = D.split_validation(x, y, 10, seed=3)
    b = D.split_validation(x, y, 0.2, seed=3)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    xtr, ytr, xval, yval = a
    assert len(xval) == 10 and len(xtr) == 40
    np.testing.assert_array_equal(np.sort(np.concatenate([xtr, xval])), x)
    np.testing.assert_array_equal(ytr, xtr % 10)
    assert not np.array_equal(xval, D.split_validation(x, y, 10, seed=4)[2])
    with pytest.raises(ValueError, match="val_size"):
        D.split_validation(x, y, 50)


def test_prepare(sample):
    p = D.prepare(val_size=200, seed=1)
    assert p["x_train"].shape == (1800, 3, 32, 32) and p["x_val"].shape == (200, 3, 32, 32)
    assert p["x_test"].shape == (1017, 3, 32, 32) and p["x_train"].dtype == np.float32
    np.testing.assert_allclose(p["x_train"].mean(axis=(0, 2, 3)), 0, atol=1e-4)
    assert abs(p["x_test"].mean()) < 0.2  # test normalised with the training statistics


# ---- batches --------------------------------------------------------------------------------------

def test_batch_iterator_order_and_sizes():
    x = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1) * np.ones((1, 1, 2, 2), np.float32)
    y = np.arange(10)
    it = D.BatchIterator(x, y, 4, seed=0)
    assert len(it) == 3 and len(D.BatchIterator(x, y, 4, drop_last=True)) == 2
    e1 = [yb for _, yb in it]
    e2 = [yb for _, yb in it]
    assert [len(b) for b in e1] == [4, 4, 2]
    np.testing.assert_array_equal(np.sort(np.concatenate(e1)), y)
    assert not np.array_equal(np.concatenate(e1), np.concatenate(e2))  # reshuffled
    again = [yb for _, yb in D.BatchIterator(x, y, 4, seed=0)]
    np.testing.assert_array_equal(np.concatenate(again), np.concatenate(e1))
    for xb, yb in D.BatchIterator(x, y, 3, seed=1):
        np.testing.assert_array_equal(xb[:, 0, 0, 0], yb)
    fixed = np.concatenate([yb for _, yb in D.BatchIterator(x, y, 4, shuffle=False)])
    np.testing.assert_array_equal(fixed, y)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_random_crop_is_a_window_of_the_zero_padded_image(rng, dtype):
    """crop=4 (He et al.'s CIFAR augmentation): each image is a 32x32 window of the image padded
    by 4 zeros on every side, the window's offset drawn uniformly in 0..8 from the seed; the
    zeros are exactly the window's part outside the image."""
    p, n = 4, 96
    x = rng.uniform(1, 2, size=(n, 3, 32, 32)).astype(dtype)   # no zero inside an image
    before = x.copy()
    padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    it = D.BatchIterator(x, np.arange(n), 40, shuffle=False, crop=p, seed=7)
    offsets = []
    for xb, yb in it:
        assert xb.shape == (len(yb), 3, 32, 32) and xb.dtype == dtype and xb.flags.c_contiguous
        for img, i in zip(xb, yb):
            a, b = [(a, b) for a in range(2 * p + 1) for b in range(2 * p + 1)
                    if np.array_equal(img, padded[i, :, a:a + 32, b:b + 32])][0]
            offsets.append((a, b))
            outside = 32 * 32 - (32 - abs(a - p)) * (32 - abs(b - p))
            assert np.count_nonzero(img == 0) == 3 * outside
            assert np.all(img[:, max(p - a, 0):32 - max(a - p, 0),
                              max(p - b, 0):32 - max(b - p, 0)] != 0)
    offsets = np.array(offsets)
    assert offsets.min() == 0 and offsets.max() == 2 * p        # the whole range is drawn
    assert len({tuple(o) for o in offsets}) > 30
    np.testing.assert_array_equal(x, before)                    # the data set is not touched
    # the same seed gives the same crops (and flips), another seed others
    def batches(seed, **kw):
        return [xb for xb, _ in D.BatchIterator(x, np.arange(n), 40, crop=p, seed=seed, **kw)]
    for a, b in zip(batches(3, flip=True), batches(3, flip=True)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(batches(3)[0], batches(4)[0])


def test_augmented_batches_are_the_same_on_every_rank(rng):
    """Data parallelism: every rank draws the global batch from the same seed and takes its
    contiguous slice, so the ranks' slices put together are the one-process batch (crops and
    flips included)."""
    from nbconv import distributed as dist
    x = rng.normal(size=(50, 3, 8, 8)).astype(np.float32)
    y = np.arange(50)
    one = list(D.BatchIterator(x, y, 16, crop=2, flip=True, seed=11))
    for size in (2, 3):
        ranks = [list(D.BatchIterator(x, y, 16, crop=2, flip=True, seed=11))
                 for _ in range(size)]
        for k, (xb, yb) in enumerate(one):
            parts = []
            for r in range(size):
                lo, hi = dist.shard_bounds(len(yb), r, size)
                parts.append(ranks[r][k][0][lo:hi])
            np.testing.assert_array_equal(np.concatenate(parts), xb)


def test_batch_iterator_crop_and_flip(rng):
    x = rng.normal(size=(20, 3, 8, 8)).astype(np.float32)
    before = x.copy()
    y = np.arange(20)
    p = 2
    padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    flips = crops = 0
    for xb, yb in D.BatchIterator(x, y, 6, crop=p, flip=True, seed=5):
        assert xb.shape == (len(yb), 3, 8, 8) and xb.flags.c_contiguous
        for img, i in zip(xb, yb):
            cands = [(a, b, f) for a in range(2 * p + 1) for b in range(2 * p + 1) for f in (0, 1)
                     if np.array_equal(img, (padded[i, :, a:a + 8, b:b + 8])[:, :, ::-1] if f
                                       else padded[i, :, a:a + 8, b:b + 8])]
            assert cands, "a batch image is not a (flipped) window of its padded image"
            flips += cands[0][2]
            crops += (cands[0][0], cands[0][1]) != (p, p)
    assert 0 < flips < 20 and crops > 10
    np.testing.assert_array_equal(x, before)
    with pytest.raises(ValueError, match="labels"):
        D.BatchIterator(x, y[:3], 4)
    with pytest.raises(ValueError, match="batch_size"):
        D.BatchIterator(x, y, 0)
