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
import nbconv
from nbconv.serialization import (FileFormatError, SafetensorsError, TorchFileError,
                                  UnsafeFileError, load_safetensors, load_torch,
                                  save_safetensors, save_torch)

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
    assert got["slice"].min() >= 0 and got["t"].flags.writeable
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
    with pytest.raises(TorchFileError, match="not a torch zip archive"):
        load_torch(tmp_path / "evil.pkl")
    with pytest.raises(FileFormatError, match="evil.pkl is a Python pickle"):
        nbconv.load(tmp_path / "evil.pkl")
    assert not marker.exists()


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
    with pytest.raises(TorchFileError, match="tensor 'w'.*reaches element 4"):
        load_torch(tmp_path / "big.pt")
    with pytest.raises(TorchFileError, match="ComplexFloatStorage"):
        torch.save({"w": torch.zeros(2, dtype=torch.complex64)}, tmp_path / "c.pt")
        load_torch(tmp_path / "c.pt")


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
    with pytest.raises(TypeError, match=r"'b/0'.*a set"):
        save_safetensors({"a": np.ones(2), "b": [{1, 2}]}, p)
    with pytest.raises(TypeError, match="complex128"):
        save_safetensors({"c": np.ones(2, complex)}, p)
    for bad in ({"__metadata__": np.ones(2)}, {"__metadata__": np.ones(2), "n": {}}):
        with pytest.raises(ValueError, match="reserved"):
            save_safetensors(bad, p)
    with pytest.raises(TypeError, match="keys must be str or int"):
        save_safetensors({(1,): np.ones(2)}, p)
    with pytest.raises(ValueError, match="reserved"):
        save_safetensors({"a": np.ones(2)}, p, metadata={"nbconv.tree": "[]"})
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
    ("f8", "F8_E4M3.*NumPy cannot hold"),
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
    elif case == "f8":
        _write(p, {"a": e((0, 24), dt="F8_E4M3", shape=(24,))}, d24)
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


# ---- issue 18: bounded .pt loading, format by first bytes, documented errors ------------------

def _tensor_pkl(numel=1, size=(1,), stride=(1,), storage="FloatStorage", key="0",
                extra=b""):
    """A torch ``data.pkl`` of ``{"w": tensor}`` written opcode by opcode."""
    def s(text):
        b = text.encode()
        return b"X" + len(b).to_bytes(4, "little") + b

    def i(v):
        return b"J" + v.to_bytes(4, "little", signed=True) if -2**31 <= v < 2**31 else \
            b"\x8a" + bytes([9]) + v.to_bytes(9, "little", signed=True)

    def tup(vs):
        return b"(" + b"".join(i(v) for v in vs) + b"t"

    return (b"\x80\x02}(" + s("w") + b"ctorch._utils\n_rebuild_tensor_v2\n((" + s("storage")
            + f"ctorch\n{storage}\n".encode() + s(key) + s("cpu") + i(numel) + b"tQ" + i(0)
            + tup(size) + tup(stride) + b"\x89ccollections\nOrderedDict\n)RtR" + extra
            + b"u.")


def _zip(path, records, compress=None):
    with zipfile.ZipFile(path, "w") as z:
        for name, payload in records.items():
            if callable(payload):      # a writer of a large record, streamed
                with z.open(zipfile.ZipInfo(f"archive/{name}"), "w", force_zip64=True) as f:
                    payload(f)
            else:
                z.writestr(f"archive/{name}", payload,
                           compress_type=(compress or {}).get(name, zipfile.ZIP_STORED))
    return path


