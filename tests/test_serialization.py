"""load_torch (restricted unpickler) and the native safetensors reader/writer, against torch and
the ``safetensors`` package."""
import json
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from nbconv.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential
from nbconv.serialization import (SafetensorsError, UnsafeFileError, load_safetensors,
                                  load_torch, save_safetensors)

st_numpy = pytest.importorskip("safetensors.numpy")
st_torch = pytest.importorskip("safetensors.torch")


def same_bits(a, b):
    """Equal dtype, shape and bytes (NaN payloads included)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def torch_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 4, 3, stride=2, groups=2, bias=False), torch.nn.Flatten(),
        torch.nn.Linear(4 * 3 * 3, 5))


# ---- load_torch ------------------------------------------------------------------------------


def test_load_torch_state_dict_identical(tmp_path):
    net = torch_net()
    net(torch.randn(4, 3, 7, 7))  # BatchNorm running stats and num_batches_tracked move
    sd = net.state_dict()
    torch.save(sd, tmp_path / "net.pt")
    got = load_torch(tmp_path / "net.pt")
    assert list(got) == list(sd)
    for k, v in sd.items():
        assert same_bits(got[k], v.numpy()), k
        assert got[k].flags.c_contiguous and got[k].flags.writeable
    assert got["1.num_batches_tracked"].dtype == np.int64
    assert got["1.num_batches_tracked"].shape == () and got["1.num_batches_tracked"] == 1


def test_load_torch_views_dtypes_and_parameters(tmp_path):
    base = torch.arange(60, dtype=torch.float64).reshape(3, 4, 5)
    sd = {
        "t": base.transpose(0, 2),                       # non-contiguous strides
        "slice": base[1:, ::2, 1:4],                     # storage offset and steps
        "f16": torch.randn(3, 2).half(),
        "i32": torch.arange(5, dtype=torch.int32),
        "u8": torch.arange(7, dtype=torch.uint8),
        "b": torch.tensor([True, False]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "nan": torch.tensor([float("nan"), float("inf"), -0.0]),
    }
    torch.save(sd, tmp_path / "v.pt")
    got = load_torch(tmp_path / "v.pt")
    for k, v in sd.items():
        assert same_bits(got[k], v.numpy()), k
    # two views of one storage come back as independent arrays
    got["t"][0, 0, 0] = -1
    assert got["slice"].min() >= 0
    # state_dict(keep_vars=True) pickles nn.Parameter through _rebuild_parameter
    lin = torch.nn.Linear(3, 2)
    torch.save(lin.state_dict(keep_vars=True), tmp_path / "p.pt")
    got = load_torch(tmp_path / "p.pt")
    assert same_bits(got["weight"], lin.weight.detach().numpy())


class _Evil:
    """Unpickling this creates the marker file (through builtins.open)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_load_torch_refuses_code_in_zip(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"w": torch.zeros(2), "x": _Evil(marker)}, tmp_path / "evil.pt")
    # the file really would run code in an unrestricted loader (so the test can fail) ...
    proof = tmp_path / "proof"
    torch.save({"x": _Evil(proof)}, tmp_path / "proof.pt")
    torch.load(tmp_path / "proof.pt", weights_only=False)
    assert proof.exists()
    # ... and load_torch refuses it before anything runs
    with pytest.raises(UnsafeFileError, match="refusing to load global"):
        load_torch(tmp_path / "evil.pt")
    assert not marker.exists()


def test_load_torch_refuses_plain_pickle(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"x": _Evil(marker)}))
    with pytest.raises(UnsafeFileError, match="not a torch zip archive"):
        load_torch(tmp_path / "evil.pkl")
    assert not marker.exists()
    # the legacy (pre-1.6) torch format is a plain pickle stream too
    torch.save({"w": torch.zeros(2)}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeFileError, match="not a torch zip archive"):
        load_torch(tmp_path / "old.pt")


def _rezip(src, dst, pkl):
    """Copy torch archive ``src`` to ``dst`` with ``data.pkl`` replaced by ``pkl``."""
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w") as zo:
        for n in zi.namelist():
            zo.writestr(n, pkl if n.endswith("/data.pkl") else zi.read(n))


