"""Train a CIFAR-10 convnet with nbconv and print its test accuracy.

The command behind ``python scripts/train_cifar.py`` and the ``nbconv-train`` console script
(``main(argv=None)`` returns the exit status)::

    python scripts/train_cifar.py                       # three-layer net on the bundled sample
    python scripts/train_cifar.py --model deep --epochs 20 --out runs/deep
    python scripts/train_cifar.py --download --data-dir data   # the full data set, into ./data
    python scripts/train_cifar.py --data-dir PATH/cifar-10-batches-py --epochs 10
    python scripts/train_cifar.py --out runs/deep --resume                # continue a run
    mpiexec -n 2 python scripts/train_cifar.py --distributed ...          # 2 ranks (MPI)

Every run writes into its own folder: ``--out`` (refused if it exists and is not empty, unless
``--resume`` or ``--force``), by default a new ``runs/<YYYYmmdd-HHMMSS>``, created only once the
data has loaded. It holds ``metrics.json`` (``{"epochs": [{"epoch", "loss", "train_accuracy",
"val_accuracy", "test_accuracy", "seconds", "images_per_second"}, ...], "compile_seconds": s,
"result": {"test_accuracy", "params", "epoch"}}``, rewritten after every epoch; ``result`` is
written at the end), ``curves.png`` (loss left, train/val/test accuracy right), ``filters.png``
(the first conv layer's filters), ``args.json`` and ``checkpoint.npz`` (everything ``--resume``
needs, the run's arguments included).

Before the first epoch the kernels are compiled (first run only) or loaded from Numba's cache,
in the open and timed apart (``compile_seconds``): epoch seconds and images/s are training only.

``--out DIR --resume`` continues the run in DIR with the arguments saved in its checkpoint: an
explicit option that contradicts them is refused (``--epochs`` may change, and is announced,
unless the learning-rate schedule depends on it: cosine and step schedules are planned for the
run's epochs, so extending them is refused; start a new run instead). Ctrl-C finishes the
current batch, saves a checkpoint and exits (status 130) with the command that continues the
run; a second Ctrl-C stops at once (status 130 too; files are written atomically, so none is
left damaged). Positions are counted as the progress bar counts them: ``epoch 6, batch 22/40``
is inside the 6th epoch, 22 of its 40 batches done; ``end of epoch 5`` is between epochs.

The result: with a validation split, the parameters of the epoch with the best validation
accuracy are restored at the end and their test accuracy is the result (``"params":
"best-val"``); without one, the last epoch's (``"params": "last"``).

Errors: a bad argument ends with one line on stderr naming the option, its value and what to
do, exit status 2 (argparse's convention); a failure at run time (a damaged data file, a full
disk, an unreadable checkpoint) with one line and status 1; Ctrl-C with status 130.

Under ``--distributed`` every rank compares, before anything is written, the run's arguments and
a SHA-256 digest of the data it loaded (and of the checkpoint it resumes from) with the other
ranks': a mismatch ends the whole job, naming the option and every rank's value.
"""
import argparse
import datetime
import errno
import hashlib
import json
import os
import shlex
import signal
import sys
import time

import numpy as np

from . import data as D
from . import models, optim, viz
from ._interrupt import TrainingInterrupted, position
from .checkpoint import CheckpointError
from .train import Trainer, write_json

__all__ = ["main", "build_parser", "parse_args", "CommandError"]

#: the defaults that depend on ``--model``
MODEL_DEFAULTS = {
    "three-layer": dict(optimizer="adam", lr=1e-3, batch_size=50, weight_decay=0.0, epochs=10,
                        augment="flip", schedule="none"),
    "deep": dict(optimizer="adamw", lr=2e-3, batch_size=64, weight_decay=5e-4, epochs=20,
                 augment="flip", schedule="cosine"),
}
#: He et al. 2016's CIFAR ResNets (section 4.2) and their recipe: SGD with momentum 0.9 (the
#: --momentum default), weight decay 1e-4, lr 0.1 divided by 10 at 50% and 75% of training
#: (their 32k and 48k of 64k iterations; "multistep" scales it to --epochs), batch 128, 4-pixel
#: zero-pad random crops and horizontal flips; 182 epochs are their 64k iterations of batch 128
#: over the 45k training images. (Their ResNet-110 also warms up at lr 0.01 for about 400
#: iterations: not done here.)
RESNETS = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110")
MODEL_DEFAULTS.update({m: dict(optimizer="sgd", lr=0.1, batch_size=128, weight_decay=1e-4,
                               epochs=182, augment="crop-flip", schedule="multistep")
                       for m in RESNETS})
