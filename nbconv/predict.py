"""Classify images with a trained model and print the top-5 classes with their probabilities.

The command behind ``python scripts/predict.py`` (``main(argv=None)`` returns the exit
status)::

    python scripts/predict.py --checkpoint runs/demo --cifar-test 8       # a training run's model
    python scripts/predict.py --checkpoint runs/demo photos/              # a folder of PNGs
    python scripts/predict.py --checkpoint resnet18.pth --model resnet18 photos/cat.png

``--checkpoint``: a run folder of ``scripts/train_cifar.py`` (or its ``checkpoint.npz``): the
model is rebuilt from the run's saved arguments and given the weights the run reports its
test accuracy for (the best validation epoch's, else the last; ``--last`` for the last); the
images are normalised with the run's own statistics (recomputed from the run's data and
split: its ``--data-dir`` must still be there, or pass ``--mean`` and ``--std``). Or a
``state_dict`` file (a torch ``.pt``/``.pth``, read without torch, or ``.safetensors``) with
``--model``: ``resnet18``/``resnet34``/``resnet50`` (ImageNet: resize the shorter side to 256,
centre crop 224, ImageNet's mean and std, classes printed as indices unless ``--classes
FILE`` names them, one a line) or one of the training command's CIFAR models (32x32, CIFAR-10's
classes, the statistics of ``--data-dir``'s training images unless ``--mean``/``--std``);
the number of classes is read from the file.

Inputs: PNG files and folders of them (``*.png``, sorted by name), decoded by
:mod:`nbconv.png` (no imaging package needed: 8/16-bit grey, RGB, RGBA, 8-bit palette,
non-interlaced), resized so that the shorter side is the model's size and centre-cropped; or
``--cifar-test N``: the first N test images of ``--data-dir`` (the run's data for a run's
checkpoint, else the bundled sample), with their labels and the top-1/top-5 accuracy.

The forward runs in eval mode under :func:`nbconv.no_grad` (nothing kept for backward).
A mistake ends with one line on stderr and exit status 2 (a bad argument: a missing file, a
folder without PNGs, a model that does not fit the file), a damaged file with status 1.
"""
import argparse
import os
import sys
import zipfile

import numpy as np

from . import checkpoint as ckpt
from . import data as D
from . import models
from .layers import no_grad
from .png import PNGError, center_crop, read_png, resize_shorter

__all__ = ["main", "build_parser", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_MODELS = {"resnet18": models.resnet18, "resnet34": models.resnet34,
                   "resnet50": models.resnet50}


class CommandError(Exception):
    """One line for stderr; ``status`` 2 for a bad argument, 1 for a damaged file."""

    def __init__(self, message, status=2):
        super().__init__(message)
        self.status = status


def build_parser():
    ap = argparse.ArgumentParser(
        prog=os.path.basename(sys.argv[0] or "predict.py") or "predict.py",
        description=__doc__.split("\n\n")[0], allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="More: python -c \"import nbconv.predict; help(nbconv.predict)\".")
    ap.add_argument("images", nargs="*", help="PNG files or folders of PNG files")
    ap.add_argument("--checkpoint", required=True,
                    help="a training run's folder or checkpoint.npz, or a state_dict file "
                         "(.pt, .pth, .safetensors) with --model")
    ap.add_argument("--model", choices=list(models.MODELS) + list(IMAGENET_MODELS),
                    help="the network (default: the run's, for a run's checkpoint)")
    ap.add_argument("--shortcut", choices=("A", "B"),
                    help="CIFAR ResNets from a state_dict file: the shortcut (default: A, or "
                         "B when the file has projection weights)")
    ap.add_argument("--cifar-test", type=int, metavar="N",
                    help="classify the first N CIFAR-10 test images of --data-dir instead")
    ap.add_argument("--data-dir",
                    help="CIFAR-10 folder for --cifar-test and the normalisation statistics "
                         "(default: the run's, else the sample bundled with nbconv)")
    ap.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"),
                    help="per-channel mean of [0, 1] pixels (default: see above)")
    ap.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"),
                    help="per-channel standard deviation (default: see above)")
    ap.add_argument("--classes", help="a text file of class names, one a line")
    ap.add_argument("--last", action="store_true",
                    help="a run's checkpoint: the last epoch's weights, not the best epoch's")
    ap.add_argument("--top", type=int, default=5, help="classes shown per image (default: 5)")
    ap.add_argument("--batch-size", type=int, default=64,
                    help="images per forward (default: 64)")
    return ap