def _peak(fn):
    import tracemalloc
    tracemalloc.start()
    try:
        return fn(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _zeros_writer(nbytes, chunk=1 << 20):
    def write(f):
        block = bytes(chunk)
        for _ in range(nbytes // chunk):
            f.write(block)
    return write


def test_storage_record_is_read_only_as_far_as_its_tensors_reach(tmp_path):
    # a deflated record of 256 MiB (about 256 KB in the file) for a 4-byte tensor
    big = 256 << 20
    p = tmp_path / "bomb.pt"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", _tensor_pkl(numel=big // 4))
        info = zipfile.ZipInfo("archive/data/0")
        info.compress_type = zipfile.ZIP_DEFLATED
        with z.open(info, "w", force_zip64=True) as f:
            _zeros_writer(big)(f)
    assert p.stat().st_size < 2 << 20
    got, peak = _peak(lambda: load_torch(p))
    assert same_bits(got["w"], np.zeros(1, np.float32))
    assert peak < 4 << 20, peak
    # a record that declares more (or fewer) bytes than its persistent id: refused unread
    _zip(tmp_path / "liar.pt", {"data.pkl": _tensor_pkl(numel=1), "data/0": bytes(8)})
    with pytest.raises(TorchFileError, match="data/0 declares 8 bytes.*= 4"):
        load_torch(tmp_path / "liar.pt")


def test_data_pkl_is_bounded(tmp_path):
    # a deflated data.pkl holding a 128 MiB bytes literal: refused before it is inflated
    n = 128 << 20
    head = b"\x80\x03}(X\x01\x00\x00\x00xB" + n.to_bytes(4, "little")
    p = tmp_path / "pkl.pt"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("archive/data.pkl", "w", force_zip64=True) as f:
            f.write(head)
            _zeros_writer(n)(f)
            f.write(b"u.")
    with pytest.raises(TorchFileError, match="data.pkl declares"):
        _, peak = _peak(lambda: load_torch(p))
    _, peak = _peak(lambda: pytest.raises(TorchFileError, load_torch, p))
    assert peak < 4 << 20, peak


def test_expanded_tensor_is_a_read_only_view(tmp_path):
    base = torch.arange(3, dtype=torch.float32)
    sd = {"e": base.expand(200_000, 3), "w": torch.ones(2)}
    torch.save(sd, tmp_path / "e.pt")
    assert (tmp_path / "e.pt").stat().st_size < 4096
    got, peak = _peak(lambda: nbconv.load(tmp_path / "e.pt"))
    assert peak < 1 << 20, peak                 # not materialised: 2.4 MB would be
    e = got["e"]
    assert e.shape == (200_000, 3) and e.strides == (0, 4) and not e.flags.writeable
    np.testing.assert_array_equal(e, sd["e"].numpy())
    assert got["w"].flags.writeable
    # tied weights (two tensors on one storage) are still copied apart
    w = torch.randn(3, 2)
    torch.save({"a": w, "b": w.view(3, 2)}, tmp_path / "tied.pt")
    got = load_torch(tmp_path / "tied.pt")
    assert got["a"].flags.writeable and got["b"].flags.writeable
    got["a"][0, 0] = 5
    assert got["b"][0, 0] == w[0, 0].item()


def test_load_decides_by_first_bytes_not_zip_end_record(tmp_path):
    w = np.zeros(6, np.float32)
    w[0] = np.frombuffer(b"PK\x05\x06", np.float32)[0]       # 2.507e-35, then zeros
    assert abs(float(w[0]) - 2.507e-35) < 1e-38
    p = tmp_path / "m.safetensors"
    nbconv.save({"w": w}, p)
    assert zipfile.is_zipfile(p)           # what fooled the old rule
    assert same_bits(nbconv.load(p)["w"], w)
    (tmp_path / "junk.bin").write_bytes(b"hello world, not a model file")
    with pytest.raises(FileFormatError, match="junk.bin.*no format nbconv reads"):
        nbconv.load(tmp_path / "junk.bin")


def test_legacy_torch_format_is_named(tmp_path):
    p = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(2)}, p, _use_new_zipfile_serialization=False)
    for fn in (nbconv.load, load_torch):
        with pytest.raises(TorchFileError, match="legacy.pt is a PyTorch file in the legacy "
                                                 "format.*torch.save\\(torch.load"):
            fn(p)