#: the schedules planned for the run's --epochs (a resumed run may not extend them)
PLANNED = ("cosine", "step", "multistep")
#: the other defaults (every option's argparse default is None, so that an option given on the
#: command line can be told from a default; these fill in the rest)
DEFAULTS = dict(model="three-layer", momentum=0.9, val_size=0.1, hidden=100, norm="batch",
                shortcut="A", dtype="float32", seed=0)
#: options that apply to some models only: given explicitly with another model, refused
MODEL_OPTIONS = {"hidden": ("three-layer",), "weight_scale": ("three-layer",),
                 "norm": ("deep",), "shortcut": RESNETS}
#: on/off options (None until filled in: False)
SWITCHES = ("download", "force", "no_progress", "distributed", "sync_bn")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
# options that do not change what a resumed run computes: a new value is announced, not refused
HARMLESS = ("epochs", "no_progress", "download", "sync_bn")
# options that only say where/how to run, never saved with the run
NOT_SAVED = ("out", "resume", "force", "distributed", "threads_per_rank")
# saved options that the ranks of one MPI job may hold differently (the data they name is
# compared through its digest instead)
RANK_LOCAL = ("no_progress", "download", "data_dir")


class CommandError(Exception):
    """A mistake the command reports in one line: ``status`` 2 for a bad argument, 1 for a
    failure at run time."""

    def __init__(self, message, status=2):
        super().__init__(message)
        self.status = status


def _run_error(message):
    return CommandError(message, status=1)


# ---- arguments ---------------------------------------------------------------------------------

def _count_or_fraction(text):
    v = float(text)
    if v < 0 or (v >= 1 and v != int(v)):
        raise argparse.ArgumentTypeError(f"expected a count or a fraction in [0, 1), got {text}")
    return int(v) if v >= 1 else v


def _default(key):
    """``(default: ...)`` for the help of option ``key`` (models in a row with the same default
    grouped: ``three-layer/deep flip``, ``resnet20..resnet110 0.1``)."""
    if key in DEFAULTS:
        return f"(default: {DEFAULTS[key]})"
    groups = []   # [([models], value)]
    for m, d in MODEL_DEFAULTS.items():
        if groups and groups[-1][1] == d[key]:
            groups[-1][0].append(m)
        else:
            groups.append(([m], d[key]))
    return "(default: " + ", ".join(
        ("/".join(ms) if len(ms) < 3 else f"{ms[0]}..{ms[-1]}") + " "
        + (f"{v:g}" if isinstance(v, float) else str(v)) for ms, v in groups) + ")"


EPILOG = """\
outputs: --out holds metrics.json (per-epoch history and the result), curves.png,
filters.png, args.json and checkpoint.npz; --out DIR --resume continues that run with its
saved arguments (an option that contradicts them is refused).
exit status: 0 done, 2 a bad argument, 1 a failure at run time (one line on stderr),
130 Ctrl-C (the first saves a checkpoint and prints the command that continues).
More: python -c "import nbconv.cli; help(nbconv.cli)"."""


