"""Property-based tests of the file readers and writers (hypothesis; budget in conftest.py).

Generators of the crafted-file cases found by hand (issue 18): random nested objects must
round-trip through both formats of ``nbconv.save``; random byte flips, truncations, insertions
and overwrites of valid safetensors, ``.pt`` (nbconv's and torch's), checkpoint and CIFAR
files, mutated ``data.pkl`` pickles in a valid zip, random safetensors headers and random
edits of a checkpoint's metadata (re-signed, so only the content checks can refuse them) must
either load or raise the documented error type, never anything else, and never allocate more
than a small multiple of the file's size.
"""
import io
import json
import pickle
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import nbconv
from nbconv import checkpoint as ckpt
from nbconv import data as D
from nbconv import optim
from nbconv.checkpoint import CheckpointError
from nbconv.models import three_layer_convnet
from nbconv.serialization import FileFormatError
from nbconv.train import Trainer

torch = pytest.importorskip("torch")

#: what any file nbconv.load reads may raise
LOAD_ERRORS = (FileFormatError, CheckpointError)


def bounded(fn, nbytes, factor=10, slack=2 << 20):
    """``fn()`` under tracemalloc; fails if it allocated more than ``factor`` times
    ``nbytes`` plus ``slack`` at its peak. Returns ``(result or None, exception or None)``."""
    tracemalloc.start()
    try:
        try:
            out, err = fn(), None
        except Exception as e:   # the caller checks the type
            out, err = None, e
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= factor * nbytes + slack, f"peak {peak} bytes for a file of {nbytes}"
    return out, err


def same(a, b, ordered=True):
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()
        return
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, dict):
        assert (list(a) == list(b)) if ordered else (sorted(map(repr, a)) ==
                                                     sorted(map(repr, b)))
        for k in a:
            same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            same(x, y)
    elif isinstance(a, float) and a != a:
        assert b != b
    else:
        assert a == b


# ---- random nested objects round-trip ---------------------------------------------------------

_PT_DTYPES = [np.float32, np.float64, np.float16, np.int64, np.int32, np.int16, np.int8,
              np.uint8, np.bool_]
_ST_DTYPES = _PT_DTYPES + [np.uint16, np.uint32, np.uint64]


@st.composite
def arrays(draw, dtypes):
    dt = np.dtype(draw(st.sampled_from(dtypes)))
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
    raw = draw(st.binary(min_size=int(np.prod(shape)) * dt.itemsize,
                         max_size=int(np.prod(shape)) * dt.itemsize))
    a = np.frombuffer(raw, np.uint8 if dt == np.bool_ else dt).reshape(shape).copy()
    return a.astype(np.bool_) if dt == np.bool_ else a


plain = st.none() | st.booleans() | st.integers(-2 ** 80, 2 ** 80) | \
    st.floats(allow_nan=True) | st.text(max_size=8)
keys = st.text(max_size=6) | st.integers(-5, 5)


def nested(dtypes):
    leaves = arrays(dtypes) | plain
    return st.dictionaries(keys, st.recursive(
        leaves, lambda kids: st.lists(kids, max_size=3) | st.tuples(kids, kids)
        | st.dictionaries(keys, kids, max_size=3), max_leaves=8), max_size=4)


@given(obj=nested(_PT_DTYPES))
def test_nested_objects_round_trip_pt(tmp_path_factory, obj):
    p = tmp_path_factory.mktemp("pt") / "o.pt"
    nbconv.save(obj, p)
    same(obj, nbconv.load(p))
    got = torch.load(p, weights_only=True)
    assert list(got) == list(obj)


@given(obj=nested(_ST_DTYPES))
def test_nested_objects_round_trip_safetensors(tmp_path_factory, obj):
    p = tmp_path_factory.mktemp("st") / "o.safetensors"
    try:
        nbconv.save(obj, p)
    except ValueError as e:         # an int key and its str in one dict: one tensor name
        assume("two keys give the tensor name" not in str(e))
        raise
    flat = all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())
    same(obj, nbconv.load(p), ordered=not flat)


# ---- byte-level mutations of valid files ------------------------------------------------------

