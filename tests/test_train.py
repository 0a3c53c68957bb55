"""nbconv.train (Trainer, checkpoints, metrics) and nbconv.viz (PNG files).

The checkpoint mechanics are tested with a tiny stand-in network and optimizer defined here (so
they do not depend on any kernel) and again with the real three-layer net and Adam.
"""
import json
import os
import zipfile

import numpy as np
import pytest

from nbconv import viz
from nbconv.layers import Layer
from nbconv.checkpoint import decode as _decode, encode as _encode
from nbconv.train import CheckpointError, Trainer


# ---- stand-ins: a linear classifier with dropout and a buffer, momentum SGD, a step schedule ---

class TinyNet(Layer):
    def __init__(self, d, k=3, seed=0, dtype=np.float64):
        super().__init__()
        g = np.random.default_rng(seed)
        self.params = {"weight": g.normal(0, 0.1, (k, d)).astype(dtype), "bias": np.zeros(k, dtype)}
        self.grads = {n: np.zeros_like(p) for n, p in self.params.items()}
        self.buffers = {"seen": np.zeros(1, dtype)}
        self.drop_rng = np.random.default_rng(seed + 100)
        self.num_batches_tracked = 0  # an int counter outside buffers, like BatchNorm2d's

    def forward(self, x):
        h = x.reshape(len(x), -1)
        if self.training:
            h = h * (self.drop_rng.random(h.shape) >= 0.25) / 0.75
            self.buffers["seen"] += len(x)
            self.num_batches_tracked += 1
        self._save((len(x), len(self.params["bias"])), h)
        return h @ self.params["weight"].T + self.params["bias"]

    def backward(self, dy):
        dy, h = self._load(dy)
        self.grads["weight"][...] = dy.T @ h
        self.grads["bias"][...] = dy.sum(0)


class TinySGD:
    def __init__(self, params, grads, lr=0.1, momentum=0.9):
        self.params, self.grads, self.lr, self.momentum = params, grads, lr, momentum
        self.velocity = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self):
        for k, p in self.params.items():
            self.velocity[k] = self.momentum * self.velocity[k] + self.grads[k]
            p -= self.lr * self.velocity[k]

    def state_dict(self):
        return {"lr": self.lr, "momentum": self.momentum, "velocity": dict(self.velocity)}

    def load_state_dict(self, s):
        if set(s["velocity"]) != set(self.params):
            raise ValueError("velocity keys differ")
        self.lr, self.momentum = s["lr"], s["momentum"]
        self.velocity = {k: np.array(v) for k, v in s["velocity"].items()}


class TinyStep:
    def __init__(self, opt):
        self.opt, self.count = opt, 0

    def step(self):
        self.count += 1
        self.opt.lr *= 0.5

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, s):
        self.count = s["count"]


def softmax_ce(logits, labels):
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(1, keepdims=True)
    n = len(labels)
    loss = -np.log(p[np.arange(n), labels]).mean()
    p[np.arange(n), labels] -= 1
    return loss, p / n


def tiny_data(n=60, seed=0):
    g = np.random.default_rng(seed)
    y = g.integers(0, 3, n)
    x = g.normal(size=(n, 2, 4, 4)) + y[:, None, None, None]
    return dict(x_train=x[:40], y_train=y[:40], x_val=x[40:50], y_val=y[40:50],
                x_test=x[50:], y_test=y[50:])


def tiny_trainer(seed=0, **kw):
    net = TinyNet(32, seed=seed)
    opt = TinySGD(net.params, net.grads, lr=0.05)
    return Trainer(net, opt, TinyStep(opt), loss=softmax_ce, batch_size=8, crop=1, flip=True,
                   seed=7, progress=False, **kw)


def _same_state(a, b):
    for k in a.model.params:
        np.testing.assert_array_equal(a.model.params[k], b.model.params[k])
    for k in a.model.buffers:
        np.testing.assert_array_equal(a.model.buffers[k], b.model.buffers[k])
    for k in a.optimizer.velocity:
        np.testing.assert_array_equal(a.optimizer.velocity[k], b.optimizer.velocity[k])


# ---- training loop ---------------------------------------------------------------------------------

