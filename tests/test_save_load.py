"""nbconv.save / nbconv.load as a PyTorch user uses torch.save / torch.load (issue 19, item 9):
nested objects in both formats, .pt files that torch.load(weights_only=True) reads, bfloat16,
training checkpoints, the suffix rule."""
import zipfile

import numpy as np
import pytest
import torch

import nbconv
from nbconv import optim
from nbconv.checkpoint import CheckpointError, model_state
from nbconv.layers import BatchNorm2d, Conv2d, Flatten, Linear, ReLU, Sequential
from nbconv.serialization import TorchFileError, load_safetensors, load_torch, save_torch

st_numpy = pytest.importorskip("safetensors.numpy")
st_torch = pytest.importorskip("safetensors.torch")

SUFFIXES = [".safetensors", ".pt"]


def assert_same(a, b, where="obj"):
    """Equal nested objects: same container types and keys, arrays equal bit for bit."""
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert a.tobytes() == np.ascontiguousarray(b).tobytes(), where
        return
    assert type(a) is type(b), (where, type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and a != a:
        assert b != b, where
    else:
        assert a == b, where


def small_model(seed=0):
    return Sequential(Conv2d(3, 4, 3, padding=1, seed=seed), BatchNorm2d(4), ReLU(), Flatten(),
                      Linear(4 * 5 * 5, 3, seed=seed))


def trained_optimizer(cls, **kw):
    model = small_model()
    opt = cls(model.params, model.grads, **kw)
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 5)).astype(np.float32)
    for _ in range(2):
        y = model(x)
        model.backward(np.ones_like(y))
        opt.step()
    return model, opt


OPTIMIZERS = [(optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
              (optim.Adam, dict(lr=1e-3, amsgrad=True)),
              (optim.AdamW, dict(lr=1e-3, betas=(0.8, 0.99))),
              (optim.RMSprop, dict(lr=1e-2))]


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("cls, kw", OPTIMIZERS, ids=[c.__name__ for c, _ in OPTIMIZERS])
def test_optimizer_state_dict_round_trips(tmp_path, suffix, cls, kw):
    model, opt = trained_optimizer(cls, **kw)
    sd = opt.state_dict()
    p = tmp_path / f"opt{suffix}"
    nbconv.save(sd, p)
    got = nbconv.load(p)
    assert_same(sd, got)
    # the loaded state continues the run exactly
    twin_model = small_model()
    twin_model.load_state_dict(model.state_dict())
    twin = cls(twin_model.params, twin_model.grads, **kw)
    twin.load_state_dict(got)
    for m, o in ((model, opt), (twin_model, twin)):
        for g in m.grads.values():
            g[...] = 0.5
        o.step()
    for k in model.params:
        np.testing.assert_array_equal(model.params[k], twin_model.params[k])


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_nested_checkpoint_dict_round_trips(tmp_path, suffix):
    model, opt = trained_optimizer(optim.Adam)
    obj = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3,
           "best": None, "lr": 1e-3, "done": False, "name": "run/1 ~x", "history": [
               {"loss": 2.5, "acc": 0.25}, {"loss": float("nan"), "acc": float("inf")}],
           "shape": (2, (3, 4)), 7: np.arange(3), -2 ** 70: "big int key", "empty": {},
           "none": [], "np_scalar": np.float32(0.5), "big": 2 ** 80}
    p = tmp_path / f"ckpt{suffix}"
    nbconv.save(obj, p)
    got = nbconv.load(p)
    want = dict(obj, np_scalar=0.5)     # NumPy scalars are saved as Python numbers
    assert_same(want, got)
    model2 = small_model(seed=5)
    model2.load_state_dict(got["model"])
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(model2.state_dict()[k], v)


def test_one_array_twice_is_stored_once(tmp_path):
    a = np.arange(6.0)
    for suffix in SUFFIXES:
        p = tmp_path / f"tied{suffix}"
        nbconv.save({"a": a, "b": {"c": a}}, p)
        got = nbconv.load(p)
        np.testing.assert_array_equal(got["b"]["c"], a)
        if suffix == ".pt":
            with zipfile.ZipFile(p) as z:
                assert [n for n in z.namelist() if "/data/" in n] == ["archive/data/0"]
        else:
            assert list(st_numpy.load_file(str(p))) == ["a"]


def test_nested_safetensors_is_flat_for_other_readers(tmp_path):
    model, opt = trained_optimizer(optim.SGD, lr=0.1, momentum=0.9)
    p = tmp_path / "opt.safetensors"
    nbconv.save({"optimizer": opt.state_dict(), "a/b~c": {"x": np.ones(2)}, 0: np.zeros(1)}, p)
    flat = st_numpy.load_file(str(p))
    assert "optimizer/state/0.weight/momentum_buffer" in flat
    assert "a~1b~0c/x" in flat and "0" in flat
    np.testing.assert_array_equal(flat["optimizer/state/0.weight/momentum_buffer"],
                                  opt.state_dict()["state"]["0.weight"]["momentum_buffer"])
    got, meta = load_safetensors(p, return_metadata=True)
    assert meta == {} and got["a/b~c"]["x"].tolist() == [1, 1]
    with pytest.raises(ValueError, match="tensor name '0'"):
        nbconv.save({0: np.zeros(1), "0": np.ones(1), "x": {}}, tmp_path / "c.safetensors")