def build_parser():
    """The argument parser. Every default is ``None`` (see :data:`DEFAULTS`); the help shows
    the real ones."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=EPILOG)
    ap.add_argument("--model", choices=list(models.MODELS),
                    help="network: the CS231n three-layer net, a small deep net, or He et "
                         "al.'s CIFAR ResNets (their recipe as the defaults) " + _default("model"))
    ap.add_argument("--data-dir",
                    help="a cifar-10-batches-py folder (or its parent) (default: the sample "
                         "bundled with nbconv; with --download: where to download, default "
                         "./data)")
    ap.add_argument("--download", action="store_true", default=None,
                    help="download the official CIFAR-10 tarball (MD5 checked) into --data-dir")
    ap.add_argument("--epochs", type=int, help="epochs to train " + _default("epochs"))
    ap.add_argument("--batch-size", type=int,
                    help="training batch size " + _default("batch_size"))
    ap.add_argument("--lr", type=float, help="learning rate " + _default("lr"))
    ap.add_argument("--optimizer", choices=OPTIMIZERS, help=_default("optimizer"))
    ap.add_argument("--weight-decay", type=float, help=_default("weight_decay"))
    ap.add_argument("--momentum", type=float, help="SGD momentum " + _default("momentum"))
    ap.add_argument("--schedule", choices=("none", "cosine", "step", "multistep"),
                    help="per-epoch learning-rate schedule: cosine to 0, step (/10 every "
                         "epochs/3) or multistep (/10 at 50%% and 75%% of the epochs, He et "
                         "al.) " + _default("schedule"))
    ap.add_argument("--augment", choices=("none", "flip", "crop-flip"),
                    help="training-image augmentation: random horizontal flip, and random crop "
                         "(pad 4) " + _default("augment"))
    ap.add_argument("--val-size", type=_count_or_fraction,
                    help="training images held out for validation: a count, or a fraction "
                         "below 1 " + _default("val_size"))
    ap.add_argument("--hidden", type=int, help="three-layer: hidden units " + _default("hidden"))
    ap.add_argument("--weight-scale", type=float,
                    help="three-layer: normal(0, scale) weights (default: PyTorch's init)")
    ap.add_argument("--norm", choices=("batch", "group"),
                    help="deep: normalisation layer " + _default("norm"))
    ap.add_argument("--shortcut", choices=("A", "B"),
                    help="resnet*: the shortcut where a stage halves the size: A subsampling "
                         "and zero channels (no parameters, the paper's), B 1x1 conv + "
                         "BatchNorm " + _default("shortcut"))
    ap.add_argument("--dtype", choices=("float32", "float64"),
                    help="parameter and data dtype " + _default("dtype"))
    ap.add_argument("--seed", type=int,
                    help="seed of the weights, split and batches " + _default("seed"))
    ap.add_argument("--out",
                    help="output folder; must not exist or be empty unless --resume or "
                         "--force (default: a new runs/<YYYYmmdd-HHMMSS>)")
    ap.add_argument("--resume", nargs="?", const="", metavar="CHECKPOINT",
                    help="continue the run in --out with its saved arguments, from CHECKPOINT "
                         "(default: --out/checkpoint.npz; --out defaults to its folder)")
    ap.add_argument("--force", action="store_true", default=None,
                    help="write into an existing, non-empty --out (its files are replaced)")
    ap.add_argument("--no-progress", action="store_true", default=None, help="no progress bar")
    ap.add_argument("--distributed", action="store_true", default=None,
                    help="data-parallel over MPI: run under mpiexec -n P; --batch-size is the "
                         "global batch, split over the ranks; rank 0 prints and writes")
    ap.add_argument("--sync-bn", action="store_true", default=None,
                    help="with --distributed: BatchNorm statistics over the global batch")
    ap.add_argument("--threads-per-rank", type=int,
                    help="with --distributed: Numba threads per rank (default: cores / local "
                         "ranks)")
    return ap


def parse_args(argv=None):
    """The parsed options, with ``.explicit``: the set of options given on the command line.
    Unless resuming, the defaults are filled in (:func:`fill_defaults`); when resuming,
    :func:`resume_args` fills them from the checkpoint first. argparse's own errors (an unknown
    option, a bad choice) exit with status 2, ``--help`` with 0 (``SystemExit``)."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    args.explicit = {k for k, v in vars(args).items() if v is not None}
    if args.resume is None:
        fill_defaults(args)
    return args


def _flag(k):
    return "--" + k.replace("_", "-")


def fill_defaults(args):
    """Fill every option still ``None`` with its default (per model where it depends on the
    model) and check the numbers: :class:`CommandError` naming the option otherwise."""
    for k, v in DEFAULTS.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    for k, v in MODEL_DEFAULTS[args.model].items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    for k in SWITCHES:
        if getattr(args, k, None) is None:
            setattr(args, k, False)
    for k, only in MODEL_OPTIONS.items():
        if k in getattr(args, "explicit", ()) and args.model not in only:
            which = only[0] if len(only) == 1 else f"{only[0]}..{only[-1]}"
            raise CommandError(f"{_flag(k)} applies to --model {which}, not --model "
                               f"{args.model}; leave it out")
    rules = (("epochs", lambda v: v >= 1, "at least 1"),
             ("batch_size", lambda v: v >= 1, "at least 1"),
             ("lr", lambda v: v > 0, "above 0"),
             ("weight_decay", lambda v: v >= 0, "0 or more"),
             ("momentum", lambda v: v >= 0, "0 or more"),
             ("hidden", lambda v: v >= 1, "at least 1"),
             ("threads_per_rank", lambda v: v >= 1, "at least 1"))
    for k, ok, want in rules:
        v = getattr(args, k, None)
        if v is not None and not ok(v):
            raise CommandError(f"{_flag(k)} {v}: must be {want}")