def test_load_torch_refuses_build_and_bad_views(tmp_path):
    torch.save({"w": torch.zeros(4)}, tmp_path / "ok.pt")
    # BUILD on an allowed function (would replace its defaults): refused
    build = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n}X\x0c\x00\x00\x00__defaults__"
             b"K\x01sb.")
    _rezip(tmp_path / "ok.pt", tmp_path / "build.pt", build)
    with pytest.raises(UnsafeFileError, match="refusing to set the state"):
        load_torch(tmp_path / "build.pt")
    # a view that reaches past its storage (4 elements, size 5)
    with zipfile.ZipFile(tmp_path / "ok.pt") as z:
        pkl = [z.read(n) for n in z.namelist() if n.endswith("data.pkl")][0]
    assert b"K\x04\x85" in pkl  # size (4,)
    _rezip(tmp_path / "ok.pt", tmp_path / "big.pt", pkl.replace(b"K\x04\x85", b"K\x05\x85"))
    with pytest.raises(UnsafeFileError, match="reaches element 4"):
        load_torch(tmp_path / "big.pt")
    # a checkpoint that is not a flat state_dict
    torch.save({"model": {"w": torch.zeros(2)}, "epoch": 3}, tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match="not a flat state_dict"):
        load_torch(tmp_path / "ckpt.pt")
    with pytest.raises(UnsafeFileError, match="BFloat16Storage"):
        torch.save({"w": torch.zeros(2, dtype=torch.bfloat16)}, tmp_path / "bf.pt")
        load_torch(tmp_path / "bf.pt")


def nbconv_twin(seed=0):
    net = Sequential(Conv2d(3, 6, 3, padding=1, seed=seed), ReLU(), MaxPool2d(2), Flatten(),
                     Linear(6 * 4 * 4, 5, seed=seed))
    tnet = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                               torch.nn.Linear(6 * 4 * 4, 5))
    return net, tnet


