"""nbconv.data on hostile or malformed folders: the restricted unpickler (bug A), strict batch
names, labels and batches.meta (bug I)."""
import os
import pickle

import numpy as np
import pytest

from nbconv import _unpickle
from nbconv import data as D

from helpers import SUBSET, SUBSET_ABSENT


def _images(rng, n):
    return rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)


class _Marker:
    """Unpickling this calls ``os.system('touch <marker>')`` (a crafted batch)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _OpenMarker:
    """As _Marker through a builtin: ``open(marker, 'w')`` creates the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _folder(tmp_path, rng):
    d = tmp_path / "cifar-10-batches-py"
    D.save_batch(d / "data_batch_1", _images(rng, 3), [0, 1, 2], "b1")
    D.save_batch(d / "test_batch", _images(rng, 2), [3, 4], "t")
    return d


@pytest.mark.parametrize("gadget", [_Marker, _OpenMarker])
@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("where", ["data", "labels", "top"])
def test_crafted_batch_runs_nothing(tmp_path, rng, gadget, protocol, where):
    marker = tmp_path / "pwned"
    d = _folder(tmp_path, rng)
    payload = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
    if where == "top":
        payload = gadget(marker)
    else:
        payload[b"data" if where == "data" else b"labels"] = gadget(marker)
    with open(d / "data_batch_2", "wb") as f:
        pickle.dump(payload, f, protocol=protocol)
    with pytest.raises(_unpickle.UnsafePickleError, match="data_batch_2") as e:
        D.load_cifar10(d)
    assert isinstance(e.value, ValueError)
    assert not marker.exists()
    with pytest.raises(ValueError, match="data_batch_2.*(posix|nt|builtins|io)"):
        D.load_batch(d / "data_batch_2")
    assert not marker.exists()
    # the gadget itself works: plain pickle would have run it
    with open(d / "data_batch_2", "rb") as f:
        pickle.load(f)
    assert marker.exists()


def test_crafted_meta_runs_nothing(tmp_path, rng):
    marker = tmp_path / "pwned"
    d = _folder(tmp_path, rng)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": _Marker(marker)}, f, protocol=2)
    with pytest.raises(ValueError, match="batches.meta"):
        D.load_cifar10(d)
    assert not marker.exists()


@pytest.mark.parametrize("bad", [np.array([1, 2], dtype=object),
                                 np.zeros(2, dtype=[("a", "u1"), ("b", "f4")]),
                                 np.array(["ab", "c"]),
                                 np.ma.masked_array([1, 2])])
def test_non_numeric_arrays_refused(tmp_path, bad):
    p = tmp_path / "data_batch_1"
    with open(p, "wb") as f:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": bad}, f, protocol=2)
    with pytest.raises(_unpickle.UnsafePickleError, match="data_batch_1"):
        D.load_batch(p)


def test_ordinary_pickles_of_plain_data_load(tmp_path, rng):
    # what a user's own pickle.dump of a batch writes, every protocol, NumPy scalars included
    x = _images(rng, 4)
    y = np.array([0, 9, 3, 3])
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        for labels in ([int(v) for v in y], list(y), y):
            p = tmp_path / f"b{protocol}"
            with open(p, "wb") as f:
                pickle.dump({b"data": x.reshape(4, -1), b"labels": labels,
                             b"batch_label": "text", b"extra": (1.5, None, True)}, f,
                            protocol=protocol)
            x2, y2 = D.load_batch(p)
            np.testing.assert_array_equal(x2, x)
            np.testing.assert_array_equal(y2, y)
            assert y2.dtype == np.int64


def test_official_batches_and_save_batch_load(tmp_path, rng):
    out = D.load_cifar10()  # the bundled sample, official format
    assert out["x_train"].shape[1:] == (3, 32, 32) and len(out["classes"]) == 10
    if os.path.isdir(SUBSET):
        sub = D.load_cifar10(SUBSET)
        assert len(sub["x_train"]) > len(out["x_train"])
    x, y = _images(rng, 5), [9, 0, 1, 2, 3]
    D.save_batch(tmp_path / "b", x, y, "b")
    x2, y2 = D.load_batch(tmp_path / "b")
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)