def run_args(args):
    """The arguments saved with the run (JSON-able; ``--data-dir`` made absolute)."""
    out = {k: v for k, v in vars(args).items() if k not in NOT_SAVED and k != "explicit"}
    if out.get("data_dir") is not None:
        out["data_dir"] = os.path.abspath(out["data_dir"])
    return out


def resume_args(args):
    """Resolve ``--resume``: the checkpoint path, ``args.out``, and every option from the
    arguments saved in the checkpoint; explicit options that contradict them are refused
    (:class:`CommandError` naming both values), harmless ones announced."""
    if args.out is None and not args.resume:
        raise CommandError("--resume needs --out DIR (the run's folder) or a checkpoint path "
                           "(--resume PATH)")
    src = args.resume or os.path.join(args.out, "checkpoint.npz")
    if args.out is None:
        args.out = os.path.dirname(os.path.abspath(src))
    if not os.path.isfile(src):
        raise CommandError(f"--resume: there is no checkpoint {src}; give the folder of an "
                           f"earlier run (--out DIR --resume) or the checkpoint's path "
                           f"(--resume PATH)")
    try:
        meta, _ = Trainer.read(src)
    except (CheckpointError, OSError) as e:
        raise _run_error(f"cannot resume: {e}") from None
    saved = meta.get("args")
    if saved is None:
        raise _run_error(f"cannot resume: {src} holds no run arguments (written by an older "
                         "nbconv); start a new run")
    given = run_args(args)
    conflicts, notes = [], []
    for k, v in saved.items():
        if k in args.explicit and given.get(k) != v:
            if k not in HARMLESS:
                conflicts.append(f"{_flag(k)} {given.get(k)} (the run used {v})")
                continue
            if k == "epochs":
                if saved.get("schedule") in PLANNED:
                    raise CommandError(
                        f"cannot resume with --epochs {given[k]}: the run's {saved['schedule']} "
                        f"learning-rate schedule was planned for {v} epochs (past them a cosine "
                        f"schedule sits near lr 0). Resume without --epochs to finish it, or "
                        f"start a new run with --epochs {given[k]}.")
                notes.append(f"--epochs {given[k]} (the run was started with {v})")
            continue
        setattr(args, k, v)
    if conflicts:
        raise CommandError(f"cannot resume {src}: " + "; ".join(conflicts) + ". Drop these "
                           "options to continue the run as it was started, or start a new run "
                           "in another --out.")
    done = meta.get("epoch")   # checked with the rest when the checkpoint is loaded
    if type(done) is int and type(args.epochs) is int and done >= args.epochs:
        more = ("start a new run to train longer (its learning-rate schedule has ended)"
                if args.schedule in PLANNED else "pass --epochs N to train it further")
        raise CommandError(f"nothing to do: the run in {args.out} already trained {done} "
                           f"epochs (of {args.epochs}); {more}")
    for n in notes:
        print(f"resume: {n}", flush=True)
    return src


# ---- the run folder ----------------------------------------------------------------------------

def check_out(args):
    """Refuse, before anything is loaded or created, an ``--out`` that cannot be used: an
    existing file, a non-empty folder (unless ``--force``), a path under a file, a folder that
    cannot be written."""
    out = args.out
    if out is None:
        return
    if os.path.exists(out) and not os.path.isdir(out):
        raise CommandError(f"--out {out}: exists and is not a folder; choose another --out")
    if os.path.isdir(out) and os.listdir(out) and not args.force:
        raise CommandError(f"--out {out} exists and is not empty: an earlier run's outputs "
                           f"would be overwritten. Use another --out, --resume to continue that "
                           f"run, or --force to overwrite it.")
    parent = os.path.abspath(out)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise CommandError(f"--out {out}: cannot be created, {parent} is a file, not a folder; "
                           f"choose another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CommandError(f"--out {out}: cannot be created, {parent} is not writable; "
                           f"choose another --out")