def test_weights_both_ways_same_logits(tmp_path):
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    net, tnet = nbconv_twin()
    # torch -> nbconv through torch.save / load_torch
    torch.save(tnet.state_dict(), tmp_path / "t.pt")
    net.load_state_dict(load_torch(tmp_path / "t.pt"))
    want = tnet(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(net(x), want, rtol=1e-5, atol=1e-5)
    # nbconv -> torch through save_safetensors / safetensors.torch.load_file
    net2, tnet2 = nbconv_twin(seed=7)
    save_safetensors(net2.state_dict(), tmp_path / "n.safetensors")
    tnet2.load_state_dict(st_torch.load_file(tmp_path / "n.safetensors"))
    np.testing.assert_allclose(tnet2(torch.from_numpy(x)).detach().numpy(), net2(x),
                               rtol=1e-5, atol=1e-5)


# ---- safetensors -----------------------------------------------------------------------------


def sample_arrays():
    rng = np.random.default_rng(3)
    f32 = rng.standard_normal((3, 4)).astype(np.float32)
    f32[0, 0] = np.nan
    return {
        "conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "f32": f32,
        "f64": rng.standard_normal((5,)),
        "f16": rng.standard_normal((2, 2)).astype(np.float16),
        "i64": np.array(7, np.int64),
        "i32": np.arange(6, dtype=np.int32).reshape(2, 3),
        "u8": np.arange(5, dtype=np.uint8),
        "bool": np.array([True, False, True]),
        "empty": np.zeros((0, 4), np.float32),
        "strided": np.arange(20, dtype=np.float64).reshape(4, 5)[:, ::2],
        "big_endian": np.arange(4, dtype=">f4"),
    }


def test_safetensors_nbconv_to_package(tmp_path):
    arrays = sample_arrays()
    save_safetensors(arrays, tmp_path / "a.safetensors", metadata={"format": "np"})
    got_np = st_numpy.load_file(str(tmp_path / "a.safetensors"))
    got_t = st_torch.load_file(str(tmp_path / "a.safetensors"))
    assert set(got_np) == set(arrays) == set(got_t)
    for k, v in arrays.items():
        want = v.astype(v.dtype.newbyteorder("="))
        assert same_bits(got_np[k], want), k
        assert same_bits(got_t[k].numpy(), want), k
    # byte-identical to the package's own writer (given C-contiguous arrays: safetensors 0.8's
    # numpy writer ignores strides and writes a strided view's underlying buffer instead)
    contiguous = {k: np.array(v, order="C") for k, v in arrays.items()}
    st_numpy.save_file(contiguous, str(tmp_path / "b.safetensors"), metadata={"format": "np"})
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def test_safetensors_package_to_nbconv(tmp_path):
    arrays = {k: np.array(v, order="C") for k, v in sample_arrays().items()}
    st_numpy.save_file(arrays, str(tmp_path / "b.safetensors"), metadata={"k": "v"})
    got, meta = load_safetensors(tmp_path / "b.safetensors", return_metadata=True)
    assert meta == {"k": "v"}
    for k, v in arrays.items():
        assert same_bits(got[k], v.astype(v.dtype.newbyteorder("="))), k
        assert got[k].flags.writeable and got[k].flags.c_contiguous
    tensors = {"w": torch.randn(3, 2), "n": torch.tensor(4), "h": torch.randn(2).half()}
    st_torch.save_file(tensors, str(tmp_path / "t.safetensors"))
    got = load_safetensors(tmp_path / "t.safetensors")
    for k, v in tensors.items():
        assert same_bits(got[k], v.numpy()), k


def test_safetensors_save_errors_keep_old_file(tmp_path):
    p = tmp_path / "a.safetensors"
    save_safetensors({"a": np.ones(2)}, p)
    before = p.read_bytes()
    with pytest.raises(TypeError, match=r"state_dict\['b'\]"):
        save_safetensors({"a": np.ones(2), "b": [1, 2]}, p)
    with pytest.raises(TypeError, match="complex128"):
        save_safetensors({"c": np.ones(2, complex)}, p)
    with pytest.raises(ValueError, match="reserved"):
        save_safetensors({"__metadata__": np.ones(2)}, p)
    with pytest.raises(TypeError, match="keys must be str"):
        save_safetensors({1: np.ones(2)}, p)
    assert p.read_bytes() == before
    assert os.listdir(tmp_path) == ["a.safetensors"]


def _write(path, header, data, length=None, raw_header=None):
    head = raw_header if raw_header is not None else json.dumps(header).encode()
    n = len(head) if length is None else length
    path.write_bytes(n.to_bytes(8, "little") + head + data)
    return path


@pytest.mark.parametrize("case, match", [
    ("truncated", "outside"),
    ("short", "too short"),
    ("huge_length", "header length"),
    ("zero_length", "header length"),
    ("overlap", "overlaps"),
    ("hole", "hole"),
    ("tail", "cover"),
    ("size", "needs 16 bytes"),
    ("dtype", "unknown dtype"),
    ("bf16", "BF16"),
    ("json", "not valid UTF-8 JSON"),
    ("duplicate", "duplicate"),
    ("shape", "bad shape"),
    ("keys", "exactly dtype"),
    ("array", "JSON object"),
])
def test_safetensors_corrupt_files(tmp_path, case, match):
    good = tmp_path / "good.safetensors"
    save_safetensors({"a": np.ones(4, np.float32), "b": np.zeros(2, np.float32)}, good)
    raw = good.read_bytes()
    p = tmp_path / "bad.safetensors"
    e = lambda off, dt="F32", shape=(4,): {"dtype": dt, "shape": list(shape),  # noqa: E731
                                          "data_offsets": list(off)}
    d24 = bytes(24)
    if case == "truncated":
        p.write_bytes(raw[:-3])
    elif case == "short":
        p.write_bytes(raw[:5])
    elif case == "huge_length":
        p.write_bytes((10 ** 9).to_bytes(8, "little") + raw[8:])
    elif case == "zero_length":
        p.write_bytes(bytes(8) + raw[8:])
    elif case == "overlap":
        _write(p, {"a": e((0, 16)), "b": e((8, 24), shape=(4,))}, d24)
    elif case == "hole":
        _write(p, {"a": e((0, 16)), "b": e((20, 24), shape=(1,))}, d24)
    elif case == "tail":
        _write(p, {"a": e((0, 16))}, d24)
    elif case == "size":
        _write(p, {"a": e((0, 24))}, d24)
    elif case == "dtype":
        _write(p, {"a": e((0, 24), dt="F24", shape=(1,))}, d24)
    elif case == "bf16":
        _write(p, {"a": e((0, 24), dt="BF16", shape=(12,))}, d24)
    elif case == "json":
        _write(p, None, d24, raw_header=b"{\"a\": \xff}")
    elif case == "duplicate":
        one = b'"a":{"dtype":"F32","shape":[6],"data_offsets":[0,24]}'
        _write(p, None, d24, raw_header=b"{" + one + b"," + one + b"}")
    elif case == "shape":
        _write(p, {"a": e((0, 24), shape=(-6,))}, d24)
    elif case == "keys":
        _write(p, {"a": {"dtype": "F32", "shape": [6]}}, d24)
    elif case == "array":
        _write(p, [1, 2], d24)
    with pytest.raises(SafetensorsError, match=match):
        load_safetensors(p)
    assert load_safetensors(good)["a"].tolist() == [1, 1, 1, 1]
