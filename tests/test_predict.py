"""scripts/predict.py (nbconv/predict.py) as a user runs it: a tiny trained run's checkpoint on
CIFAR-10 test images and on the same images as PNG files (the same top-5), a torch .pt file of
a CIFAR ResNet and of ResNet-18 (224x224 after resizing, against the torch twin), and every
mistake as one line with exit status 2 (a damaged file: 1)."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import nbconv
from nbconv import cli, models, predict
from nbconv import data as D
from nbconv.png import read_png, write_png

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "predict.py")
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
LINE = re.compile(r"^(.*?)  +((?:\S+(?: \d+)? \d\.\d{3}(?:, )?)+)$")


def run(args):
    return subprocess.run([sys.executable, SCRIPT] + [str(a) for a in args], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=300)


def parse(stdout):
    """``[(name, [(class, probability)])]`` of the output lines."""
    rows = []
    for line in stdout.splitlines():
        m = LINE.match(line)
        if m:
            pairs = [p.rsplit(" ", 1) for p in m.group(2).split(", ")]
            rows.append((m.group(1), [(c, float(p)) for c, p in pairs]))
    return rows


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A three-layer net trained 1 epoch on 80 images of the bundled sample."""
    raw = D.load_cifar10()
    base = tmp_path_factory.mktemp("predict")
    d = base / "cifar-10-batches-py"
    d.mkdir()
    D.save_batch(d / "data_batch_1", raw["x_train"][:80], raw["y_train"][:80], "b1")
    D.save_batch(d / "test_batch", raw["x_test"][:30], raw["y_test"][:30], "t")
    out = base / "run"
    assert cli.main(["--data-dir", str(d), "--val-size", "16", "--batch-size", "16",
                     "--hidden", "8", "--epochs", "1", "--out", str(out),
                     "--no-progress"]) == 0
    pngs = base / "pngs"
    pngs.mkdir()
    for i in range(6):
        write_png(pngs / f"img{i}.png", raw["x_test"][i].transpose(1, 2, 0))
    return dict(data=d, out=out, pngs=pngs, raw=raw)


def expected_top5(model, x, classes):
    model.eval()
    with nbconv.no_grad():
        z = model(x).astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return [[(classes[k], round(float(r[k]), 3)) for k in np.argsort(-r, kind="stable")[:5]]
            for r in p]


def test_run_checkpoint_on_cifar_test_images_and_on_the_same_pngs(tiny_run):
    r = run(["--checkpoint", tiny_run["out"], "--cifar-test", "6"])
    assert r.returncode == 0 and r.stderr == "", r.stderr
    rows = parse(r.stdout)
    assert len(rows) == 6 and rows[0][0].startswith("test image 0 (")
    assert all(len(top) == 5 for _, top in rows)
    assert re.search(r"top-1 accuracy \d\.\d{3}, top-5 \d\.\d{3} on 6 CIFAR-10 test images of "
                     + re.escape(str(tiny_run["data"])), r.stdout)
    # in process: the run's model (its best epoch) on its own normalisation
    model = models.three_layer_convnet(hidden=8, seed=0)
    model.load_state_dict(nbconv.checkpoint.model_state(tiny_run["out"] / "checkpoint.npz",
                                                        best=True))
    data = D.prepare(tiny_run["data"], val_size=16, seed=0)
    want = expected_top5(model, data["x_test"][:6], D.CLASSES)
    for (_, got), w in zip(rows, want):
        assert [c for c, _ in got] == [c for c, _ in w]
        assert [p for _, p in got] == pytest.approx([p for _, p in w], abs=1.5e-3)
    # the same images as PNG files (a folder): the same classes and probabilities
    r2 = run(["--checkpoint", tiny_run["out"] / "checkpoint.npz", tiny_run["pngs"]])
    assert r2.returncode == 0, r2.stderr
    rows2 = parse(r2.stdout)
    assert [n for n, _ in rows2] == [str(tiny_run["pngs"] / f"img{i}.png") for i in range(6)]
    assert [t for _, t in rows2] == [t for _, t in rows]


def test_torch_file_of_a_cifar_resnet(tiny_run, tmp_path):
    torch = pytest.importorskip("torch")
    model = models.resnet20(shortcut="B", seed=3)
    path = tmp_path / "r20.pt"
    torch.save({k: torch.from_numpy(v) for k, v in model.state_dict().items()}, path)
    r = run(["--checkpoint", path, "--model", "resnet20", "--data-dir", tiny_run["data"],
             tiny_run["pngs"] / "img0.png", tiny_run["pngs"] / "img1.png"])
    assert r.returncode == 0, r.stderr
    rows = parse(r.stdout)
    data = D.prepare(tiny_run["data"], val_size=0.1, seed=0)   # the command's split
    want = expected_top5(model, data["x_test"][:2], D.CLASSES)
    assert [[c for c, _ in t] for _, t in rows] == [[c for c, _ in w] for w in want]