def _out_error(out, e, explicit):
    full = e.errno in (errno.ENOSPC, errno.EDQUOT)
    if explicit and not full:
        return CommandError(f"--out {out}: cannot be created ({e.strerror}); choose another "
                            f"--out")
    return _run_error(f"cannot create the run folder {out} ({e.strerror}); "
                      + ("free some disk space or " if full else "") + "choose another --out")


def new_out_dir(args):
    """Create the run's folder: ``--out`` (see :func:`check_out`) or a new
    ``runs/<YYYYmmdd-HHMMSS>`` (``-2``, ``-3``... if taken)."""
    if args.out is not None:
        check_out(args)
        try:
            os.makedirs(args.out, exist_ok=True)
        except OSError as e:
            raise _out_error(args.out, e, explicit=True) from None
        return args.out
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for i in range(1, 1000):
        out = os.path.join("runs", stamp if i == 1 else f"{stamp}-{i}")
        try:
            os.makedirs(out)
            return out
        except FileExistsError:
            continue
        except OSError as e:
            raise _out_error(out, e, explicit=False) from None
    raise _run_error(f"cannot create a new folder runs/{stamp}-*; pass --out DIR")


# ---- data, model, optimizer --------------------------------------------------------------------

def load_data(args):
    """The prepared data of ``--data-dir`` (or the bundled sample, or ``--download``), with the
    folder it came from under ``"dir"``; a bad folder or ``--val-size`` is a
    :class:`CommandError` naming the option."""
    data_dir = args.data_dir
    if args.download:
        try:
            data_dir = D.download(data_dir or "data", progress=not args.no_progress)
        except (OSError, ValueError) as e:
            raise _run_error(f"--download: {e}") from None
    elif data_dir is not None and not os.path.isdir(data_dir):
        raise CommandError(f"--data-dir {data_dir}: no such folder; give the path of a "
                           f"cifar-10-batches-py folder (or its parent), add --download to fetch "
                           f"the data set into it, or leave --data-dir out to use the bundled "
                           f"sample")
    try:
        raw = D.load_cifar10(data_dir)
    except FileNotFoundError:   # a folder without the CIFAR-10 files
        raise CommandError(f"--data-dir {data_dir}: holds no CIFAR-10 python batches "
                           f"(data_batch_1..5 and test_batch); give the cifar-10-batches-py "
                           f"folder (or its parent), add --download to fetch the data set into "
                           f"it, or leave --data-dir out to use the bundled sample") from None
    except (OSError, ValueError) as e:   # a damaged or unreadable file
        raise _run_error(f"--data-dir {data_dir or D.SAMPLE_DIR}: {e}") from None
    try:
        data = D.prepare_loaded(raw, val_size=args.val_size, dtype=np.dtype(args.dtype),
                                seed=args.seed)
    except ValueError as e:
        n = len(raw["x_train"])
        raise CommandError(f"--val-size {args.val_size}: {e}; use a count below {n} or a "
                           f"fraction below 1 (0 for no validation split)") from None
    data["dir"] = data_dir or D.SAMPLE_DIR
    return data