# ---- the model ---------------------------------------------------------------------------------

def _is_run_checkpoint(path):
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            return False
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
    except zipfile.BadZipFile:
        return False
    return {"__meta__.npy", "__checksum__.npy"} <= names


def _run_model(path, args):
    """``(model, run arguments)`` of a training checkpoint."""
    try:
        meta, _ = ckpt.read(path)
        saved = meta.get("args")
        if not isinstance(saved, dict) or saved.get("model") not in models.MODELS:
            raise CommandError(f"--checkpoint {path}: holds no run arguments naming its model "
                               f"(written by an older nbconv); load its state_dict yourself")
        best = not args.last and isinstance(meta.get("best"), dict)
        state = ckpt.model_state(path, best=best)
    except ckpt.CheckpointError as e:
        raise CommandError(f"--checkpoint: {e}", status=1) from None
    if args.model is not None and args.model != saved["model"]:
        raise CommandError(f"--model {args.model}: the run in {path} trained "
                           f"--model {saved['model']}; leave --model out")
    from .cli import build_model
    model = build_model(argparse.Namespace(**{**dict(hidden=100, weight_scale=None,
                                                     norm="batch", shortcut="A"), **saved}))
    _load(model, state, path)
    return model, saved


def _state_file_model(path, args):
    from . import load
    if args.model is None:
        raise CommandError(f"--checkpoint {path} is a state_dict file: name its network with "
                           f"--model ({', '.join(list(models.MODELS) + list(IMAGENET_MODELS))})")
    try:
        state = load(path)
    except (ValueError, OSError) as e:
        raise CommandError(f"--checkpoint: {e}", status=1) from None
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise CommandError(f"--checkpoint {path} does not hold a state_dict (a flat dict of "
                           f"arrays)")
    fc = state.get("fc.weight")
    classes = fc.shape[0] if isinstance(fc, np.ndarray) and fc.ndim == 2 else None
    if args.model in IMAGENET_MODELS:
        model = IMAGENET_MODELS[args.model](num_classes=classes or 1000, seed=0)
    elif args.model in ("three-layer", "deep"):
        model = models.MODELS[args.model](seed=0)
    else:
        shortcut = args.shortcut or ("B" if any(".downsample.0.weight" in k for k in state)
                                     else "A")
        model = models.MODELS[args.model](num_classes=classes or 10, shortcut=shortcut, seed=0)
    _load(model, state, path)
    return model


def _load(model, state, path):
    try:
        model.load_state_dict(state, strict=True)
    except (ValueError, TypeError) as e:
        raise CommandError(f"--checkpoint {path} does not fit the model: "
                           f"{str(e).splitlines()[0]}") from None


# ---- the images ----------------------------------------------------------------------------------

def _png_paths(items):
    paths = []
    for item in items:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, n) for n in os.listdir(item)
                           if n.lower().endswith(".png")
                           and os.path.isfile(os.path.join(item, n)))
            if not found:
                raise CommandError(f"{item}: the folder holds no .png files")
            paths += found
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise CommandError(f"{item}: no such file or folder")
    return paths


def _prepare(img, size, resize, mean, std):
    """``uint8 (H, W, 3)`` -> normalised ``(3, size, size)`` float64."""
    x = center_crop(resize_shorter(img, resize), size) / 255.0
    return ((x - mean) / std).transpose(2, 0, 1)


def _stats(data_dir, val_size, seed):
    """The training command's per-channel statistics of ``data_dir`` (its split)."""
    try:
        raw = D.load_cifar10(data_dir)
    except FileNotFoundError:
        raise CommandError(f"--data-dir {data_dir}: holds no CIFAR-10 python batches; give "
                           f"the folder the model was trained on, or --mean and --std") from None
    except (OSError, ValueError) as e:
        raise CommandError(f"--data-dir {data_dir or D.SAMPLE_DIR}: {e}", status=1) from None
    x_tr, _, _, _ = D.split_validation(raw["x_train"], raw["y_train"], val_size, seed)
    mean, std = D.channel_stats(x_tr)
    return mean, std, raw


