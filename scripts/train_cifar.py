"""Train a CIFAR-10 convnet with nbconv and print its test accuracy.

    python scripts/train_cifar.py                       # three-layer net on the bundled sample
    python scripts/train_cifar.py --data-dir ../shared/cifar10-subset/cifar-10-batches-py \\
        --model three-layer --epochs 10
    python scripts/train_cifar.py --model deep --epochs 20 --out runs/deep
    python scripts/train_cifar.py --download --data-dir ~/data/cifar10   # the full data set
    python scripts/train_cifar.py --out runs/deep --resume                # continue a run
    mpiexec -n 2 python scripts/train_cifar.py --distributed ...          # 2 ranks (MPI)

Every run writes into its own folder: ``--out`` (refused if it exists and is not empty, unless
``--resume`` or ``--force``), by default a new ``runs/<YYYYmmdd-HHMMSS>``. It holds
``metrics.json`` (``{"epochs": [{"epoch", "loss", "train_accuracy", "val_accuracy",
"test_accuracy", "seconds", "images_per_second"}, ...], "compile_seconds": s, "result":
{"test_accuracy", "params", "epoch"}}``, rewritten after every epoch; ``result`` is written at
the end), ``curves.png`` (loss left, train/val/test accuracy right), ``filters.png`` (the first
conv layer's filters) and ``checkpoint.npz`` (everything ``--resume`` needs, the run's
arguments included).

Before the first epoch the kernels are compiled (first run only) or loaded from Numba's cache,
in the open and timed apart (``compile_seconds``): epoch seconds and images/s are training only.

``--out DIR --resume`` continues the run in DIR with the arguments saved in its checkpoint: an
explicit option that contradicts them is refused (``--epochs`` may change, and is announced,
unless the learning-rate schedule depends on it: cosine and step schedules are planned for the
run's epochs, so extending them is refused; start a new run instead). Ctrl-C finishes the
current batch, saves a checkpoint and exits (status 130) with the command that continues the
run; a second Ctrl-C stops at once (files are written atomically, so none is left damaged).

The result: with a validation split, the parameters of the epoch with the best validation
accuracy are restored at the end and their test accuracy is the result (``"params":
"best-val"``); without one, the last epoch's (``"params": "last"``).
"""
import argparse
import datetime
import os
import shlex
import signal
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from nbconv import data as D  # noqa: E402
from nbconv import models, optim, viz  # noqa: E402
from nbconv.train import CheckpointError, Trainer, TrainingInterrupted, write_json  # noqa: E402

DEFAULTS = {
    "three-layer": dict(optimizer="adam", lr=1e-3, batch_size=50, weight_decay=0.0, epochs=10,
                        augment="flip", schedule="none"),
    "deep": dict(optimizer="adamw", lr=2e-3, batch_size=64, weight_decay=5e-4, epochs=20,
                 augment="flip", schedule="cosine"),
}
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
# options that do not change what a resumed run computes: a new value is announced, not refused
HARMLESS = ("epochs", "no_progress", "download", "sync_bn")
# options that only say where/how to run, never saved with the run
NOT_SAVED = ("out", "resume", "force", "distributed", "threads_per_rank")


def _count_or_fraction(text):
    v = float(text)
    if v < 0 or (v >= 1 and v != int(v)):
        raise argparse.ArgumentTypeError(f"expected a count or a fraction in [0, 1), got {text}")
    return int(v) if v >= 1 else v


def _per_model(key):
    return "(default: " + ", ".join(f"{m} {d[key]:g}" if isinstance(d[key], float) else
                                    f"{m} {d[key]}" for m, d in DEFAULTS.items()) + ")"


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows ``(default: ...)`` after every option that has a fixed default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default:" not in text and action.default not in (None, argparse.SUPPRESS, False)
                and action.option_strings):
            text += " (default: %(default)s)"
        return text