def test_fit_history_metrics_best(tmp_path):
    tr = tiny_trainer()
    data = tiny_data()
    before = {k: v.copy() for k, v in data.items()}
    metrics = tmp_path / "m" / "metrics.json"
    seen = []
    hist = tr.fit(data, 3, metrics=metrics, on_epoch_end=lambda t: seen.append(t.epoch))
    assert seen == [1, 2, 3] and tr.epoch == 3 and len(hist) == 3
    for k, v in before.items():  # the data set is never modified (crop/flip make new batches)
        np.testing.assert_array_equal(data[k], v)
    keys = ["epoch", "loss", "train_accuracy", "val_accuracy", "test_accuracy", "seconds",
            "images_per_second"]
    with open(metrics) as f:
        m = json.load(f)
    assert list(m) == ["epochs", "compile_seconds"] and m["compile_seconds"] >= 0
    assert [list(e) for e in m["epochs"]] == [keys] * 3
    assert [e["epoch"] for e in m["epochs"]] == [1, 2, 3]
    for e in m["epochs"]:
        assert all(0 <= e[k] <= 1 for k in keys[2:5]) and e["seconds"] > 0
        assert e["images_per_second"] > 0 and np.isfinite(e["loss"])
    assert hist[-1]["loss"] < hist[0]["loss"] or hist[-1]["train_accuracy"] > hist[0]["train_accuracy"]
    assert tr.optimizer.lr == 0.05 / 8  # scheduler stepped once per epoch
    assert tr.model.buffers["seen"][0] == 3 * 40  # trained in train mode on every image
    assert tr.best_epoch == 1 + int(np.argmax([e["val_accuracy"] for e in hist]))
    best = tr.best_params["params"]["weight"].copy()
    tr.model.params["weight"][...] = 0
    tr.restore_best()
    np.testing.assert_array_equal(tr.model.params["weight"], best)
    assert not list(tmp_path.glob("m/*.tmp"))
    # fit with a target already reached does nothing
    assert len(tr.fit(data, 2)) == 3


def test_evaluate_uses_eval_mode():
    tr = tiny_trainer()
    d = tiny_data()
    before = tr.model.drop_rng.bit_generator.state
    a = tr.evaluate(d["x_test"], d["y_test"])
    assert a == tr.evaluate(d["x_test"], d["y_test"])  # no dropout noise
    assert tr.model.drop_rng.bit_generator.state == before and tr.model.training
    manual = np.mean(np.argmax(d["x_test"].reshape(10, -1) @ tr.model.params["weight"].T, 1)
                     == d["y_test"])
    assert a == manual


def test_progress_output(capsys):
    tr = tiny_trainer()
    tr.progress = tr.verbose = True
    tr.fit(tiny_data(), 1)
    out = capsys.readouterr()
    assert "epoch 1/1" in out.out and "img/s" in out.out
    assert "epoch 1/1" in out.err  # the tqdm bar


# ---- checkpoints -------------------------------------------------------------------------------------

def test_resume_is_exact(tmp_path):
    data = tiny_data()
    straight = tiny_trainer()
    straight.fit(data, 3)
    first = tiny_trainer()
    first.fit(data, 1, checkpoint=tmp_path / "ck.npz")
    resumed = tiny_trainer(seed=5)  # a different init: everything must come from the file
    resumed.load(tmp_path / "ck.npz")
    assert resumed.epoch == 1 and resumed.optimizer.lr == first.optimizer.lr
    resumed.fit(data, 3)
    _same_state(straight, resumed)
    assert straight.model.drop_rng.bit_generator.state == resumed.model.drop_rng.bit_generator.state
    assert straight.model.num_batches_tracked == resumed.model.num_batches_tracked == 15
    strip = lambda h: [{k: v for k, v in e.items() if k not in ("seconds", "images_per_second")}
                       for e in h]  # noqa: E731
    assert strip(straight.history) == strip(resumed.history)
    assert straight.best_epoch == resumed.best_epoch
    np.testing.assert_array_equal(straight.best_params["params"]["weight"],
                                  resumed.best_params["params"]["weight"])


def test_checkpoint_is_written_atomically(tmp_path, monkeypatch):
    tr = tiny_trainer()
    tr.fit(tiny_data(), 1)
    path = tmp_path / "ck.npz"
    tr.save(path)
    good = path.read_bytes()
    with zipfile.ZipFile(path) as z:  # plain arrays, no pickles
        assert "__meta__.npy" in z.namelist() and "param/weight.npy" in z.namelist()

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(os, "fsync", boom)
    tr.model.params["weight"] += 1
    with pytest.raises(OSError, match="disk full"):
        tr.save(path)
    assert path.read_bytes() == good and os.listdir(tmp_path) == ["ck.npz"]


