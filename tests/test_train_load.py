"""Trainer.load is all or nothing (issue 11, bug D): a checkpoint whose checksum is valid but
whose content disagrees with its metadata raises CheckpointError before anything is assigned.

The bad checkpoints are a good one re-signed after an edit (nbconv.checkpoint.write recomputes
the checksum), so only the content checks can catch them."""
import numpy as np
import pytest

from nbconv import checkpoint as ckpt
from nbconv import optim
from nbconv.models import three_layer_convnet
from nbconv.train import CheckpointError, Trainer


def make_trainer(seed=0):
    model = three_layer_convnet(hidden=8, num_filters=4, filter_size=3, input_shape=(3, 8, 8),
                                seed=seed)
    opt = optim.Adam(model.params, model.grads, lr=1e-2)
    return Trainer(model, opt, optim.CosineAnnealingLR(opt, T_max=4), batch_size=8,
                   seed=seed, progress=False, verbose=False, warmup=False)


def data(seed=0):
    g = np.random.default_rng(seed)
    x = g.standard_normal((24, 3, 8, 8)).astype(np.float32)
    y = g.integers(0, 10, 24)
    return dict(x_train=x[:16], y_train=y[:16], x_val=x[16:], y_val=y[16:])


def snapshot(tr):
    return (tr.model.state_dict(), tr.optimizer.state_dict(), tr.scheduler.state_dict(),
            tr.epoch, list(tr.history), tr.rng.bit_generator.state, tr.best_epoch,
            None if tr.best_params is None else
            {k: v.copy() for k, v in tr.best_params["params"].items()})


def assert_same(a, b):
    for k in a[0]:
        np.testing.assert_array_equal(a[0][k], b[0][k])
    assert a[1]["step_count"] == b[1]["step_count"]
    for k, s in a[1]["state"].items():
        for n in s:
            np.testing.assert_array_equal(s[n], b[1]["state"][k][n])
    assert a[2:7] == b[2:7]
    if a[7] is not None:
        for k in a[7]:
            np.testing.assert_array_equal(a[7][k], b[7][k])


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    src = make_trainer()
    src.fit(data(), 2)
    path = tmp_path_factory.mktemp("ck") / "good.npz"
    src.save(path)
    return path


def _drop(m, a):
    del a["param/4.bias"]


def _broadcast_bias(m, a):
    a["param/4.bias"] = a["param/4.bias"][:1].copy()


def _float64(m, a):
    for k in list(a):
        if k.startswith("param/"):
            a[k] = a[k].astype(np.float64)


def _float64_best(m, a):
    a["best_params/0.weight"] = a["best_params/0.weight"].astype(np.float64)


def _drop_best(m, a):
    del a["best_params/6.bias"]


def _rng_type(m, a):
    m["rng"]["data"] = np.random.MT19937(0).state
    m["rng"]["data"]["state"]["key"] = m["rng"]["data"]["state"]["key"].tolist()


def _rng_garbled(m, a):
    m["rng"]["data"]["state"] = "x"


def _epoch_text(m, a):
    m["epoch"] = "ten"


def _epoch_float(m, a):
    m["epoch"] = 2.0


def _history_short(m, a):
    m["history"] = m["history"][:1]


def _best_epoch(m, a):
    m["best"]["epoch"] = 7


def _optimizer_array_missing(m, a):
    name = next(k for k in a if k.startswith("optimizer/"))
    del a[name]


def _optimizer_float64(m, a):
    for k in list(a):
        if k.startswith("optimizer/") and a[k].dtype == np.float32:
            a[k] = a[k].astype(np.float64)


def _rng_negative(m, a):      # NumPy raises OverflowError setting this state
    m["rng"]["data"]["state"]["inc"] = -1


BAD = [_drop, _broadcast_bias, _float64, _float64_best, _drop_best, _rng_type, _rng_garbled,
       _epoch_text, _epoch_float, _history_short, _best_epoch, _optimizer_array_missing,
       _optimizer_float64, _rng_negative]


@pytest.mark.parametrize("edit", BAD, ids=[f.__name__.strip("_") for f in BAD])
def test_resigned_inconsistent_checkpoint_is_refused_and_changes_nothing(good, tmp_path, edit):
    meta, arrays = ckpt.read(good)
    edit(meta, arrays)
    bad = tmp_path / "bad.npz"
    ckpt.write(bad, meta, arrays)
    ckpt.read(bad)  # the checksum is valid: only the content checks can refuse it

    target = make_trainer(seed=3)
    target.fit(data(1), 1)
    before = snapshot(target)
    with pytest.raises(CheckpointError, match="bad.npz"):
        target.load(bad)
    assert_same(snapshot(target), before)

    target.load(good)  # the untouched checkpoint still loads
    assert target.epoch == 2


# ---- issue 18, item 9: malformed metadata and members raise CheckpointError -----------------

def _write_raw(path, meta_bytes, arrays):
    """A checkpoint with these exact metadata bytes and a valid checksum over them."""
    import io
    out = dict(arrays)
    out["__meta__"] = np.frombuffer(meta_bytes, np.uint8)
    out["__checksum__"] = np.frombuffer(ckpt.checksum(meta_bytes, arrays).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **out)
    path.write_bytes(buf.getvalue())
    return path