# ---- .pt files torch reads -----------------------------------------------------------------

def all_dtypes():
    rng = np.random.default_rng(2)
    return {
        "f32": rng.standard_normal((3, 4)).astype(np.float32),
        "f64": rng.standard_normal(5),
        "f16": rng.standard_normal((2, 2)).astype(np.float16),
        "i64": np.array(7, np.int64),
        "i32": np.arange(6, dtype=np.int32).reshape(2, 3),
        "i16": np.arange(-3, 3, dtype=np.int16),
        "i8": np.arange(-4, 4, dtype=np.int8),
        "u8": np.arange(5, dtype=np.uint8),
        "bool": np.array([True, False, True]),
        "empty": np.zeros((0, 4), np.float32),
        "strided": np.arange(20, dtype=np.float64).reshape(4, 5)[:, ::2],
        "fortran": np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),
        "big_endian": np.arange(4, dtype=">f4"),
        "nan": np.array([np.nan, np.inf, -0.0], np.float32),
    }


def test_pt_written_without_torch_is_read_by_torch(tmp_path):
    arrays = all_dtypes()
    p = tmp_path / "m.pt"
    nbconv.save(arrays, p)
    got = torch.load(p, weights_only=True)
    assert list(got) == list(arrays)
    for k, v in arrays.items():
        want = np.array(v, dtype=v.dtype.newbyteorder("="), order="C")
        assert got[k].numpy().dtype == want.dtype, k
        assert got[k].numpy().tobytes() == want.tobytes() and got[k].shape == want.shape, k
        assert got[k].is_contiguous()
    assert_same({k: np.array(v, v.dtype.newbyteorder("="), order="C") for k, v in
                 arrays.items()}, load_torch(p))
    # the layout torch writes: archive/..., records at multiples of 64 bytes, stored
    with zipfile.ZipFile(p) as z:
        names = z.namelist()
        assert names[0] == "archive/data.pkl" and "archive/byteorder" in names
        assert z.read("archive/version") == b"3\n" and z.read("archive/byteorder") == b"little"
        for info in z.infolist():
            start = info.header_offset + 30 + len(info.filename) + len(info.extra)
            assert start % 64 == 0 and info.compress_type == zipfile.ZIP_STORED, info.filename
    # uint16/32/64 have no torch storage type: refused before anything is written
    with pytest.raises(TypeError, match="'u32'.*uint32"):
        nbconv.save({"u32": np.zeros(2, np.uint32)}, tmp_path / "u.pt")
    assert not (tmp_path / "u.pt").exists()


def test_pt_nested_objects_for_torch(tmp_path):
    model, opt = trained_optimizer(optim.Adam)
    obj = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3,
           "hist": [1.5, None, True, "x"], 0: (1, -2 ** 40, 2 ** 70)}
    p = tmp_path / "ckpt.pth"
    nbconv.save(obj, p)
    got = torch.load(p, weights_only=True)
    assert got["epoch"] == 3 and got["hist"] == [1.5, None, True, "x"]
    assert got[0] == (1, -2 ** 40, 2 ** 70)
    assert got["optimizer"]["hyper"]["betas"] == (0.9, 0.999)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(got["model"][k].numpy(), v)
    exp_avg = opt.state_dict()["state"]["0.weight"]["exp_avg"]
    np.testing.assert_array_equal(got["optimizer"]["state"]["0.weight"]["exp_avg"], exp_avg)


def test_pt_from_nbconv_loads_into_a_torch_net(tmp_path):
    net = small_model(seed=3)
    net.layers[1].running_mean[...] = np.arange(4)
    nbconv.save(net.state_dict(), tmp_path / "n.pt")
    tnet = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                               torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(100, 3))
    tnet.load_state_dict(torch.load(tmp_path / "n.pt", weights_only=True))
    x = np.random.default_rng(1).standard_normal((2, 3, 5, 5)).astype(np.float32)
    net.eval(), tnet.eval()
    with torch.no_grad():
        np.testing.assert_allclose(tnet(torch.from_numpy(x)).numpy(), net(x), rtol=1e-5,
                                   atol=1e-5)


def test_torch_optimizer_state_dict_loads(tmp_path):
    lin = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-3)
    lin(torch.randn(4, 3)).sum().backward()
    opt.step()
    torch.save({"opt": opt.state_dict(), "epoch": 1}, tmp_path / "t.pt")
    got = nbconv.load(tmp_path / "t.pt")
    want = torch.load(tmp_path / "t.pt", weights_only=True)
    assert got["epoch"] == 1 and list(got["opt"]["state"]) == [0, 1]
    np.testing.assert_array_equal(got["opt"]["state"][0]["exp_avg"],
                                  want["opt"]["state"][0]["exp_avg"].numpy())
    g = got["opt"]["param_groups"][0]
    assert g["betas"] == (0.9, 0.999) and g["params"] == [0, 1] and g["foreach"] is None