def _loaded_state(tr):
    return ({k: v.copy() for k, v in tr.model.params.items()}, tr.model.buffers["seen"].copy(),
            {k: v.copy() for k, v in tr.optimizer.velocity.items()}, tr.epoch, len(tr.history),
            tr.rng.bit_generator.state, tr.model.drop_rng.bit_generator.state)


def _assert_untouched(tr, snap):
    now = _loaded_state(tr)
    for k in snap[0]:
        np.testing.assert_array_equal(now[0][k], snap[0][k])
    np.testing.assert_array_equal(now[1], snap[1])
    for k in snap[2]:
        np.testing.assert_array_equal(now[2][k], snap[2][k])
    assert now[3:] == snap[3:]


def test_corrupted_checkpoint_raises_and_changes_nothing(tmp_path):
    src = tiny_trainer()
    src.fit(tiny_data(), 2)
    path = tmp_path / "ck.npz"
    src.save(path)
    good = path.read_bytes()

    target = tiny_trainer(seed=3)
    target.fit(tiny_data(1), 1)
    snap = _loaded_state(target)
    cases = {
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "garbage": b"not a checkpoint at all" * 10,
    }
    # a flipped byte inside the stored parameter data (caught by zip CRC or the checksum)
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("param/weight.npy")
    flip = bytearray(good)
    flip[info.header_offset + 30 + len(info.filename) + info.extra.__len__() + 140] ^= 0xFF
    cases["bitflip"] = bytes(flip)
    for name, payload in cases.items():
        bad = tmp_path / f"{name}.npz"
        bad.write_bytes(payload)
        with pytest.raises(CheckpointError, match="corrupted|unreadable|not an nbconv"):
            target.load(bad)
        _assert_untouched(target, snap)

    # a re-packed file whose arrays were altered but whose zip is valid: the checksum catches it
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["param/bias"] = arrays["param/bias"] + 1
    np.savez(tmp_path / "altered.npz", **arrays)
    with pytest.raises(CheckpointError, match="checksum"):
        target.load(tmp_path / "altered.npz")
    _assert_untouched(target, snap)
    np.savez(tmp_path / "foreign.npz", a=np.zeros(3))
    with pytest.raises(CheckpointError, match="not an nbconv checkpoint"):
        target.load(tmp_path / "foreign.npz")
    with pytest.raises(FileNotFoundError):
        target.load(tmp_path / "missing.npz")
    target.load(path)  # the good file still loads
    np.testing.assert_array_equal(target.model.params["weight"], src.model.params["weight"])


def test_mismatched_checkpoint_raises_and_changes_nothing(tmp_path):
    src = tiny_trainer()
    src.fit(tiny_data(), 1)
    path = tmp_path / "ck.npz"
    src.save(path)

    other = TinyNet(32, k=4)
    opt = TinySGD(other.params, other.grads)
    wrong_model = Trainer(other, opt, TinyStep(opt), loss=softmax_ce, progress=False)
    snap = {k: v.copy() for k, v in other.params.items()}
    with pytest.raises(CheckpointError, match="another model.*weight"):
        wrong_model.load(path)
    for k in snap:
        np.testing.assert_array_equal(other.params[k], snap[k])

    f32 = TinyNet(32, dtype=np.float32)
    opt = TinySGD(f32.params, f32.grads)
    with pytest.raises(CheckpointError, match="another model"):
        Trainer(f32, opt, TinyStep(opt), loss=softmax_ce, progress=False).load(path)

    net = TinyNet(32)
    with pytest.raises(CheckpointError, match="scheduler"):
        Trainer(net, TinySGD(net.params, net.grads), loss=softmax_ce, progress=False).load(path)

    class OtherOpt(TinySGD):
        pass
    net = TinyNet(32)
    opt = OtherOpt(net.params, net.grads)
    with pytest.raises(CheckpointError, match="TinySGD"):
        Trainer(net, opt, TinyStep(opt), loss=softmax_ce, progress=False).load(path)