def _class_names(args, n):
    if args.classes:
        try:
            with open(args.classes, encoding="utf-8") as f:
                names = [ln.strip() for ln in f if ln.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise CommandError(f"--classes {args.classes}: cannot be read ({e})") from None
        if len(names) != n:
            raise CommandError(f"--classes {args.classes}: holds {len(names)} names, the model "
                               f"has {n} classes")
        return names
    if n == len(D.CLASSES):
        return list(D.CLASSES)
    return [f"class {i}" for i in range(n)]


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def main(argv=None):
    """Run the command; returns the exit status (0, 2 for a bad argument, 1 for a damaged
    file, each error as one line on stderr)."""
    try:
        return _main(argv)
    except CommandError as e:
        prog = os.path.basename(sys.argv[0] or "") or "predict.py"
        sys.stderr.write(f"{prog}: error: {e}\n")
        return e.status


def _main(argv):
    try:
        args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    except SystemExit as e:
        return e.code
    if bool(args.images) == (args.cifar_test is not None):
        raise CommandError("give PNG files or folders, or --cifar-test N (one of the two)")
    for k in ("cifar_test", "top", "batch_size"):
        v = getattr(args, k)
        if v is not None and v < 1:
            raise CommandError(f"--{k.replace('_', '-')} {v}: must be at least 1")
    if args.std is not None and min(args.std) <= 0:
        raise CommandError(f"--std {' '.join(map(str, args.std))}: must be above 0")
    if (args.mean is None) != (args.std is None):
        raise CommandError("--mean and --std go together")
    path = args.checkpoint
    if os.path.isdir(path):
        path = os.path.join(path, "checkpoint.npz")
    if not os.path.isfile(path):
        raise CommandError(f"--checkpoint {args.checkpoint}: no such file (give a run's "
                           f"folder, its checkpoint.npz or a state_dict file)")
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        raise CommandError(f"--data-dir {args.data_dir}: no such folder")
    paths = _png_paths(args.images) if args.images else None

    run = None
    if _is_run_checkpoint(path):
        model, run = _run_model(path, args)
        name = run["model"]
    else:
        model = _state_file_model(path, args)
        name = args.model
    imagenet = name in IMAGENET_MODELS
    size, resize = (224, 256) if imagenet else (32, 32)
    data_dir = args.data_dir if args.data_dir is not None else (run or {}).get("data_dir")
    need_data = args.cifar_test is not None or (args.mean is None and not imagenet)
    if need_data and data_dir is not None and not os.path.isdir(data_dir):
        raise CommandError(f"the run's data folder {data_dir} is gone: pass --data-dir (the "
                           f"same data) or --mean and --std")
    raw = None
    if args.mean is not None:
        mean, std = np.array(args.mean), np.array(args.std)
    elif imagenet:
        mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    else:   # the training command's statistics: its split of the training images
        split = (run or {}).get("val_size", 0.1), (run or {}).get("seed", 0)
        mean, std, raw = _stats(data_dir, *split)

    if paths is not None:
        images, labels, names = [], None, paths
        for p in paths:
            try:
                images.append(read_png(p))
            except PNGError as e:
                raise CommandError(str(e), status=1) from None
            except OSError as e:
                raise CommandError(f"{p}: cannot be read ({e.strerror})") from None
        test_names = None
    else:
        if raw is None:
            try:
                raw = D.load_cifar10(data_dir)
            except FileNotFoundError:
                raise CommandError(f"--data-dir {data_dir}: holds no CIFAR-10 python "
                                   f"batches") from None
        n = min(args.cifar_test, len(raw["x_test"]))
        images = list(raw["x_test"][:n].transpose(0, 2, 3, 1))
        labels = raw["y_test"][:n]
        test_names = raw["classes"]
        names = [f"test image {i} ({test_names[y]})" for i, y in enumerate(labels)]
    x = np.stack([_prepare(img, size, resize, mean, std) for img in images])
    x = x.astype(next(iter(model.params.values())).dtype)
    model.eval()
    with no_grad():
        logits = np.concatenate([model(x[i:i + args.batch_size])
                                 for i in range(0, len(x), args.batch_size)])
    probs = _softmax(logits.astype(np.float64))
    classes = _class_names(args, probs.shape[1])
    top = min(args.top, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :top]
    width = max(len(n) for n in names)
    for n, row, p in zip(names, order, probs):
        print(f"{n:<{width}}  " + ", ".join(f"{classes[k]} {p[k]:.3f}" for k in row))
    if labels is not None:
        top1 = float(np.mean(order[:, 0] == labels))
        topk = float(np.mean([y in row for y, row in zip(labels, order)]))
        print(f"top-1 accuracy {top1:.3f}, top-{top} {topk:.3f} on {len(labels)} CIFAR-10 "
              f"test images of {data_dir or D.SAMPLE_DIR}")
    return 0