@pytest.mark.parametrize("case, error, match", [
    ("size-2**70", TorchFileError, "tensor 'w'.*size"),
    ("dims-65", TorchFileError, "tensor 'w'.*at most 64"),
    ("empty-huge", TorchFileError, "tensor 'w'.*too big"),
    ("truncated-pkl", TorchFileError, "data.pkl is not a valid pickle.*EOFError"),
    ("crc", TorchFileError, "data/0.*CRC"),
    ("newobj", UnsafeFileError, "NEWOBJ"),
    ("no-pkl", TorchFileError, "expected one <root>/data.pkl"),
    ("missing-record", TorchFileError, "data/0 is missing"),
    ("two-dtypes", TorchFileError, "read as"),
    ("cycle", TorchFileError, "contains itself"),
    ("damaged-zip", TorchFileError, "damaged zip"),
    ("set", TorchFileError, "set"),
    ("bytearray", UnsafeFileError, "bytearray of 1099511627776 bytes"),
])
def test_malformed_pt_files_raise_documented_errors(tmp_path, case, error, match):
    p = tmp_path / "bad.pt"
    rec = {"data/0": bytes(4)}
    if case == "size-2**70":
        _zip(p, {"data.pkl": _tensor_pkl(size=(2 ** 70,), stride=(1,)), **rec})
    elif case == "dims-65":
        _zip(p, {"data.pkl": _tensor_pkl(size=(1,) * 65, stride=(1,) * 65), **rec})
    elif case == "empty-huge":
        _zip(p, {"data.pkl": _tensor_pkl(size=(2 ** 62, 8, 0), stride=(0, 0, 1)), **rec})
    elif case == "truncated-pkl":
        _zip(p, {"data.pkl": _tensor_pkl()[:-5], **rec})
    elif case == "crc":
        _zip(p, {"data.pkl": _tensor_pkl(), **rec})
        raw = bytearray(p.read_bytes())
        with zipfile.ZipFile(p) as z:
            info = z.getinfo("archive/data/0")
        raw[info.header_offset + 30 + len(info.filename) + len(info.extra)] ^= 1
        p.write_bytes(bytes(raw))
    elif case == "newobj":
        pkl = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n)\x81."
        _zip(p, {"data.pkl": pkl})
    elif case == "no-pkl":
        _zip(p, rec)
    elif case == "missing-record":
        _zip(p, {"data.pkl": _tensor_pkl()})
    elif case == "two-dtypes":
        pkl = _tensor_pkl()
        second = _tensor_pkl(storage="IntStorage")[4:-2].replace(b"X\x01\x00\x00\x00w",
                                                                  b"X\x01\x00\x00\x00v")
        _zip(p, {"data.pkl": pkl[:-2] + second + b"u.", **rec})
    elif case == "cycle":
        _zip(p, {"data.pkl": b"\x80\x02]q\x00h\x00a."})
    elif case == "damaged-zip":
        _zip(p, {"data.pkl": _tensor_pkl(), **rec})
        p.write_bytes(p.read_bytes()[:-30])
    elif case == "set":
        _zip(p, {"data.pkl": b"\x80\x04\x8f(K\x01\x90."})
    elif case == "bytearray":
        _zip(p, {"data.pkl": b"\x80\x05\x96" + (2 ** 40).to_bytes(8, "little") + b"xy."})
    with pytest.raises(error, match=match) as e:
        load_torch(p)
    assert "bad.pt" in str(e.value) and isinstance(e.value, ValueError)
    with pytest.raises(error):
        nbconv.load(p)