@pytest.mark.parametrize("meta_bytes, match", [
    (b"{not json", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "not JSON|nested"),
    (b'{"a": ' * 500 + b"1" + b"}" * 500, "nested"),
    (b"[1, 2]", "not a JSON object"),
    (b"null", "not a JSON object"),
    (b'{"format": "nbconv-checkpoint", "version": 1}', "version 1 metadata"),
], ids=["text", "utf8", "deep-list", "deep-dict", "list", "null", "v1-empty"])
def test_malformed_metadata_is_a_checkpoint_error(good, tmp_path, meta_bytes, match):
    _, arrays = ckpt.read(good)
    bad = _write_raw(tmp_path / "bad.npz", meta_bytes, arrays)
    with pytest.raises(CheckpointError, match=match):
        ckpt.read(bad)
    target = make_trainer(seed=3)
    with pytest.raises(CheckpointError, match="bad.npz"):
        target.load(bad)


def test_deep_optimizer_tree_is_a_checkpoint_error(good, tmp_path):
    meta, arrays = ckpt.read(good)
    tree = 1
    for _ in range(900):     # within json's nesting limit, not within decode's recursion
        tree = [tree]
    meta["optimizer"] = tree
    bad = tmp_path / "bad.npz"
    ckpt.write(bad, meta, arrays)
    with pytest.raises(CheckpointError, match="bad.npz"):
        make_trainer(seed=3).load(bad)


def _member_bytes(arrays, name, payload):
    import io
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    import zipfile
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for info in src.infolist():
            z.writestr(info, payload if info.filename == name else src.read(info))
    return out.getvalue()


def test_npy_members_claiming_more_than_they_hold(good, tmp_path):
    import zipfile
    meta, arrays = ckpt.read(good)
    raw = good.read_bytes()
    # an .npy header claiming 2**40 elements over a few bytes: refused before allocating
    header = ("{'descr': '<f4', 'fortran_order': False, 'shape': (%d,), }" % 2 ** 40)
    header = header + " " * (-(len(header) + 11) % 64) + "\n"
    npy = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + bytes(8)
    full = dict(arrays, __meta__=np.zeros(1, np.uint8), __checksum__=np.zeros(1, np.uint8))
    (tmp_path / "huge.npz").write_bytes(_member_bytes(full, "param/4.bias.npy", npy))
    with pytest.raises(CheckpointError, match="4.bias.*holds"):
        ckpt.read(tmp_path / "huge.npz")
    # a deflated member that inflates far past the file (a deflate bomb)
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bomb, "w") as z:
        for info in src.infolist():
            z.writestr(info.filename, src.read(info))
        z.writestr("pad.npy", bytes(50_000_000), compress_type=zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size < len(raw) + 200_000
    with pytest.raises(CheckpointError, match="uncompressed"):
        ckpt.read(bomb)
    # an object array member (np.load would need allow_pickle)
    obj = tmp_path / "obj.npz"
    np.savez(obj, **dict(full, x=np.array([None, 1], dtype=object)))
    with pytest.raises(CheckpointError, match="x.*object"):
        ckpt.read(obj)


def test_malformed_signature_is_a_checkpoint_error_for_nbconv_load(good, tmp_path):
    import nbconv
    meta, arrays = ckpt.read(good)
    for sig in ([True], {"params": {}, "buffers": [True]},
                {"params": {"0.weight": [[-1], "<f4"]}, "buffers": {}}):
        meta["signature"] = sig
        ckpt.write(tmp_path / "bad.npz", meta, arrays)
        with pytest.raises(CheckpointError, match="bad.npz.*signature is malformed"):
            nbconv.load(tmp_path / "bad.npz")
    meta["signature"] = ckpt.read(good)[0]["signature"]
    meta["signature"]["params"]["4.weight"][1] = ""      # not a dtype NumPy knows
    ckpt.write(tmp_path / "bad.npz", meta, arrays)
    with pytest.raises(CheckpointError, match="bad.npz.*4.weight.*metadata says"):
        nbconv.load(tmp_path / "bad.npz")


def _unsupported_zip_version(raw):
    """The archive with every central directory entry needing zip version 25.5."""
    b = bytearray(raw)
    pos = b.find(b"PK\x01\x02")
    while pos >= 0:
        b[pos + 6:pos + 8] = (255).to_bytes(2, "little")
        pos = b.find(b"PK\x01\x02", pos + 4)
    return bytes(b)


def test_zip_of_an_unsupported_version_is_a_documented_error(good, tmp_path):
    import nbconv
    from nbconv.serialization import TorchFileError
    bad = tmp_path / "bad.npz"
    bad.write_bytes(_unsupported_zip_version(good.read_bytes()))
    with pytest.raises(CheckpointError, match="bad.npz.*NotImplementedError"):
        ckpt.read(bad)
    with pytest.raises(CheckpointError, match="bad.npz"):
        make_trainer().load(bad)
    with pytest.raises(TorchFileError, match="bad.npz.*NotImplementedError"):
        nbconv.load(bad)