def test_resnet18_torch_file_on_larger_pngs_matches_the_torch_twin(tmp_path):
    torch = pytest.importorskip("torch")
    from test_resnet import to_torch, torch_resnet18
    model = models.resnet18(seed=0)
    path = tmp_path / "r18.pth"
    torch.save({k: torch.from_numpy(v) for k, v in model.state_dict().items()}, path)
    g = np.random.default_rng(0)
    smooth = np.kron(g.integers(0, 256, (15, 20, 3)), np.ones((20, 20, 1))).astype(np.uint8)
    write_png(tmp_path / "wide.png", smooth)                          # 300 x 400 RGB
    write_png(tmp_path / "grey.png", smooth[:260, :240, 0])           # 260 x 240 grey
    (tmp_path / "names.txt").write_text("".join(f"n{i}\n" for i in range(1000)))
    r = run(["--checkpoint", path, "--model", "resnet18", "--classes", tmp_path / "names.txt",
             "--top", "3", tmp_path / "wide.png", tmp_path / "grey.png"])
    assert r.returncode == 0, r.stderr
    rows = parse(r.stdout)
    assert len(rows) == 2 and all(len(t) == 3 and t[0][0].startswith("n") for _, t in rows)
    # torchvision's evaluation transform in torch: Resize(256) antialiased, CenterCrop(224)
    net = to_torch(model, torch_resnet18(), np.float32).eval()
    for (_, top), name in zip(rows, ("wide.png", "grey.png")):
        img = torch.from_numpy(read_png(tmp_path / name).astype(np.float32) / 255)
        img = img.permute(2, 0, 1)[None]
        h, w = img.shape[2:]
        size = (256, int(256 * w / h)) if h <= w else (int(256 * h / w), 256)
        img = torch.nn.functional.interpolate(img, size=size, mode="bilinear",
                                              antialias=True, align_corners=False)
        t, left = int(round((size[0] - 224) / 2)), int(round((size[1] - 224) / 2))
        img = img[:, :, t:t + 224, left:left + 224]
        mean = torch.tensor(predict.IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(predict.IMAGENET_STD).view(1, 3, 1, 1)
        with torch.inference_mode():
            p = torch.softmax(net((img - mean) / std).double(), 1)[0].numpy()
        for cls, prob in top:
            assert abs(p[int(cls[1:])] - prob) < 2e-3, (name, cls, prob, p[int(cls[1:])])


def test_mistakes_end_in_one_line(tiny_run, tmp_path, capsys):
    out, pngs = tiny_run["out"], tiny_run["pngs"]
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    r20 = tmp_path / "r20.safetensors"
    nbconv.save(models.resnet20(seed=0).state_dict(), r20)
    cases = [
        (["--checkpoint", out], 2, "give PNG files or folders, or --cifar-test N"),
        (["--checkpoint", out, pngs, "--cifar-test", "3"], 2, "one of the two"),
        (["--checkpoint", out, tmp_path / "nope.png"], 2, "nope.png: no such file or folder"),
        (["--checkpoint", out, tmp_path / "empty"], 2, "the folder holds no .png files"),
        (["--checkpoint", tmp_path / "none", pngs], 2, "--checkpoint " + str(tmp_path / "none")
         + ": no such file"),
        (["--checkpoint", out, "--model", "deep", pngs], 2,
         "--model deep: the run in " + str(out / "checkpoint.npz") + " trained --model "
         "three-layer"),
        (["--checkpoint", r20, pngs], 2, "is a state_dict file: name its network with --model"),
        (["--checkpoint", r20, "--model", "resnet32", pngs], 2, "does not fit the model"),
        (["--checkpoint", out, "--cifar-test", "0"], 2, "--cifar-test 0: must be at least 1"),
        (["--checkpoint", out, "--mean", "0.5", "0.5", "0.5", pngs], 2,
         "--mean and --std go together"),
        (["--checkpoint", out, "--classes", tmp_path / "nope.txt", pngs], 2,
         "--classes " + str(tmp_path / "nope.txt") + ": cannot be read"),
        (["--checkpoint", out, tmp_path / "bad.png"], 1, "bad.png is truncated"),
        (["--checkpoint", out, "--data-dir", tmp_path / "empty", pngs], 2,
         "holds no CIFAR-10 python batches"),
    ]
    for argv, status, words in cases:
        assert predict.main([str(a) for a in argv]) == status, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, (argv, err)
    r = run(["--checkpoint", out])   # the script: the same one line, no traceback
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        "predict.py: error: give PNG files or folders, or --cifar-test N (one of the two)"]