def test_optimizer_refusing_state_rolls_back(tmp_path):
    src = tiny_trainer()
    src.fit(tiny_data(), 1)
    src.optimizer.velocity = {"weight": src.optimizer.velocity["weight"]}  # drop a key
    path = tmp_path / "ck.npz"
    src.save(path)
    target = tiny_trainer(seed=2)
    target.fit(tiny_data(1), 1)
    snap = _loaded_state(target)
    with pytest.raises(CheckpointError, match="rejected"):
        target.load(path)
    _assert_untouched(target, snap)


def test_state_encoding_round_trip():
    state = {"lr": 0.1, 3: {"m": np.arange(3.0), "t": np.int64(7)}, "betas": (0.9, 0.999),
             "list": [np.ones((2, 2), np.float32), None, "x", True], "big": 2 ** 100}
    arrays = {}
    tree = json.loads(json.dumps(_encode(state, arrays, "opt")))
    back = _decode(tree, arrays)
    assert back["lr"] == 0.1 and back["betas"] == (0.9, 0.999) and back["big"] == 2 ** 100
    assert back[3]["t"] == 7 and back[3]["t"].dtype == np.int64
    np.testing.assert_array_equal(back[3]["m"], np.arange(3.0))
    assert back["list"][0].dtype == np.float32 and back["list"][1:] == [None, "x", True]
    with pytest.raises(TypeError, match="checkpoint"):
        _encode({"f": object()}, {}, "opt")


# ---- PNG pictures -------------------------------------------------------------------------------------

def test_filter_grid(rng):
    w = rng.normal(size=(5, 3, 2, 3))
    img = viz.filter_grid(w, scale=2, border=1)
    # 5 filters -> 3 columns x 2 rows of 4x6 tiles with 1-pixel borders
    assert img.shape == (2 * 5 + 1, 3 * 7 + 1, 3) and img.dtype == np.uint8
    tile = img[1:5, 1 + 7:7 + 7]  # filter 1
    assert tile.min() == 0 and tile.max() == 255  # normalised per filter
    np.testing.assert_array_equal(tile[::2, ::2], np.round(
        255 * (w[1] - w[1].min()) / (w[1].max() - w[1].min())).astype(np.uint8).transpose(1, 2, 0))
    assert (img[0] == 255).all() and (img[5 + 1:, 1 + 2 * 7:] == 255).all()  # border, empty cell
    assert viz.filter_grid(rng.normal(size=(4, 1, 3, 3))).shape == (2 * 13 + 1, 2 * 13 + 1, 3)