def test_save_suffix_rule(tmp_path):
    sd = {"w": np.ones(2, np.float32)}
    for name in ("m.safetensors", "m.pt", "m.pth", "M.PT"):
        nbconv.save(sd, tmp_path / name)
        assert_same(sd, nbconv.load(tmp_path / name))
    assert (tmp_path / "m.pt").read_bytes()[:2] == b"PK"
    assert (tmp_path / "m.safetensors").read_bytes()[8:9] == b"{"
    for name in ("m.bin", "m", "m.npz", "m.ckpt"):
        with pytest.raises(ValueError, match="suffix.*save_safetensors.*save_torch"):
            nbconv.save(sd, tmp_path / name)
        assert not (tmp_path / name).exists()
    save_torch(sd, tmp_path / "any.name")               # the explicit forms take any name
    assert_same(sd, nbconv.load(tmp_path / "any.name"))


def test_save_refuses_what_it_cannot_store(tmp_path):
    p = tmp_path / "x.pt"
    loop = []
    loop.append(loop)
    for bad, err, match in [({"a": {1, 2}}, TypeError, "'a'.*set"),
                            ({"a": np.array([None], object)}, TypeError, "'a'.*object"),
                            ({"a": b"bytes"}, TypeError, "bytes"),
                            ({(1, 2): np.ones(1)}, TypeError, "keys must be str or int"),
                            ({"a": loop}, ValueError, "contains itself"),
                            ({"a": np.complex64(1)}, TypeError, "complex64")]:
        for suffix in SUFFIXES:
            with pytest.raises(err, match=match):
                nbconv.save(bad, p.with_suffix(suffix))
    assert list(tmp_path.iterdir()) == []


# ---- bfloat16 and float16 ---------------------------------------------------------------------

def test_bfloat16_is_widened_float16_kept(tmp_path):
    t = {"bf": torch.randn(3, 5).to(torch.bfloat16), "h": torch.randn(4).half(),
         "bf_view": torch.randn(4, 4).to(torch.bfloat16)[:, 1]}
    torch.save(t, tmp_path / "t.pt")
    st_torch.save_file({k: v.contiguous() for k, v in t.items()}, str(tmp_path / "t.safetensors"))
    for p in (tmp_path / "t.pt", tmp_path / "t.safetensors"):
        got = nbconv.load(p)
        for k in ("bf", "bf_view"):
            assert got[k].dtype == np.float32, p
            np.testing.assert_array_equal(got[k], t[k].float().numpy())
        assert got["h"].dtype == np.float16
        np.testing.assert_array_equal(got["h"], t["h"].numpy())


# ---- training checkpoints -----------------------------------------------------------------

def test_load_reads_a_training_checkpoint(tmp_path):
    model = small_model()
    opt = optim.SGD(model.params, model.grads, lr=0.1)
    tr = nbconv.Trainer(model, opt, batch_size=4, seed=0, progress=False, verbose=False,
                        warmup=False)
    g = np.random.default_rng(0)
    data = dict(x_train=g.standard_normal((8, 3, 5, 5)).astype(np.float32),
                y_train=g.integers(0, 3, 8), x_val=g.standard_normal((4, 3, 5, 5)).astype(
                    np.float32), y_val=g.integers(0, 3, 4))
    ckpt = tmp_path / "run" / "checkpoint.npz"
    tr.fit(data, 2, checkpoint=ckpt)
    got = nbconv.load(ckpt)
    assert_same(model.state_dict(), dict(sorted(got.items(), key=lambda kv: list(
        model.state_dict()).index(kv[0]))))
    twin = small_model(seed=9)
    twin.load_state_dict(got)
    twin.eval(), model.eval()
    np.testing.assert_array_equal(twin(data["x_val"]), model(data["x_val"]))
    best = model_state(ckpt, best=True)
    for k, v in tr.best_params["params"].items():
        np.testing.assert_array_equal(best[k], v)
    assert set(best) == set(got)
    # a run without a validation split records no best epoch
    tr2 = nbconv.Trainer(small_model(), optim.SGD(*(lambda m: (m.params, m.grads))(
        small_model()), lr=0.1), batch_size=4, progress=False, verbose=False, warmup=False)
    tr2.save(tmp_path / "fresh.npz")
    with pytest.raises(CheckpointError, match="fresh.npz.*no best epoch"):
        model_state(tmp_path / "fresh.npz", best=True)
    # damaged: the documented error
    raw = ckpt.read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises((CheckpointError, TorchFileError), match="cut.npz"):
        nbconv.load(tmp_path / "cut.npz")
