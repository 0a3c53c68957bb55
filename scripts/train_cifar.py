"""Train a CIFAR-10 convnet with nbconv and print its test accuracy.

    python scripts/train_cifar.py                       # three-layer net on the bundled sample
    python scripts/train_cifar.py --data-dir ../shared/cifar10-subset/cifar-10-batches-py \\
        --model three-layer --epochs 10
    python scripts/train_cifar.py --model deep --epochs 20 --out runs/deep
    python scripts/train_cifar.py --download --data-dir ~/data/cifar10   # the full data set
    python scripts/train_cifar.py --out runs/deep --resume                # continue a run

Writes into ``--out``: ``metrics.json`` (``{"epochs": [{"epoch", "loss", "train_accuracy",
"val_accuracy", "test_accuracy", "seconds", "images_per_second"}, ...]}``, rewritten after every
epoch), ``curves.png`` (loss left, train/val/test accuracy right), ``filters.png`` (the first
conv layer's filters) and ``checkpoint.npz`` (everything ``--resume`` needs).

Per-model defaults (used when an option is not given): three-layer: Adam, lr 1e-3, batch 50,
weight decay 0, 10 epochs, random flips; deep: AdamW, lr 2e-3, batch 64, weight decay 5e-4,
20 epochs, cosine schedule, random flips.
"""
import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from nbconv import data as D  # noqa: E402
from nbconv import models, optim, viz  # noqa: E402
from nbconv.train import CheckpointError, Trainer, write_json  # noqa: E402

DEFAULTS = {
    "three-layer": dict(optimizer="adam", lr=1e-3, batch_size=50, weight_decay=0.0, epochs=10,
                        augment="flip", schedule="none"),
    "deep": dict(optimizer="adamw", lr=2e-3, batch_size=64, weight_decay=5e-4, epochs=20,
                 augment="flip", schedule="cosine"),
}
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")


