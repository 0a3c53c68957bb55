"""ResNet-20 on CIFAR-10 trained by nbconv and by PyTorch with the same recipe, weights, data
order and augmentation: both test accuracies, both epoch times and their ratio.

    python benchmarks/resnet_cifar.py                          # 10 epochs on the shared subset
    python benchmarks/resnet_cifar.py --epochs 1 --limit 256 --test-limit 200   # a smoke run

Each library trains in its own process (``--worker nbconv|torch``, one after the other, never
at the same time), with ``--threads`` threads (Numba's and torch's), so that neither library's
thread pool spins beside the other's. Both processes build nbconv's ``resnet20(seed)``; the
torch process copies its weights into a twin with torchvision's module names
(``_torch_resnet.py``), so both start from the same parameters. Both read the same prepared
data (``nbconv.data.prepare``: per-channel normalisation from the training images, no
validation split) and draw every batch from nbconv's ``BatchIterator`` with one generator
seeded by ``--seed`` (the Trainer's order: a permutation per epoch, 4-pixel zero-pad random
crops, horizontal flips), so both see the same images in the same order with the same crops.

The recipe is He et al. 2016's (section 4.2; ``scripts/train_cifar.py --model resnet20``'s
defaults): SGD with momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 after 50% and 75% of
the epochs, batch 128, cross-entropy. float32. An epoch's time is the wall time of its training
steps, batches drawn included (the same NumPy work in both); nbconv's kernels are compiled or
loaded before the first epoch (reported apart), PyTorch needs no such step. Test accuracy is
measured once, after the last epoch (eval mode, no_grad / inference_mode). The speed ratio is
PyTorch's median epoch time over nbconv's (above 1: nbconv is faster).

``--data-dir`` defaults to ``$NBCONV_CIFAR_SUBSET``, else the 6,455-image subset beside the
checkout (``../shared/cifar10-subset/cifar-10-batches-py``: 5,438 training and 1,017 test
images), else the sample bundled with nbconv. Timings need a quiet machine: every core busy
with something else makes both libraries slower by different amounts.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
for p in (ROOT, HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

SUBSET = os.path.join(os.path.dirname(ROOT), "shared", "cifar10-subset", "cifar-10-batches-py")
CIFAR_RESNETS = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110")


def default_data_dir():
    env = os.environ.get("NBCONV_CIFAR_SUBSET")
    if env:
        return env
    return SUBSET if os.path.isdir(SUBSET) else None


def load(args):
    from nbconv import data as D
    data = D.prepare(args.data_dir, val_size=0, dtype=np.float32, seed=args.seed)
    x, y = data["x_train"], data["y_train"]
    xt, yt = data["x_test"], data["y_test"]
    if args.limit:
        x, y = x[:args.limit], y[:args.limit]
    if args.test_limit:
        xt, yt = xt[:args.test_limit], yt[:args.test_limit]
    return x, y, xt, yt


# ---- the two workers: the same loop, each library's step ----------------------------------------

def _nbconv_trainer(model, args):
    import nbconv
    from nbconv import optim
    from nbconv.cli import milestones
    opt = optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                    weight_decay=args.weight_decay)
    sched = optim.MultiStepLR(opt, milestones(args.epochs), gamma=0.1)
    crit = nbconv.SoftmaxCrossEntropy()

    def step(xb, yb):
        logits = model(xb)
        loss, d = crit(logits, yb)
        model.backward(d)
        opt.step()
        return float(loss), int(np.sum(np.argmax(logits, axis=1) == yb))

    def predict(x):
        model.eval()
        with nbconv.no_grad():
            out = np.concatenate([model(x[i:i + 500]) for i in range(0, len(x), 500)])
        model.train()
        return out

    return opt, sched, step, predict


def _torch_trainer(model, args):
    import torch
    from _torch_resnet import twin
    torch.set_num_threads(args.threads)
    net = twin(model, args.model, args.shortcut).train()
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum,
                          weight_decay=args.weight_decay)
    from nbconv.cli import milestones
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones(args.epochs), gamma=0.1)
    crit = torch.nn.CrossEntropyLoss()

    def step(xb, yb):
        opt.zero_grad(set_to_none=True)
        logits = net(torch.from_numpy(xb))
        loss = crit(logits, torch.from_numpy(yb))
        loss.backward()
        opt.step()
        return float(loss), int((logits.argmax(1).numpy() == yb).sum())

    def predict(x):
        net.eval()
        with torch.inference_mode():
            out = np.concatenate([net(torch.from_numpy(x[i:i + 500])).numpy()
                                  for i in range(0, len(x), 500)])
        net.train()
        return out

    return opt, sched, step, predict


def worker(lib, args):
    from nbconv import models
    from nbconv.data import BatchIterator
    x, y, xt, yt = load(args)
    model = models.MODELS[args.model](shortcut=args.shortcut, seed=args.seed)
    make = _nbconv_trainer if lib == "nbconv" else _torch_trainer
    opt, sched, step, predict = make(model, args)
    compile_s = None
    if lib == "nbconv":   # compile or load the kernels of these batch sizes before timing
        from nbconv.warmup import _sizes, warm_up
        compile_s, _ = warm_up(model, x.shape[1:], _sizes(len(x), args.batch_size),
                               _sizes(len(xt), 500), optimizer=opt)
    rng = np.random.default_rng(args.seed)   # data order and augmentation, as the Trainer's
    epochs = []
    for epoch in range(args.epochs):
        batches = BatchIterator(x, y, args.batch_size, shuffle=True, crop=4, flip=True, seed=rng)
        total, correct = 0.0, 0
        t0 = time.perf_counter()
        for xb, yb in batches:
            loss, right = step(xb, yb)
            total += loss * len(yb)
            correct += right
        seconds = time.perf_counter() - t0
        sched.step()
        epochs.append({"epoch": epoch + 1, "seconds": seconds, "loss": total / len(y),
                       "train_accuracy": correct / len(y)})
        print(f"{lib} epoch {epoch + 1}/{args.epochs}: loss {total / len(y):.4f} "
              f"{seconds:.1f} s", file=sys.stderr, flush=True)
    acc = float(np.mean(np.argmax(predict(xt), axis=1) == yt))
    print("RESULT " + json.dumps({"lib": lib, "epochs": epochs, "test_accuracy": acc,
                                  "compile_seconds": compile_s, "train_images": len(y),
                                  "test_images": len(yt)}), flush=True)


# ---- the parent ---------------------------------------------------------------------------------

def run_worker(lib, args, argv):
    env = dict(os.environ, NUMBA_NUM_THREADS=str(args.threads),
               OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", lib] + argv
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None if args.verbose else
                       subprocess.PIPE, text=True, env=env, cwd=ROOT)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        raise SystemExit(f"the {lib} worker failed (exit {p.returncode}):\n{p.stdout}\n"
                         f"{p.stderr or ''}")
    return json.loads(lines[-1][len("RESULT "):])


def build_parser():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", choices=CIFAR_RESNETS, default="resnet20")
    ap.add_argument("--shortcut", choices=("A", "B"), default="A")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--data-dir", default=default_data_dir(),
                    help="a cifar-10-batches-py folder (None: the bundled sample)")
    ap.add_argument("--limit", type=int, default=0,
                    help="train on the first N training images (0: all)")
    ap.add_argument("--test-limit", type=int, default=0,
                    help="test on the first N test images (0: all)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="threads of each library")
    ap.add_argument("--verbose", action="store_true", help="show each epoch as it ends")
    ap.add_argument("--json", action="store_true", help="print one JSON line as well")
    ap.add_argument("--worker", choices=("nbconv", "torch"), help=argparse.SUPPRESS)
    return ap


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    for k in ("epochs", "batch_size", "threads"):
        if getattr(args, k) < 1:
            raise SystemExit(f"--{k.replace('_', '-')} must be at least 1")
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        raise SystemExit(f"--data-dir {args.data_dir}: no such folder")
    if args.worker:
        return worker(args.worker, args)
    if "--data-dir" not in argv and args.data_dir is not None:
        argv = argv + ["--data-dir", args.data_dir]   # the workers read what the parent chose
    res = {lib: run_worker(lib, args, argv) for lib in ("nbconv", "torch")}
    nb, tc = res["nbconv"], res["torch"]
    from nbconv.cli import milestones
    where = args.data_dir or "the sample bundled with nbconv"
    print(f"{args.model} (shortcut {args.shortcut}) on {nb['train_images']:,} training / "
          f"{nb['test_images']:,} test images of {where}; {args.epochs} epochs of batch "
          f"{args.batch_size}, SGD lr {args.lr:g} momentum {args.momentum:g} weight decay "
          f"{args.weight_decay:g}, lr / 10 after epochs {milestones(args.epochs)}, crop + flip, "
          f"seed {args.seed}; float32, {args.threads} threads, each library in its own process")
    print(f"{'':10}{'test accuracy':>14}{'epoch (median)':>16}{'images/s':>10}"
          f"{'last loss':>11}")
    med = {}
    for name, r in (("nbconv", nb), ("PyTorch", tc)):
        med[name] = statistics.median(e["seconds"] for e in r["epochs"])
        print(f"{name:10}{r['test_accuracy']:>14.4f}{med[name]:>14.2f} s"
              f"{r['train_images'] / med[name]:>10.0f}{r['epochs'][-1]['loss']:>11.4f}")
    ratio = med["PyTorch"] / med["nbconv"]
    print(f"accuracy nbconv - PyTorch: {nb['test_accuracy'] - tc['test_accuracy']:+.4f}; "
          f"speed nbconv / PyTorch: {ratio:.2f}x (above 1: nbconv faster); nbconv's kernels "
          f"compiled or loaded in {nb['compile_seconds']:.1f} s before epoch 1")
    if args.json:
        print(json.dumps({"ratio": ratio, **res}))


if __name__ == "__main__":
    main()