def test_pictures_through_matplotlib(tmp_path, rng):
    pytest.importorskip("matplotlib")
    import matplotlib.image as mpimg
    hist = [{"epoch": i + 1, "loss": 2.0 / (i + 1), "train_accuracy": 0.2 + 0.1 * i,
             "val_accuracy": 0.2 + 0.05 * i, "test_accuracy": None} for i in range(5)]
    viz.save_curves(tmp_path / "c.png", hist, title="model x")
    viz.save_curves(tmp_path / "one.png", hist[:1])   # one epoch works
    viz.save_filters(tmp_path / "f.png", rng.normal(size=(8, 3, 5, 5)))
    viz.save_speed_chart(tmp_path / "s.png", [{"label": "S1 fwd", "nbconv": 2.0, "torch": 1.0,
                                               "im2col": 0.5},
                                              {"label": "S2 bwd", "nbconv": 1.5, "torch": 1.0,
                                               "im2col": None}], "speed", ylabel="ratio to torch")
    for name in ("c.png", "one.png", "f.png", "s.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = mpimg.imread(tmp_path / name)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match="history"):
        viz.save_curves(tmp_path / "e.png", [])
    with pytest.raises(ValueError, match="label"):
        viz.save_speed_chart(tmp_path / "e.png", [{"nbconv": 1.0}], "t")


def test_importing_nbconv_does_not_import_matplotlib():
    import subprocess
    import sys
    code = "import sys, nbconv, nbconv.viz; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.strip() == "False", out.stderr


# ---- the compile notice (nbconv._config) ---------------------------------------------------------

_NOTICE = "nbconv: compiling Numba kernels"


def _run_cold(code, cache_dir, quiet=None):
    """Run ``code`` in a fresh process whose Numba cache is ``cache_dir`` (and NBCONV_QUIET
    ``quiet``, unset for None); (stdout, stderr)."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root, NUMBA_CACHE_DIR=str(cache_dir))
    env.pop("NBCONV_QUIET", None)
    if quiet is not None:
        env["NBCONV_QUIET"] = quiet
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                         env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout, out.stderr


def test_compile_notice_once_and_silenced(tmp_path):
    """Outside the Trainer, the first kernel compiled in a process (not in Numba's disk cache)
    says so once on stderr (issue 19: the README's snippet sat 39 s silent); not again in the
    process, not for a kernel loaded from the cache, and not with NBCONV_QUIET=1 or with the
    "nbconv" logger raised above WARNING."""
    code = """if True:
        import numpy as np, nbconv.functional as F
        F.relu(np.ones(3, np.float64))               # compiles: the notice
        y = F.relu(np.ones(3, np.float32))           # compiles again: no second notice
        F.relu_backward(y, y)
        print("done")
    """
    cold = tmp_path / "cold"
    out, err = _run_cold(code, cold)
    assert out.strip() == "done" and err.count(_NOTICE) == 1, err
    assert "NBCONV_QUIET=1" in err and "python -m nbconv.warmup" in err
    out, err = _run_cold(code, cold, quiet="0")  # all three now load from the cache
    assert out.strip() == "done" and _NOTICE not in err, err
    out, err = _run_cold(code, tmp_path / "quiet", quiet="1")
    assert out.strip() == "done" and _NOTICE not in err, err
    out, err = _run_cold("import logging; logging.getLogger('nbconv').setLevel(logging.ERROR)\n"
                         + code, tmp_path / "logging")
    assert out.strip() == "done" and _NOTICE not in err, err


def test_compile_notice_not_doubled_by_trainer(tmp_path):
    """The Trainer's warm-up prints its own "compiling kernels" line: no notice beside it, nor
    for a kernel that compiles later in the process."""
    code = """if True:
        import numpy as np, nbconv

        class NoStep:
            def step(self):
                pass

        model = nbconv.Sequential(nbconv.Flatten())
        t = nbconv.Trainer(model, NoStep(), batch_size=4, progress=False, verbose=True)
        t.warm_up({"x_train": np.ones((6, 3), np.float32), "y_train": np.arange(6) % 3})
        nbconv.functional.relu(np.ones(3, np.float64))
    """
    out, err = _run_cold(code, tmp_path / "cold")
    assert "compiling kernels for float32" in out and "compiled in" in out, out
    assert _NOTICE not in err, err


# ---- the training command (nbconv/cli.py, scripts/train_cifar.py) ---------------------------------

def test_train_command_outputs_and_resume(tmp_path, capsys):
    from nbconv import cli
    from nbconv import data as D
    raw = D.load_cifar10()
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    D.save_batch(d / "data_batch_1", raw["x_train"][:80], raw["y_train"][:80], "b1")
    D.save_batch(d / "test_batch", raw["x_test"][:30], raw["y_test"][:30], "t")
    out = tmp_path / "run"
    common = ["--data-dir", str(d), "--val-size", "16", "--batch-size", "16", "--hidden", "8",
              "--out", str(out), "--no-progress"]
    assert cli.main(common + ["--epochs", "1"]) == 0
    assert "test accuracy " in capsys.readouterr().out
    pictures = ("curves.png", "filters.png") if viz.have_matplotlib() else ()
    for name in ("metrics.json", "checkpoint.npz", "args.json") + pictures:
        assert (out / name).exists(), name
    assert cli.main(common + ["--epochs", "2", "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out
    with open(out / "metrics.json") as f:
        m = json.load(f)
    acc = m["result"]["test_accuracy"]
    assert [e["epoch"] for e in m["epochs"]] == [1, 2]
    best = m["result"]["epoch"]
    assert m["result"]["params"] == "best-val" and m["epochs"][best - 1]["test_accuracy"] == acc
    assert set(m["epochs"][0]) == {"epoch", "loss", "train_accuracy", "val_accuracy",
                                   "test_accuracy", "seconds", "images_per_second"}
    # a straight 2-epoch run gives the same numbers
    assert cli.main(common[:-3] + ["--out", str(tmp_path / "straight"), "--no-progress",
                                   "--epochs", "2"]) == 0
    with open(tmp_path / "straight" / "metrics.json") as f:
        s = json.load(f)
    assert [e["loss"] for e in s["epochs"]] == [e["loss"] for e in m["epochs"]]