def build_parser():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                 formatter_class=_HelpFormatter,
                                 epilog="See the module docstring (scripts/train_cifar.py) for "
                                        "the output files and the resume rules.")
    ap.add_argument("--model", choices=sorted(models.MODELS), default="three-layer",
                    help="network")
    ap.add_argument("--data-dir", default=None,
                    help="a cifar-10-batches-py directory (default: the sample bundled with "
                         "nbconv; with --download: where to download, default ./data)")
    ap.add_argument("--download", action="store_true",
                    help="download the official CIFAR-10 tarball (MD5 checked) into --data-dir")
    ap.add_argument("--epochs", type=int, help="epochs to train " + _per_model("epochs"))
    ap.add_argument("--batch-size", type=int, help="training batch size " + _per_model("batch_size"))
    ap.add_argument("--lr", type=float, help="learning rate " + _per_model("lr"))
    ap.add_argument("--optimizer", choices=OPTIMIZERS, help=_per_model("optimizer"))
    ap.add_argument("--weight-decay", type=float, help=_per_model("weight_decay"))
    ap.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    ap.add_argument("--schedule", choices=("none", "cosine", "step"),
                    help="per-epoch learning-rate schedule " + _per_model("schedule"))
    ap.add_argument("--augment", choices=("none", "flip", "crop-flip"),
                    help="training-image augmentation: random horizontal flip, and random crop "
                         "(pad 4) " + _per_model("augment"))
    ap.add_argument("--val-size", type=_count_or_fraction, default=0.1,
                    help="training images held out for validation: a count, or a fraction "
                         "below 1")
    ap.add_argument("--hidden", type=int, default=100, help="three-layer: hidden units")
    ap.add_argument("--weight-scale", type=float, default=None,
                    help="three-layer: normal(0, scale) weights (default: PyTorch's init)")
    ap.add_argument("--norm", choices=("batch", "group"), default="batch",
                    help="deep: normalisation layer")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                    help="parameter and data dtype")
    ap.add_argument("--seed", type=int, default=0, help="seed of the weights, split and batches")
    ap.add_argument("--out", default=None,
                    help="output directory; must not exist or be empty unless --resume or "
                         "--force (default: a new runs/<YYYYmmdd-HHMMSS>)")
    ap.add_argument("--resume", nargs="?", const="", default=None, metavar="CHECKPOINT",
                    help="continue the run in --out with its saved arguments, from CHECKPOINT "
                         "(default: --out/checkpoint.npz; --out defaults to its folder)")
    ap.add_argument("--force", action="store_true",
                    help="write into an existing, non-empty --out (its files are replaced)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--distributed", action="store_true",
                    help="data-parallel over MPI: run under mpiexec -n P; --batch-size is the "
                         "global batch, split over the ranks; rank 0 prints and writes")
    ap.add_argument("--sync-bn", action="store_true",
                    help="with --distributed: BatchNorm statistics over the global batch")
    ap.add_argument("--threads-per-rank", type=int, default=None,
                    help="with --distributed: Numba threads per rank (default: cores / local "
                         "ranks)")
    return ap


def _explicit(ap, argv):
    """The destinations of the options given on the command line."""
    given = set()
    for a in ap._actions:
        if any(t == o or t.startswith(o + "=") for t in argv for o in a.option_strings):
            given.add(a.dest)
    return given


def parse_args(argv=None):
    """``(args, explicit)``: the parsed options (per-model defaults filled in, unless resuming:
    then the checkpoint's arguments fill them in, see :func:`resume_args`) and the set of
    options given explicitly."""
    ap = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = ap.parse_args(argv)
    args.explicit = _explicit(ap, argv)
    if args.resume is None:
        fill_defaults(args, ap.error)
    return args


def fill_defaults(args, error):
    for k, v in DEFAULTS[args.model].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0 or args.weight_decay < 0:
        error("--epochs and --batch-size must be >= 1, --lr > 0, --weight-decay >= 0")


def run_args(args):
    """The arguments saved with the run (JSON-able; ``--data-dir`` made absolute)."""
    out = {k: v for k, v in vars(args).items() if k not in NOT_SAVED and k != "explicit"}
    if out.get("data_dir") is not None:
        out["data_dir"] = os.path.abspath(out["data_dir"])
    return out


def _flag(k):
    return "--" + k.replace("_", "-")