def data_digest(data):
    """SHA-256 (hex) of the prepared splits: dtype, shape and bytes of every array."""
    h = hashlib.sha256()
    for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        a = np.ascontiguousarray(data[k])
        h.update(f"{k} {a.dtype.str} {a.shape};".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def file_digest(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def build_model(args):
    dtype = np.dtype(args.dtype)
    if args.model == "three-layer":
        return models.three_layer_convnet(hidden=args.hidden, weight_scale=args.weight_scale,
                                          seed=args.seed, dtype=dtype)
    if args.model in RESNETS:
        return models.MODELS[args.model](shortcut=args.shortcut, seed=args.seed, dtype=dtype)
    return models.deep_convnet(norm=args.norm, seed=args.seed, dtype=dtype)


def milestones(epochs):
    """He et al.'s lr drops (32k and 48k of 64k iterations) scaled to ``epochs``: the epochs
    after which the learning rate is divided by 10, 50% and 75% of the run (rounded)."""
    return [max(1, int(f * epochs + 0.5)) for f in (0.5, 0.75)]


def build_optimizer(args, model):
    """``(optimizer, scheduler or None)`` for ``args.optimizer`` and ``args.schedule``."""
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
    elif args.schedule == "multistep":
        sched = optim.MultiStepLR(opt, milestones(args.epochs), gamma=0.1)
    else:
        sched = None
    return opt, sched


def first_conv_weight(model):
    for name, p in model.params.items():
        if p.ndim == 4:
            return p
    return None


def continue_command(out):
    """The command that continues the run in ``out`` (as this one was started)."""
    prog = sys.argv[0] or "scripts/train_cifar.py"
    cmd = f"python {shlex.quote(prog)}" if prog.endswith(".py") else \
        shlex.quote(os.path.basename(prog))
    return f"{cmd} --out {shlex.quote(out)} --resume"


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


# ---- MPI launch checks -------------------------------------------------------------------------

def _ranks_text(values):
    """``rank 0 0.001, rank 1 0.01`` (ranks holding the same value grouped)."""
    groups = {}
    for r, v in enumerate(values):
        groups.setdefault(json.dumps(v, sort_keys=True), []).append(r)
    parts = []
    for text, ranks in groups.items():
        who = f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ",".join(map(str, ranks))
        parts.append(f"{who} {json.loads(text)}")
    return ", ".join(parts)


def check_ranks_agree(comm, args, data, src):
    """Every rank must run the same job: compare the run's arguments, the digest of the data
    each rank loaded and of the checkpoint it resumes from (collective: every rank calls it);
    :class:`CommandError` naming each option that differs and every rank's value (the same
    message on every rank). The data folders' paths may differ (machines mount them
    differently): their contents are compared."""
    from .distributed import allgather_json
    mine = {k: v for k, v in run_args(args).items() if k not in RANK_LOCAL}
    mine["data"] = data_digest(data)[:16]
    mine["resume"] = None if src is None else file_digest(src)[:16]
    info = {"data_dir": os.path.abspath(data["dir"]), "resume": src}
    every = allgather_json(comm, [mine, info])
    differ = [k for k in sorted(set().union(*(v for v, _ in every)))
              if any(v.get(k) != every[0][0].get(k) for v, _ in every)]
    parts = []
    for k in differ:
        vals = [v.get(k) for v, _ in every]
        if k == "data" and set(differ) & {"seed", "val_size", "dtype"}:
            continue   # the split or the dtype differ: the data must differ too
        if k == "data":
            parts.append("--data-dir: the ranks loaded different data: " + ", ".join(
                f"rank {r} {i['data_dir']} (sha256 {v.get(k)})" for r, (v, i) in
                enumerate(every)))
        elif k == "resume":
            parts.append("--resume: the ranks resume from different checkpoints: " + ", ".join(
                f"rank {r} " + ("none" if i["resume"] is None else
                                f"{i['resume']} (sha256 {v.get(k)})")
                for r, (v, i) in enumerate(every)))
        else:
            parts.append(f"{_flag(k)}: {_ranks_text(vals)}")
    if parts:
        raise CommandError("the MPI ranks were started differently: " + "; ".join(parts)
                           + ". Start every rank with the same options and the same data.")


# ---- the run -----------------------------------------------------------------------------------

class _Run:
    """What the messages of an ending run need to know."""
    comm = None
    ckpt = None   # set once training may have written a checkpoint
    cont = None


def _stopped_at_once(run):
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the process is ending: no third Ctrl-C
    if run.ckpt is None:
        print("\nstopped before training started (nothing to continue)", flush=True)
    else:
        print(f"\nstopped at once: {run.ckpt} holds the last checkpoint written (if any); "
              f"continue with: {run.cont}", flush=True)
    return 130


def _from_interrupt(exc):
    """Whether ``exc`` was caused by a KeyboardInterrupt (its cause or context chain)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def train(trainer, data, args, run, pictures):
    """``trainer.fit`` under the Ctrl-C rules; returns 130 when interrupted, else ``None``."""
    metrics = os.path.join(args.out, "metrics.json")
    if trainer.dp is not None:   # ranks must stop at the same batch: Ctrl-C aborts the MPI job
        trainer.fit(data, args.epochs, checkpoint=run.ckpt, metrics=metrics,
                    on_epoch_end=pictures)
        return None
    # The first Ctrl-C asks the trainer to stop after this batch; from then on, a second one
    # ends the process at once (_exit_at_once), wherever it lands. It used to raise
    # KeyboardInterrupt, which Python swallows, with a traceback on stderr, when it lands in a
    # callback run during garbage collection or at exit (a weakref's, say). This handler stays
    # in place until the interrupted run has said where it stopped; then SIGINT is ignored
    # (Python's finalisation would put the default handler back: a Ctrl-C would kill the
    # process with status -2).
    pressed = []

    def on_sigint(signum, frame):
        if pressed:
            _exit_at_once(run)
        pressed.append(True)
        trainer.request_stop()
        _say("\nCtrl-C: stopping after this batch and saving a checkpoint (Ctrl-C again to "
             "stop at once)\n")

    old = signal.signal(signal.SIGINT, on_sigint)
    try:
        trainer.fit(data, args.epochs, checkpoint=run.ckpt, metrics=metrics,
                    on_epoch_end=pictures)
    except TrainingInterrupted as e:
        where = position(e.epoch, e.batch, _batches_per_epoch(data, args))
        print(f"interrupted at {where}: checkpoint saved in {run.ckpt}; continue with: "
              f"{run.cont}", flush=True)
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # ending now: a second Ctrl-C is moot
        return 130
    except Exception as e:
        # the second Ctrl-C's KeyboardInterrupt can surface wrapped: raised while a C extension
        # is being imported (matplotlib's, for the pictures) it becomes an ImportError
        if not _from_interrupt(e):
            raise
        return _stopped_at_once(run)
    except KeyboardInterrupt:
        return _stopped_at_once(run)
    signal.signal(signal.SIGINT, old)
    return None


def _say(text):
    """``text`` to stdout from a signal handler: straight to the file descriptor (the buffered
    stream may be in the middle of a write the handler interrupted)."""
    try:
        os.write(sys.stdout.fileno(), text.encode())
    except (OSError, ValueError):
        pass


def _exit_at_once(run):
    """The second Ctrl-C: say where the run stands and end the process now (status 130; files
    are written atomically, so none is left half-written)."""
    try:
        sys.stdout.flush()
    except Exception:   # the stream may be mid-write: what it held is lost, not corrupted
        pass
    if run.ckpt is None:
        _say("\nstopped before training started (nothing to continue)\n")
    else:
        _say(f"\nstopped at once: {run.ckpt} holds the last checkpoint written (if any); "
             f"continue with: {run.cont}\n")
    os._exit(130)


def _batches_per_epoch(data, args):
    return -(-len(data["x_train"]) // args.batch_size)


def _print_error(run, message):
    where = f"[rank {run.comm.rank}/{run.comm.size}] " if run.comm is not None else ""
    prog = os.path.basename(sys.argv[0] or "") or "nbconv-train"
    sys.stderr.write(f"{where}{prog}: error: {message}\n")
    sys.stderr.flush()


def main(argv=None):
    """Run the command with ``argv`` (default ``sys.argv[1:]``); returns the exit status: 0
    done, 2 a bad argument, 1 a failure at run time (both with one line on stderr), 130 Ctrl-C
    (after which SIGINT stays ignored: the process is ending). Under ``--distributed`` a
    non-zero status on any rank ends the whole MPI job (``MPI_Abort``)."""
    run = _Run()
    try:
        status = _main(argv, run)
    except KeyboardInterrupt:   # Ctrl-C outside the training loop's handler
        status = _stopped_at_once(run)
    except CommandError as e:
        _print_error(run, e)
        status = e.status
    except OSError as e:   # a write failed (a full disk): the checkpoint written last is intact
        if e.errno is None:
            raise
        what = f"cannot write {e.filename}: " if e.filename else ""
        kept = (f"; the last checkpoint written, {run.ckpt}, is intact"
                if run.ckpt is not None and os.path.exists(run.ckpt) else "")
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        _print_error(run, f"{what}{e.strerror}{kept}; "
                          + ("free some disk space or " if full else "") + "choose another --out")
        status = 1
    if status and run.comm is not None and run.comm.size > 1:
        run.comm.abort(status)   # a lone rank that exits would leave the others waiting
    return status


def _main(argv, run):
    try:
        args = parse_args(argv)
    except SystemExit as e:   # argparse: --help (0) or a usage error (2), already printed
        return e.code
    # -- data parallelism (--distributed): rank 0 alone prints and writes -----------------------
    comm = None
    if args.distributed:
        from . import distributed
        comm = run.comm = distributed.init(threads=args.threads_per_rank)
        if comm.rank != 0:
            sys.stdout = open(os.devnull, "w")
    root = comm is None or comm.rank == 0
    src = None
    if args.resume is not None:
        src = resume_args(args)
        fill_defaults(args)
    elif root:
        check_out(args)
    if not root:
        args.no_progress = True
    data = load_data(args)
    if comm is not None:
        check_ranks_agree(comm, args, data, src)
    if args.resume is None:
        if root:
            args.out = new_out_dir(args)
        if comm is not None:   # every rank writes into rank 0's folder
            args.out = distributed.broadcast_text(comm, args.out if root else "")
    print(f"data: {len(data['x_train'])} train / {len(data['x_val'])} val / "
          f"{len(data['x_test'])} test images from {data['dir']}", flush=True)

    model = build_model(args)
    if comm is not None:
        if args.sync_bn:
            from .layers import convert_sync_batchnorm
            model = convert_sync_batchnorm(model, comm)
        distributed.broadcast_parameters(model, comm)
    opt, sched = build_optimizer(args, model)
    crop, flip = (4 if args.augment == "crop-flip" else 0), args.augment != "none"
    trainer = Trainer(model, opt, sched, batch_size=args.batch_size, crop=crop, flip=flip,
                      seed=args.seed, progress=not args.no_progress, verbose=True, comm=comm)
    per_epoch = _batches_per_epoch(data, args)
    if src is not None:
        try:
            trainer.load(src)
        except CheckpointError as e:
            raise _run_error(f"cannot resume: {e}") from None
        batch = trainer.partial["batch"] if trainer.partial else 0
        print(f"resumed from {src} at {position(trainer.epoch, batch, per_epoch)}", flush=True)
    start = trainer.epoch * per_epoch + (trainer.partial["batch"] if trainer.partial else 0)
    trainer.run_args = run_args(args)
    n_params = sum(p.size for p in model.params.values())
    shortcut = f"shortcut {args.shortcut}, " if args.model in RESNETS else ""
    print(f"model: {args.model} ({shortcut}{n_params:,} parameters, {args.dtype}); optimizer "
          f"{args.optimizer} lr {args.lr:g} wd {args.weight_decay:g} batch {args.batch_size} "
          f"schedule {args.schedule} augment {args.augment}", flush=True)
    if root:
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

    run.ckpt, run.cont = os.path.join(args.out, "checkpoint.npz"), continue_command(args.out)
    t0 = time.perf_counter()
    status = train(trainer, data, args, run, pictures)
    if status is not None:
        return status
    seconds = time.perf_counter() - t0 - (trainer.compile_seconds or 0)
    res = result(trainer, data)
    if trainer.is_root:
        write_json(os.path.join(args.out, "metrics.json"), dict(trainer.metrics(), result=res))
    which = ("the best validation epoch's parameters" if res["params"] == "best-val" else
             "the last epoch's parameters")
    print(totals(trainer.epoch * per_epoch - start, per_epoch, seconds,
                 trainer.compile_seconds, trainer.epoch if start else None)
          + f"; outputs in {args.out}")
    print(f"test accuracy {res['test_accuracy']:.4f} ({which}: epoch {res['epoch']})")
    return 0


def totals(batches, per_epoch, seconds, kernel_seconds=None, run_epochs=None):
    """``trained 4.4 epochs (178 batches) in 14 s (+ 2 s kernels)``: what this process trained,
    and the seconds of the warm-up before it (``None``: no warm-up, under MPI the kernels
    compile in the first steps); ``run_epochs`` (after a resume) adds the run's total."""
    epochs = batches / per_epoch
    count = f"{epochs:.0f}" if batches % per_epoch == 0 else f"{epochs:.1f}"
    text = (f"trained {count} epoch{'' if count == '1' else 's'} ({batches} batches) in "
            f"{seconds:.0f} s")
    if kernel_seconds is not None:
        text += f" (+ {kernel_seconds:.0f} s kernels)"
    if run_epochs is not None:
        text += f" since the resume; the run has {run_epochs} epochs"
    return text
