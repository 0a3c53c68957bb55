"""Train the deep net with each convolution algorithm and compare test accuracies (issue 10,
deliverable 4: "the same test accuracy (within 0.01) with either algorithm").

    python benchmarks/accuracy_algorithms.py [--epochs 3] [--data-dir DIR] [--limit N]

Each run forces one algorithm with ``NBCONV_CONV_ALGORITHM`` (``direct``, ``winograd``: Winograd
on every convolution it can run, here all of the net's 3x3 convolutions, the C=3 first layer
included; ``auto``: the default rule), from the same seed, data order and initial weights, with
the deep net's defaults of ``scripts/train_cifar.py`` (AdamW, lr 2e-3, weight decay 5e-4, batch
64, random flips), and prints the test accuracy after each epoch and the differences. The
three-layer net is not run: its only convolution is 7x7, which Winograd cannot do, so both
algorithms run the same direct kernels there and train identically.

A slow script (minutes per epoch on a busy 2-core machine), not a test.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from nbconv import data, optim  # noqa: E402
from nbconv.models import deep_convnet  # noqa: E402
from nbconv.train import Trainer  # noqa: E402

DEFAULT_DATA = "/work/shared/cifar10-subset/cifar-10-batches-py"


def run(algorithm, d, epochs, seed):
    os.environ["NBCONV_CONV_ALGORITHM"] = algorithm
    model = deep_convnet(seed=seed)
    opt = optim.AdamW(model.params, model.grads, lr=2e-3, weight_decay=5e-4)
    tr = Trainer(model, opt, batch_size=64, flip=True, seed=seed, progress=False,
                 verbose=False)
    accs = []
    t0 = time.perf_counter()
    for e in range(1, epochs + 1):
        tr.fit(d, e)
        accs.append(tr.history[-1]["test_accuracy"])
        print(f"  {algorithm:>8} epoch {e}: loss {tr.history[-1]['loss']:.4f}  test "
              f"{accs[-1]:.4f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    return accs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--data-dir", default=DEFAULT_DATA if os.path.isdir(DEFAULT_DATA) else None)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N training images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--algorithms", default="direct,winograd")
    a = ap.parse_args()
    d = data.prepare(a.data_dir, val_size=0.1, seed=a.seed)
    d["x_val"] = d["y_val"] = None  # only the test accuracy is compared
    if a.limit:
        d["x_train"], d["y_train"] = d["x_train"][:a.limit], d["y_train"][:a.limit]
    print(f"deep net, {len(d['x_train'])} training / {len(d['x_test'])} test images, "
          f"{a.epochs} epochs, seed {a.seed}")
    res = {alg: run(alg, d, a.epochs, a.seed) for alg in a.algorithms.split(",")}
    algs = list(res)
    print("\nepoch  " + "  ".join(f"{k:>8}" for k in algs) + "  max |diff|")
    for e in range(a.epochs):
        accs = [res[k][e] for k in algs]
        print(f"{e + 1:>5}  " + "  ".join(f"{v:8.4f}" for v in accs)
              + f"  {max(accs) - min(accs):.4f}")
    final = [res[k][-1] for k in algs]
    ok = max(final) - min(final) <= 0.01
    print(f"final test accuracies within 0.01: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