@pytest.mark.parametrize("header, match", [
    ('{"a":' * 100_000 + "1" + "}" * 100_000, "nested too deeply"),
    ('{"a": {"dtype": ["F32"], "shape": [0], "data_offsets": [0, 0]}}', "unknown dtype"),
    ('{"a": {"dtype": "F32", "shape": [18446744073709551616, 0], "data_offsets": [0, 0]}}',
     "'a' has bad shape"),
    ('{"a": {"dtype": "F32", "shape": [' + ",".join(["1"] * 65) + '], "data_offsets": [0, 4]}}',
     "'a' has bad shape"),
    ('{"a": {"dtype": "F32", "shape": [4611686018427387904, 8, 0], "data_offsets": [0, 0]}}',
     "'a' of shape"),
    ('{"__metadata__": 0}', "__metadata__ must be a dict"),
    ('{"__metadata__": []}', "__metadata__ must be a dict"),
    ('{"__metadata__": ["x"]}', "__metadata__ must be a dict"),
    ('{"__metadata__": null}', "__metadata__ must be a dict"),
    ('{"__metadata__": {"k": 1}}', "__metadata__ must be a dict"),
    ('{"__metadata__": {"nbconv.tree": "[{\\"tensor\\": \\"zz\\"}]"}}', "names tensor 'zz'"),
    ('{"__metadata__": {"nbconv.tree": "{\\"set\\": 1}"}}', "not a tensor, dict"),
    ('{"__metadata__": {"nbconv.tree": "' + "[" * 150 + "]" * 150 + '"}}', "deeper than"),
    ('{"__metadata__": {"nbconv.tree": "[1"}}', "not JSON"),
], ids=["deep", "list-dtype", "dim-2**64", "dims-65", "too-big", "meta-0", "meta-list",
        "meta-list-x", "meta-null", "meta-int-value", "tree-unknown", "tree-kind", "tree-deep",
        "tree-json"])
def test_malformed_safetensors_headers_raise_safetensors_error(tmp_path, header, match):
    p = _write(tmp_path / "bad.safetensors", None, b"", raw_header=header.encode())
    with pytest.raises(SafetensorsError, match=match) as e:
        nbconv.load(p)
    assert "bad.safetensors" in str(e.value)


def test_big_endian_pt_files_are_read(tmp_path):
    # what torch writes on a big-endian machine: byteorder "big", records big-endian
    w = np.arange(6, dtype=np.float32) - 2.5
    bf = torch.tensor([1.5, -2.0]).to(torch.bfloat16).view(torch.int16).numpy()
    pkl = _tensor_pkl(numel=6, size=(2, 3), stride=(3, 1))[:-2] + _tensor_pkl(
        numel=2, size=(2,), stride=(1,), storage="BFloat16Storage", key="1")[4:-2].replace(
        b"X\x01\x00\x00\x00w", b"X\x01\x00\x00\x00b") + b"u."
    p = _zip(tmp_path / "big.pt", {"data.pkl": pkl, "byteorder": b"big",
                                    "data/0": w.astype(">f4").tobytes(),
                                    "data/1": bf.astype(">i2").tobytes()})
    got = load_torch(p)
    assert same_bits(got["w"], w.reshape(2, 3))
    assert got["b"].dtype == np.float32 and got["b"].tolist() == [1.5, -2.0]


def test_shared_containers_are_walked_once(tmp_path):
    # a "billion laughs" data.pkl: list i holds list i-1 twice, 60 levels (2**60 paths)
    pkl = b"\x80\x02]q\x00"
    for i in range(1, 61):
        pkl += b"(h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"lq" + bytes([i])
    p = _zip(tmp_path / "laughs.pt", {"data.pkl": pkl + b"."})
    got = load_torch(p)
    assert got[0] is got[1] and len(got[0][0]) == 2
    # saved again: the .pt writer keeps the sharing; safetensors cannot, and says so
    nbconv.save(got, tmp_path / "again.pt")
    again = torch.load(tmp_path / "again.pt", weights_only=True)
    assert again[0] is again[1]
    with pytest.raises(ValueError, match="more than 1000000 entries.*save it as .pt"):
        nbconv.save({"x": got}, tmp_path / "again.safetensors")