def resume_args(args):
    """Resolve ``--resume``: the checkpoint path, ``args.out``, and every option from the
    arguments saved in the checkpoint; explicit options that contradict them are refused
    (``SystemExit`` naming both values), harmless ones announced."""
    if args.out is None and not args.resume:
        raise SystemExit("--resume needs --out DIR (the run's folder) or a checkpoint path")
    src = args.resume or os.path.join(args.out, "checkpoint.npz")
    if args.out is None:
        args.out = os.path.dirname(os.path.abspath(src))
    try:
        meta, _ = Trainer.read(src)
    except (CheckpointError, FileNotFoundError, OSError) as e:
        raise SystemExit(f"cannot resume: {e}")
    saved = meta.get("args")
    if saved is None:
        raise SystemExit(f"cannot resume: {src} holds no run arguments (written by an older "
                         "nbconv); start a new run")
    given = run_args(args)
    conflicts, notes = [], []
    for k, v in saved.items():
        if k in args.explicit and given.get(k) != v:
            if k not in HARMLESS:
                conflicts.append(f"{_flag(k)} {given.get(k)} (the run used {v})")
                continue
            if k == "epochs":
                if saved.get("schedule") in ("cosine", "step"):
                    raise SystemExit(
                        f"cannot resume with --epochs {given[k]}: the run's {saved['schedule']} "
                        f"learning-rate schedule was planned for {v} epochs (past them a cosine "
                        f"schedule sits near lr 0). Resume without --epochs to finish it, or "
                        f"start a new run with --epochs {given[k]}.")
                notes.append(f"--epochs {given[k]} (the run was started with {v})")
            continue
        setattr(args, k, v)
    if conflicts:
        raise SystemExit(f"cannot resume {src}: " + "; ".join(conflicts) + ". Drop these options "
                         "to continue the run as it was started, or start a new run in another "
                         "--out.")
    for n in notes:
        print(f"resume: {n}", flush=True)
    return src


def _bcast_text(comm, text, size=4096):
    """``text`` of rank 0 on every rank (a run folder's path)."""
    buf = np.zeros(size, np.uint8)
    raw = text.encode()[:size]
    buf[:len(raw)] = np.frombuffer(raw, np.uint8)
    comm.bcast_(buf)
    return bytes(buf).rstrip(b"\0").decode()


def new_out_dir(args):
    """Create the run's folder: ``--out`` (refused if it exists and is not empty, unless
    ``--force``) or a new ``runs/<YYYYmmdd-HHMMSS>`` (``-2``, ``-3``... if taken)."""
    if args.out is not None:
        if os.path.isdir(args.out) and os.listdir(args.out) and not args.force:
            raise SystemExit(f"--out {args.out} exists and is not empty: an earlier run's "
                             f"outputs would be overwritten. Use another --out, --resume to "
                             f"continue that run, or --force to overwrite it.")
        os.makedirs(args.out, exist_ok=True)
        return args.out
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for i in range(1, 1000):
        out = os.path.join("runs", stamp if i == 1 else f"{stamp}-{i}")
        try:
            os.makedirs(out)
            return out
        except FileExistsError:
            continue
    raise SystemExit(f"cannot create a new folder runs/{stamp}-*")


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


def continue_command(out):
    return f"python {shlex.quote(sys.argv[0] or 'scripts/train_cifar.py')} --out {shlex.quote(out)} --resume"


def train(trainer, data, args, ckpt, pictures):
    """``trainer.fit`` under the Ctrl-C rules: exits 130 with the command that continues."""
    cont = continue_command(args.out)
    if trainer.dp is not None:   # ranks must stop at the same batch: Ctrl-C aborts the MPI job
        trainer.fit(data, args.epochs, checkpoint=ckpt,
                    metrics=os.path.join(args.out, "metrics.json"), on_epoch_end=pictures)
        return
    try:
        with trainer.stop_on_sigint("Ctrl-C: stopping after this batch and saving a checkpoint "
                                    "(Ctrl-C again to stop at once)"):
            trainer.fit(data, args.epochs, checkpoint=ckpt,
                        metrics=os.path.join(args.out, "metrics.json"), on_epoch_end=pictures)
    except TrainingInterrupted as e:
        where = f"epoch {e.epoch + 1}, batch {e.batch}" if e.batch else f"end of epoch {e.epoch}"
        print(f"interrupted: checkpoint ({where}) saved in {ckpt}; continue with: {cont}",
              flush=True)
        raise SystemExit(130)
    except Exception as e:
        # the second Ctrl-C's KeyboardInterrupt can surface wrapped: raised while a C extension
        # is being imported (matplotlib's, for the pictures) it becomes an ImportError
        if not _from_interrupt(e):
            raise
        _stopped_at_once(ckpt, cont)
    except KeyboardInterrupt:
        _stopped_at_once(ckpt, cont)


def _from_interrupt(exc):
    """Whether ``exc`` was caused by a KeyboardInterrupt (its cause or context chain)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _stopped_at_once(ckpt, cont):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print(f"\nstopped at once: {ckpt} holds the last checkpoint written (if any); "
          f"continue with: {cont}", flush=True)
    raise SystemExit(130)


def result(trainer, data):
    """``{"test_accuracy", "params", "epoch"}`` of the parameters the run keeps: the best
    validation epoch's (restored into the model) with a validation split, else the last."""
    has_val = data.get("x_val") is not None and len(data["x_val"]) > 0
    if has_val and trainer.best_params is not None:
        trainer.restore_best()
        kind, epoch = "best-val", trainer.best_epoch
    else:
        kind, epoch = "last", trainer.epoch
    acc = trainer.evaluate(data["x_test"], data["y_test"])
    return {"test_accuracy": acc, "params": kind, "epoch": epoch}