@st.composite
def mutations(draw, size):
    """A list of edits of a file of ``size`` bytes: flips, overwrites with a random integer
    (lengths, offsets, counts), insertions, deletions and one optional truncation."""
    edits = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "int", "insert", "delete"]))
        pos = draw(st.integers(0, max(size - 1, 0)))
        if kind == "flip":
            edits.append((kind, pos, draw(st.integers(1, 255))))
        elif kind == "int":
            edits.append((kind, pos, draw(st.sampled_from([0, 1, 2 ** 31 - 1, 2 ** 32,
                                                           2 ** 40, 2 ** 63 - 1, 2 ** 64 - 1])
                                          | st.integers(0, 2 ** 64 - 1))))
        elif kind == "insert":
            edits.append((kind, pos, draw(st.binary(min_size=1, max_size=16))))
        else:
            edits.append((kind, pos, draw(st.integers(1, 16))))
    if draw(st.booleans()):
        edits.append(("truncate", draw(st.integers(0, size)), None))
    return edits


def mutate(raw, edits):
    b = bytearray(raw)
    for kind, pos, arg in edits:
        pos = min(pos, len(b))
        if kind == "flip" and pos < len(b):
            b[pos] ^= arg
        elif kind == "int":
            b[pos:pos + 8] = arg.to_bytes(8, "little")
        elif kind == "insert":
            b[pos:pos] = arg
        elif kind == "delete":
            del b[pos:pos + arg]
        elif kind == "truncate":
            del b[pos:]
    return bytes(b)


def _sample_state():
    rng = np.random.default_rng(0)
    return {"conv.weight": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
            "conv.bias": rng.standard_normal(8).astype(np.float32),
            "bn.num_batches_tracked": np.array(3, np.int64),
            "h": rng.standard_normal((4, 4)).astype(np.float16)}


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("valid")
    sd = _sample_state()
    files = {}
    nbconv.save(sd, d / "flat.safetensors")
    nbconv.save({"model": sd, "epoch": 3, "hist": [0.5, None]}, d / "nested.safetensors")
    nbconv.save({"model": sd, "epoch": 3, "opt": {"lr": 0.1, "state": {0: sd["conv.bias"]}}},
                d / "nested.pt")
    t = {k: torch.from_numpy(v) for k, v in sd.items()}
    t["expanded"] = torch.ones(3).expand(50, 3)
    t["bf16"] = torch.randn(5).to(torch.bfloat16)
    torch.save(t, d / "torch.pt")
    for name in ("flat.safetensors", "nested.safetensors", "nested.pt", "torch.pt"):
        files[name] = (d / name).read_bytes()
    return files


@pytest.mark.parametrize("name", ["flat.safetensors", "nested.safetensors", "nested.pt",
                                  "torch.pt"])
@given(data=st.data())
def test_mutated_files_load_or_raise_documented_error(tmp_path_factory, valid_files, name,
                                                      data):
    raw = valid_files[name]
    bad = mutate(raw, data.draw(mutations(len(raw))))
    p = tmp_path_factory.mktemp("m") / name
    p.write_bytes(bad)
    _, err = bounded(lambda: nbconv.load(p), len(bad))
    assert err is None or isinstance(err, LOAD_ERRORS), repr(err)
    if err is not None:
        assert str(p) in str(err)


@given(data=st.data())
def test_mutated_data_pkl_in_a_valid_zip(tmp_path_factory, valid_files, data):
    """Mutations of the pickle itself (a zip CRC would catch them in the whole file)."""
    src = zipfile.ZipFile(io.BytesIO(valid_files["nested.pt"]))
    pkl = src.read("archive/data.pkl")
    bad = mutate(pkl, data.draw(mutations(len(pkl))))
    p = tmp_path_factory.mktemp("pkl") / "m.pt"
    with zipfile.ZipFile(p, "w") as z:
        for info in src.infolist():
            z.writestr(info.filename, bad if info.filename.endswith("data.pkl")
                       else src.read(info))
    _, err = bounded(lambda: nbconv.load(p), p.stat().st_size)
    assert err is None or isinstance(err, FileFormatError), repr(err)


# ---- random safetensors headers ---------------------------------------------------------------

json_junk = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70)
                         | st.floats(allow_nan=False) | st.text(max_size=6),
                         lambda kids: st.lists(kids, max_size=3)
                         | st.dictionaries(st.text(max_size=4), kids, max_size=3),
                         max_leaves=6)
dims = st.integers(0, 4) | st.sampled_from([2 ** 31, 2 ** 62, 2 ** 63, 2 ** 64, -1])


@st.composite
def st_entries(draw):
    code = draw(st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F8_E4M3", "X"])
                | json_junk)
    shape = draw(st.lists(dims, max_size=4) | json_junk)
    begin = draw(st.integers(0, 64) | json_junk)
    end = draw(st.integers(0, 64) | json_junk)
    entry = {"dtype": code, "shape": shape, "data_offsets": [begin, end]}
    if draw(st.booleans()):
        entry = draw(json_junk | st.just(entry))
    return entry