def _count_or_fraction(text):
    v = float(text)
    if v < 0 or (v >= 1 and v != int(v)):
        raise argparse.ArgumentTypeError(f"expected a count or a fraction in [0, 1), got {text}")
    return int(v) if v >= 1 else v


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(models.MODELS), default="three-layer")
    ap.add_argument("--data-dir", default=None,
                    help="a cifar-10-batches-py directory (default: the sample bundled with "
                         "nbconv; with --download: where to download, default ./data)")
    ap.add_argument("--download", action="store_true",
                    help="download the official CIFAR-10 tarball (MD5 checked) into --data-dir")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--optimizer", choices=OPTIMIZERS)
    ap.add_argument("--weight-decay", type=float)
    ap.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    ap.add_argument("--schedule", choices=("none", "cosine", "step"),
                    help="per-epoch learning-rate schedule")
    ap.add_argument("--augment", choices=("none", "flip", "crop-flip"),
                    help="training-image augmentation: random horizontal flip, and random crop "
                         "(pad 4)")
    ap.add_argument("--val-size", type=_count_or_fraction, default=0.1,
                    help="training images held out for validation: a count, or a fraction "
                         "below 1 (default 0.1)")
    ap.add_argument("--hidden", type=int, default=100, help="three-layer: hidden units")
    ap.add_argument("--weight-scale", type=float, default=None,
                    help="three-layer: normal(0, scale) weights (default: PyTorch's init)")
    ap.add_argument("--norm", choices=("batch", "group"), default="batch",
                    help="deep: normalisation layer (default batch)")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/latest", help="output directory (default runs/latest)")
    ap.add_argument("--resume", nargs="?", const="", default=None, metavar="CHECKPOINT",
                    help="continue from CHECKPOINT (default: --out/checkpoint.npz)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    for k, v in DEFAULTS[args.model].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0 or args.weight_decay < 0:
        ap.error("--epochs and --batch-size must be >= 1, --lr > 0, --weight-decay >= 0")
    return args


def build_model(args):
    dtype = np.dtype(args.dtype)
    if args.model == "three-layer":
        return models.three_layer_convnet(hidden=args.hidden, weight_scale=args.weight_scale,
                                          seed=args.seed, dtype=dtype)
    return models.deep_convnet(norm=args.norm, seed=args.seed, dtype=dtype)


def build_optimizer(args, model):
    p, g, lr, wd = model.params, model.grads, args.lr, args.weight_decay
    if args.optimizer == "sgd":
        opt = optim.SGD(p, g, lr=lr, momentum=args.momentum, weight_decay=wd)
    elif args.optimizer == "adam":
        opt = optim.Adam(p, g, lr=lr, weight_decay=wd)
    elif args.optimizer == "adamw":
        opt = optim.AdamW(p, g, lr=lr, weight_decay=wd)
    else:
        opt = optim.RMSprop(p, g, lr=lr, weight_decay=wd)
    if args.schedule == "cosine":
        sched = optim.CosineAnnealingLR(opt, T_max=args.epochs)
    elif args.schedule == "step":
        sched = optim.StepLR(opt, step_size=max(args.epochs // 3, 1), gamma=0.1)
    else:
        sched = None
    return opt, sched


def first_conv_weight(model):
    for name, p in model.params.items():
        if p.ndim == 4:
            return p
    return None


def main(argv=None):
    args = parse_args(argv)
    data_dir = args.data_dir
    if args.download:
        data_dir = D.download(data_dir or "data", progress=not args.no_progress)
    data = D.prepare(data_dir, val_size=args.val_size, dtype=np.dtype(args.dtype), seed=args.seed)
    print(f"data: {len(data['x_train'])} train / {len(data['x_val'])} val / "
          f"{len(data['x_test'])} test images from {data_dir or D.SAMPLE_DIR}", flush=True)

    model = build_model(args)
    opt, sched = build_optimizer(args, model)
    crop, flip = (4 if args.augment == "crop-flip" else 0), args.augment != "none"
    trainer = Trainer(model, opt, sched, batch_size=args.batch_size, crop=crop, flip=flip,
                      seed=args.seed, progress=not args.no_progress, verbose=True)
    os.makedirs(args.out, exist_ok=True)
    ckpt = os.path.join(args.out, "checkpoint.npz")
    if args.resume is not None:
        src = args.resume or ckpt
        try:
            trainer.load(src)
        except (CheckpointError, FileNotFoundError) as e:
            raise SystemExit(f"cannot resume: {e}")
        print(f"resumed from {src} at epoch {trainer.epoch}", flush=True)
    n_params = sum(p.size for p in model.params.values())
    print(f"model: {args.model} ({n_params:,} parameters, {args.dtype}); optimizer {args.optimizer} "
          f"lr {args.lr:g} wd {args.weight_decay:g} batch {args.batch_size} "
          f"schedule {args.schedule} augment {args.augment}", flush=True)
    write_json(os.path.join(args.out, "args.json"), vars(args))

    plots = viz.have_matplotlib()
    if not plots:
        print(f"no curves.png / filters.png: matplotlib is not installed ({viz.INSTALL_HINT})")

    def pictures(tr):
        if not plots:
            return
        viz.save_curves(os.path.join(args.out, "curves.png"), tr.history,
                        title=f"{args.model} on CIFAR-10 ({args.optimizer}, lr {args.lr:g})")
        w = first_conv_weight(tr.model)
        if w is not None:
            viz.save_filters(os.path.join(args.out, "filters.png"), w,
                             scale=max(4, 48 // w.shape[-1]),
                             title=f"{args.model}: first-layer filters after epoch {tr.epoch}")

    t0 = time.perf_counter()
    trainer.fit(data, args.epochs, checkpoint=ckpt, metrics=os.path.join(args.out, "metrics.json"),
                on_epoch_end=pictures)
    if not trainer.history:
        raise SystemExit("nothing trained")
    last = trainer.history[-1]
    best = trainer.history[trainer.best_epoch - 1]
    kind = "val" if best["val_accuracy"] is not None else "train"
    print(f"trained {trainer.epoch} epochs in {time.perf_counter() - t0:.0f} s; best {kind} "
          f"accuracy {best[kind + '_accuracy']:.4f} at epoch {trainer.best_epoch} "
          f"(test {best['test_accuracy']:.4f})")
    print(f"test accuracy: {last['test_accuracy']:.4f}")
    print(f"outputs in {args.out}: metrics.json curves.png filters.png checkpoint.npz")
    return last["test_accuracy"]


if __name__ == "__main__":
    main()