def main(argv=None):
    args = parse_args(argv)
    # -- data parallelism (--distributed): rank 0 alone prints and writes -----------------------
    comm = None
    if args.distributed:
        from nbconv import distributed
        comm = distributed.init(threads=args.threads_per_rank)
        if comm.rank != 0:
            sys.stdout = open(os.devnull, "w")
            args.no_progress = True
    if args.resume is not None:
        src = resume_args(args)
        fill_defaults(args, lambda m: (_ for _ in ()).throw(SystemExit(m)))
    elif comm is None or comm.rank == 0:
        args.out = new_out_dir(args)
    if comm is not None and args.resume is None:   # every rank writes into rank 0's folder
        args.out = _bcast_text(comm, args.out if comm.rank == 0 else "")
    data_dir = args.data_dir
    if args.download:
        data_dir = D.download(data_dir or "data", progress=not args.no_progress)
    data = D.prepare(data_dir, val_size=args.val_size, dtype=np.dtype(args.dtype), seed=args.seed)
    print(f"data: {len(data['x_train'])} train / {len(data['x_val'])} val / "
          f"{len(data['x_test'])} test images from {data_dir or D.SAMPLE_DIR}", flush=True)

    model = build_model(args)
    if comm is not None:
        if args.sync_bn:
            from nbconv.layers import convert_sync_batchnorm
            model = convert_sync_batchnorm(model, comm)
        distributed.broadcast_parameters(model, comm)
    opt, sched = build_optimizer(args, model)
    crop, flip = (4 if args.augment == "crop-flip" else 0), args.augment != "none"
    trainer = Trainer(model, opt, sched, batch_size=args.batch_size, crop=crop, flip=flip,
                      seed=args.seed, progress=not args.no_progress, verbose=True, comm=comm)
    ckpt = os.path.join(args.out, "checkpoint.npz")
    if args.resume is not None:
        saved_epochs = None
        try:
            trainer.load(src)
            saved_epochs = trainer.run_args.get("epochs")
        except (CheckpointError, FileNotFoundError) as e:
            raise SystemExit(f"cannot resume: {e}")
        print(f"resumed from {src} at epoch {trainer.epoch}"
              + (f", batch {trainer.partial['batch']}" if trainer.partial else ""), flush=True)
        if trainer.epoch >= args.epochs:
            raise SystemExit(f"nothing to do: the run in {args.out} already trained "
                             f"{trainer.epoch} epochs (of {saved_epochs})")
    trainer.run_args = run_args(args)
    n_params = sum(p.size for p in model.params.values())
    print(f"model: {args.model} ({n_params:,} parameters, {args.dtype}); optimizer {args.optimizer} "
          f"lr {args.lr:g} wd {args.weight_decay:g} batch {args.batch_size} "
          f"schedule {args.schedule} augment {args.augment}", flush=True)
    if comm is None or comm.rank == 0:
        write_json(os.path.join(args.out, "args.json"), trainer.run_args)

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
    train(trainer, data, args, ckpt, pictures)
    res = result(trainer, data)
    if trainer.is_root:
        write_json(os.path.join(args.out, "metrics.json"), dict(trainer.metrics(), result=res))
    which = ("the best validation epoch's parameters" if res["params"] == "best-val" else
             "the last epoch's parameters")
    kernels = trainer.compile_seconds or 0
    print(f"trained {trainer.epoch} epochs in {time.perf_counter() - t0 - kernels:.0f} s (+ "
          f"{kernels:.0f} s kernels); outputs in {args.out}")
    print(f"test accuracy {res['test_accuracy']:.4f} ({which}: epoch {res['epoch']})")
    return res["test_accuracy"]


if __name__ == "__main__":
    if "--distributed" in sys.argv[1:]:   # a failing rank aborts the whole MPI job
        from nbconv.distributed import run_main
        run_main(main)
    else:
        try:
            main()
        except KeyboardInterrupt:  # Ctrl-C before training started (during training: see train)
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a further Ctrl-C changes nothing now
            print("\nstopped before training started (nothing to continue)", flush=True)
            raise SystemExit(130)