@given(header=st.dictionaries(st.text(max_size=4), st_entries(), max_size=4),
       meta=st.none() | json_junk | st.dictionaries(st.text(max_size=12), st.text(max_size=6)),
       tree=st.none() | json_junk, nbytes=st.integers(0, 64))
def test_random_safetensors_headers(tmp_path_factory, header, meta, tree, nbytes):
    if meta is not None:
        header["__metadata__"] = meta
        if tree is not None and isinstance(meta, dict):
            meta["nbconv.tree"] = json.dumps(tree)
    head = json.dumps(header).encode()
    p = tmp_path_factory.mktemp("h") / "h.safetensors"
    p.write_bytes(len(head).to_bytes(8, "little") + head + bytes(nbytes))
    _, err = bounded(lambda: nbconv.load(p), p.stat().st_size)
    assert err is None or isinstance(err, FileFormatError), repr(err)


# ---- checkpoints ------------------------------------------------------------------------------

def _trainer(seed=0):
    model = three_layer_convnet(hidden=8, num_filters=4, filter_size=3, input_shape=(3, 8, 8),
                                seed=seed)
    opt = optim.Adam(model.params, model.grads, lr=1e-2)
    return Trainer(model, opt, optim.CosineAnnealingLR(opt, T_max=4), batch_size=8, seed=seed,
                   progress=False, verbose=False, warmup=False)


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    g = np.random.default_rng(0)
    x = g.standard_normal((24, 3, 8, 8)).astype(np.float32)
    y = g.integers(0, 10, 24)
    tr = _trainer()
    tr.fit(dict(x_train=x[:16], y_train=y[:16], x_val=x[16:], y_val=y[16:]), 2)
    path = tmp_path_factory.mktemp("ck") / "good.npz"
    tr.save(path)
    return path


@given(data=st.data())
def test_mutated_checkpoint_loads_identically_or_is_refused(tmp_path_factory, good_checkpoint,
                                                            data):
    raw = good_checkpoint.read_bytes()
    bad = mutate(raw, data.draw(mutations(len(raw))))
    p = tmp_path_factory.mktemp("c") / "bad.npz"
    p.write_bytes(bad)
    sd, err = bounded(lambda: nbconv.load(p), len(bad))
    assert err is None or isinstance(err, LOAD_ERRORS), repr(err)
    if err is None:    # the checksum lets nothing altered through
        same(ckpt.model_state(good_checkpoint), sd)
    tr = _trainer(seed=3)
    _, err = bounded(lambda: tr.load(p), len(bad))
    assert err is None or isinstance(err, CheckpointError), repr(err)


def _paths(tree, path=()):
    yield path
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _paths(v, path + (k,))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _paths(v, path + (i,))


@given(data=st.data())
def test_resigned_metadata_edits_are_refused_cleanly(tmp_path_factory, good_checkpoint, data):
    meta, arrays = ckpt.read(good_checkpoint)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [q for q in _paths(meta) if q]
        where = data.draw(st.sampled_from(paths))
        node = meta
        for k in where[:-1]:
            node = node[k]
        node[where[-1]] = data.draw(json_junk)
    p = tmp_path_factory.mktemp("r") / "bad.npz"
    ckpt.write(p, meta, arrays)
    tr = _trainer(seed=3)
    _, err = bounded(lambda: tr.load(p), p.stat().st_size)
    assert err is None or isinstance(err, CheckpointError), repr(err)
    _, err = bounded(lambda: nbconv.load(p), p.stat().st_size)
    assert err is None or isinstance(err, CheckpointError), repr(err)


# ---- CIFAR batches ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    d = tmp_path_factory.mktemp("b")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(4, 3, 32, 32), dtype=np.uint8)
    D.save_batch(d / "official", x, [0, 1, 2, 3], "b")
    out = {"official": (d / "official").read_bytes()}
    for protocol in (2, 5):
        out[f"p{protocol}"] = pickle.dumps({b"data": x.reshape(4, -1), b"labels": [0, 1, 2, 3]},
                                           protocol=protocol)
    return out


@pytest.mark.parametrize("name", ["official", "p2", "p5"])
@given(data=st.data())
def test_mutated_cifar_batches_load_or_raise_value_error(tmp_path_factory, batches, name,
                                                         data):
    raw = batches[name]
    bad = mutate(raw, data.draw(mutations(len(raw))))
    p = tmp_path_factory.mktemp("cifar") / "data_batch_1"
    p.write_bytes(bad)
    _, err = bounded(lambda: D.load_batch(p), len(bad))
    assert err is None or isinstance(err, ValueError), repr(err)
    if err is not None:
        assert "data_batch_1" in str(err)
