"""Build the CIFAR-10 sample bundled in ``nbconv/_sample/cifar-10-batches-py``.

    python scripts/make_sample.py [SRC_DIR] [--train-per-class 200] [--out DIR]

``SRC_DIR`` is an official ``cifar-10-batches-py`` directory (default: `../shared/cifar10-subset/cifar-10-batches-py` beside the checkout). The
sample keeps the official python format: every test image of ``SRC_DIR``'s ``test_batch`` and,
for the training part, the first ``--train-per-class`` images of each class in the official
order, spread over ``data_batch_1`` .. ``data_batch_5`` (each class-balanced), plus
``batches.meta``. Deterministic: the same source gives byte-identical files.
"""
import argparse
import os
import shutil
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from nbconv.data import BATCHES_DIR, load_batch, load_cifar10, save_batch  # noqa: E402

DEFAULT_SRC = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                            "shared", "cifar10-subset", "cifar-10-batches-py"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", nargs="?", default=DEFAULT_SRC)
    ap.add_argument("--train-per-class", type=int, default=200)
    ap.add_argument("--out", default=os.path.join(ROOT, "nbconv", "_sample", BATCHES_DIR))
    args = ap.parse_args(argv)

    raw = load_cifar10(args.src)
    x, y = raw["x_train"], raw["y_train"]
    k = args.train_per_class
    # the first k images of every class, in the official order
    keep = np.sort(np.concatenate([np.flatnonzero(y == c)[:k] for c in range(10)]))
    if len(keep) != 10 * k:
        raise SystemExit(f"{args.src} has fewer than {k} training images of some class")
    os.makedirs(args.out, exist_ok=True)
    # batch b gets the images whose rank within their class is in [b*k/5, (b+1)*k/5)
    rank = np.empty(len(keep), np.int64)
    for c in range(10):
        rank[y[keep] == c] = np.arange(k)
    for b in range(5):
        sel = keep[(rank * 5 // k) == b]
        save_batch(os.path.join(args.out, f"data_batch_{b + 1}"), x[sel], y[sel],
                   f"training batch {b + 1} of 5 (nbconv sample)",
                   [f"sample_data_batch_{b + 1}_{i:05d}.png".encode() for i in range(len(sel))])
    xt, yt = load_batch(os.path.join(args.src, "test_batch"))
    save_batch(os.path.join(args.out, "test_batch"), xt, yt, "testing batch 1 of 1 (nbconv sample)",
               [f"sample_test_batch_{i:05d}.png".encode() for i in range(len(xt))])
    shutil.copyfile(os.path.join(args.src, "batches.meta"), os.path.join(args.out, "batches.meta"))
    total = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(f"wrote {10 * k} training + {len(xt)} test images to {args.out} ({total / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