# ---- bug I: the loader was too lenient ----------------------------------------------------------

@pytest.mark.parametrize("labels", [[0.5, 1.7], [0.0, 1.0], [0, 1.0], np.array([0.0, 1.0]),
                                    [True, False], ["0", "1"], [[0], [1]]])
def test_non_integer_labels_refused(tmp_path, labels):
    p = tmp_path / "data_batch_1"
    with open(p, "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": labels}, f, protocol=2)
    with pytest.raises(ValueError, match="data_batch_1.*labels"):
        D.load_batch(p)


@pytest.mark.parametrize("name", ["data_batch_01", "data_batch_\u0661",  # ARABIC-INDIC ONE
                                  "data_batch_\uff11", "data_batch_6", "data_batch_0",
                                  "data_batch_1.bak", "data_batch_"])
def test_only_data_batch_1_to_5_are_batches(tmp_path, rng, name):
    d = _folder(tmp_path, rng)
    D.save_batch(d / name, _images(rng, 4), [5, 5, 5, 5], "stray")
    out = D.load_cifar10(d)
    assert len(out["x_train"]) == 3
    np.testing.assert_array_equal(out["y_train"], [0, 1, 2])


def test_batches_in_numeric_order(tmp_path, rng):
    d = _folder(tmp_path, rng)
    for k in (5, 3):
        D.save_batch(d / f"data_batch_{k}", _images(rng, 1), [k], f"b{k}")
    np.testing.assert_array_equal(D.load_cifar10(d)["y_train"], [0, 1, 2, 3, 5])


@pytest.mark.parametrize("meta", [b"\x80\x02garbage", b"", b"not a pickle at all",
                                  pickle.dumps([b"a"], protocol=2),
                                  pickle.dumps({b"label_names": [b"a", b"b"]}, protocol=2),
                                  pickle.dumps({b"label_names": b"airplane"}, protocol=2)],
                         ids=["garbage", "empty", "text", "list", "two-names", "bytes-names"])
def test_bad_meta_names_the_file(tmp_path, rng, meta):
    d = _folder(tmp_path, rng)
    (d / "batches.meta").write_bytes(meta)
    with pytest.raises(ValueError, match="batches.meta") as e:
        D.load_cifar10(d)
    assert not isinstance(e.value, pickle.UnpicklingError)


def test_good_meta_gives_class_names(tmp_path, rng):
    d = _folder(tmp_path, rng)
    names = [f"class{i}".encode() for i in range(10)]
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_vis": 3072}, f, protocol=2)
    assert D.load_cifar10(d)["classes"] == tuple(n.decode() for n in names)
    (d / "batches.meta").write_bytes(pickle.dumps({b"num_vis": 3072}, protocol=2))
    assert D.load_cifar10(d)["classes"] == D.CLASSES


# ---- issue 18, item 1: every array is backed by bytes in the file -----------------------------

_RECONSTRUCT = np.empty(0).__reduce__()[0]


class _Reduce:
    """Pickles as ``fn(*args)`` (and ``BUILD state`` when ``state`` is given)."""

    def __init__(self, fn, args, state=None):
        self.fn, self.args, self.state = fn, args, state

    def __reduce__(self):
        return (self.fn, self.args) if self.state is None else (self.fn, self.args, self.state)


def _crafted(path, data, labels, protocol=2):
    with open(path, "wb") as f:
        pickle.dump({b"data": data, b"labels": labels}, f, protocol=protocol)
    return path


@pytest.mark.parametrize("protocol", [2, 5])
def test_zero_stride_view_of_a_tiny_buffer_is_refused(tmp_path, protocol):
    # numpy.ndarray(shape, dtype, buffer, offset, strides): 200,000 images over one byte
    n = 200_000
    p = _crafted(tmp_path / "data_batch_1",
                 _Reduce(np.ndarray, ((n, 3072), np.dtype(np.uint8), b"\x07", 0, (0, 0))),
                 _Reduce(np.ndarray, ((n,), np.dtype(np.int64), bytes(8), 0, (0,))), protocol)
    assert os.path.getsize(p) < 400
    with pytest.raises(_unpickle.UnsafePickleError, match="data_batch_1.*numpy.ndarray"):
        D.load_batch(p)


def test_reconstruct_without_its_build_state_is_refused(tmp_path):
    # _reconstruct(ndarray, shape, dtype) with no BUILD: uninitialised memory as images
    p = _crafted(tmp_path / "data_batch_1", _Reduce(_RECONSTRUCT, (np.ndarray, (64, 3072), b"B")),
                 [0] * 64)
    with pytest.raises(_unpickle.UnsafePickleError, match="data_batch_1.*_reconstruct"):
        D.load_batch(p)
    # ... nor with an empty shape and no BUILD (an array with no data)
    p = _crafted(tmp_path / "data_batch_2", _Reduce(_RECONSTRUCT, (np.ndarray, (0,), b"B")), [])
    with pytest.raises(_unpickle.UnsafePickleError, match="data_batch_2.*without its data"):
        D.load_batch(p)


def test_array_state_must_hold_its_bytes(tmp_path):
    # a BUILD state whose bytes are fewer than its shape needs, and one file whose arrays
    # share one memoised byte string (more array bytes than the file holds)
    raw = bytes(range(256)) * 12   # one 3072-byte image
    short = _Reduce(_RECONSTRUCT, (np.ndarray, (0,), b"b"),
                    (1, (2, 3072), np.dtype(np.uint8), False, raw))
    p = _crafted(tmp_path / "a", short, [0, 1])
    with pytest.raises(_unpickle.UnsafePickleError, match="needs 6144 bytes"):
        D.load_batch(p)
    many = [_Reduce(_RECONSTRUCT, (np.ndarray, (0,), b"b"),
                    (1, (1, 3072), np.dtype(np.uint8), False, raw)) for _ in range(40)]
    p = tmp_path / "b"
    with open(p, "wb") as f:
        pickle.dump({b"data": many[0], b"labels": [0], b"more": many}, f, protocol=2)
    assert os.path.getsize(p) < 40 * 3072
    with pytest.raises(_unpickle.UnsafePickleError, match="more bytes than the file holds"):
        D.load_batch(p)
    # _frombuffer (protocol 5) with a shape that does not match its buffer
    from_buffer = np.empty(1).__reduce_ex__(5)[0]
    p = _crafted(tmp_path / "c", _Reduce(from_buffer, (raw, np.dtype(np.uint8), (2, 3072), "C")),
                 [0, 1], protocol=5)
    with pytest.raises(_unpickle.UnsafePickleError, match="needs 6144 bytes"):
        D.load_batch(p)


def test_dtype_state_may_only_set_a_byte_order(tmp_path):
    # numpy.dtype('u1') then BUILD with fields: a structured dtype
    bad_state = (3, "|", None, ("a",), {"a": (np.dtype("u1"), 0)}, 1, 1, 0)
    p = _crafted(tmp_path / "data_batch_1", _Reduce(np.dtype, ("u1", False, True), bad_state),
                 [0])
    with pytest.raises(_unpickle.UnsafePickleError, match="only a byte order"):
        D.load_batch(p)


def test_deep_nesting_is_a_value_error(tmp_path):
    p = tmp_path / "data_batch_1"
    p.write_bytes(b"\x80\x02" + b"]" * 100_000 + b"." )
    with pytest.raises(ValueError, match="data_batch_1"):
        D.load_batch(p)


def test_bytearray_length_is_checked_before_allocating(tmp_path):
    # protocol 5 BYTEARRAY8 claiming 2**40 bytes: Python's own pure unpickler allocates them
    p = tmp_path / "data_batch_1"
    p.write_bytes(b"\x80\x05\x96" + (2 ** 40).to_bytes(8, "little") + b"xy.")
    with pytest.raises(_unpickle.UnsafePickleError, match="data_batch_1.*bytearray of "
                                                          "1099511627776 bytes"):
        D.load_batch(p)
