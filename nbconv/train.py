"""Training loop with progress bar, history, best parameters and exact-resume checkpoints.

::

    trainer = Trainer(model, optimizer, scheduler=None, batch_size=64, crop=4, flip=True, seed=0)
    trainer.fit(data, epochs=10, checkpoint="run/checkpoint.npz", metrics="run/metrics.json")

``model`` is an :class:`nbconv.layers.Layer` (``model(x) -> logits (N, classes)``,
``model.backward``, ``model.params``/``model.grads``/``model.buffers`` flat dicts,
``train()``/``eval()``, ``state_dict()``/``load_state_dict()``, ``get_extra_state()``/
``set_extra_state()``);
``optimizer`` has ``step()``, ``state_dict()`` and ``load_state_dict()`` (so has ``scheduler``,
stepped once per epoch). ``data`` is a dict with ``x_train (N, C, H, W)``, ``y_train (N,)`` and
optionally ``x_val``/``y_val`` and ``x_test``/``y_test`` (see :func:`nbconv.data.prepare`).

Each epoch appends to :attr:`Trainer.history` a dict ``{"epoch", "loss", "train_accuracy",
"val_accuracy", "test_accuracy", "seconds", "images_per_second"}``: ``loss`` and
``train_accuracy`` are means over the epoch's training batches (train mode, augmented),
``val``/``test`` accuracies are measured in eval mode afterwards (``None`` without that split).
:attr:`best_params` keeps a copy of the parameters and buffers of the epoch with the best
validation accuracy (training accuracy without a validation split).

Checkpoints (:meth:`Trainer.save` / :meth:`Trainer.load`) are one ``.npz`` file in the format of
:mod:`nbconv.checkpoint` (no pickles, written atomically, SHA-256 checksum). It holds the model's
``state_dict()`` (parameters, buffers, BatchNorm2d's ``num_batches_tracked``) and
``get_extra_state()`` (e.g. Dropout's random generator), the optimizer and scheduler state,
epoch, history, best parameters, the data shuffling/augmentation generator, the position in a
partial epoch (after a stop request) and the run's arguments (:attr:`Trainer.run_args`).
:meth:`Trainer.load` checks everything before it changes anything and raises
:class:`CheckpointError` on a corrupted, truncated or mismatched file: the model, optimizer and
trainer are never left half-loaded. Training resumed from a checkpoint of epoch k gives bitwise
the same parameters as an uninterrupted run.
"""
import contextlib
import copy
import json
import threading
import time

import numpy as np

from . import checkpoint as ckpt
from ._config import compiling_announced
from ._interrupt import TrainingInterrupted, sigint_requests_stop
from ._io import atomic_write
from .checkpoint import CheckpointError
from .data import BatchIterator
from .layers import no_grad

__all__ = ["Trainer", "CheckpointError", "TrainingInterrupted", "accuracy", "write_json"]


def accuracy(logits, labels):
    """Fraction of rows of ``logits (N, K)`` whose argmax equals ``labels (N,)``."""
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def write_json(path, obj):
    """Write ``obj`` as JSON to ``path`` atomically (temp file + rename)."""
    atomic_write(path, json.dumps(obj, indent=1).encode())


# ---- the trainer --------------------------------------------------------------------------------

class Trainer:
    """Train ``model`` with ``optimizer`` (and an optional per-epoch ``scheduler``).

    ``loss``: a callable ``(logits (N, K), labels (N,)) -> (loss, dlogits)``, default
    :class:`nbconv.layers.SoftmaxCrossEntropy`. ``batch_size``/``crop``/``flip``: the training
    :class:`nbconv.data.BatchIterator` (shuffled with a generator seeded by ``seed``).
    ``eval_batch_size``: batch size of the accuracy passes. ``progress``: show a tqdm bar
    (loss, accuracy, images/s). ``verbose``: print one line per epoch (default: ``progress``).
    ``warmup``: before the first epoch, compile (or load from Numba's cache) the kernels the
    model needs at the batch sizes this run uses (:func:`nbconv.warmup.warm_up`), announced when
    ``verbose``, so that compile time stays out of the epoch times, images/s and the progress
    bar's ETA; it is kept apart in :attr:`compile_seconds` (and ``metrics.json``).

    ``comm``: a :class:`nbconv.distributed.Communicator` for data-parallel training under
    ``mpiexec`` (pass the plain optimizer): each rank takes its contiguous slice of every global
    batch of ``batch_size`` (all ranks draw the same order and augmentation from ``seed``),
    gradients are averaged with one Allreduce per step, metrics are reduced over the ranks,
    buffers are taken from rank 0 after each epoch, and only rank 0 shows progress, prints and
    writes checkpoints/metrics (and calls ``on_epoch_end``). See :mod:`nbconv.distributed`.
    """

    def __init__(self, model, optimizer, scheduler=None, loss=None, batch_size=64, crop=0,
                 flip=False, seed=0, eval_batch_size=500, progress=True, verbose=None,
                 warmup=True, comm=None):
        if loss is None:
            from .layers import SoftmaxCrossEntropy
            loss = SoftmaxCrossEntropy()
        self.model, self.optimizer, self.scheduler, self.loss = model, optimizer, scheduler, loss
        self.batch_size, self.crop, self.flip = batch_size, crop, flip
        self.eval_batch_size, self.progress = eval_batch_size, progress
        self.verbose = progress if verbose is None else verbose
        self.rng = np.random.default_rng(seed)  # data order and augmentation
        self.epoch = 0
        self.history = []
        self.best_params = None  # {"params": {...}, "buffers": {...}} copies
        self.best_epoch = None
        self.best_score = -np.inf
        self.warmup, self.compile_seconds = warmup, None
        self.partial = None  # a checkpoint written mid-epoch: where the epoch stopped
        self.run_args = None  # JSON-able arguments of the run, saved with the checkpoint
        self._stop = threading.Event()
        # data parallelism (nbconv.distributed): None in a single process
        self.dp = None
        if comm is not None:
            if getattr(optimizer, "averages_gradients", False):
                raise ValueError("with comm=..., pass the plain optimizer: the Trainer averages "
                                 "the gradients itself (got a DistributedOptimizer)")
            from .distributed import DataParallel
            self.dp = DataParallel(comm, model)
        self.is_root = self.dp is None or self.dp.rank == 0
        if not self.is_root:
            self.progress = self.verbose = False

    # -- evaluation --------------------------------------------------------------------------
    def predict(self, x):
        """Logits of ``x (N, C, H, W)`` in eval mode under :class:`~nbconv.no_grad`, computed
        in batches (mode restored)."""
        was = getattr(self.model, "training", True)
        self.model.eval()
        try:
            with no_grad():   # keeps nothing for backward: only the live activations
                return np.concatenate([self.model(x[i:i + self.eval_batch_size])
                                       for i in range(0, len(x), self.eval_batch_size)])
        finally:
            self.model.train(was)

    def evaluate(self, x, y):
        """Accuracy of the model on ``x (N, C, H, W)``, ``y (N,)`` in eval mode."""
        if self.dp is not None:
            return self.dp.evaluate(self.predict, x, y)
        return accuracy(self.predict(x), y)

    # -- training ----------------------------------------------------------------------------
    def train_epoch(self, x, y, desc="train"):
        """One pass over ``(x, y)``; returns ``(mean loss, accuracy, images/s)``. Continues a
        partial epoch (:attr:`partial`, from a checkpoint written mid-epoch) where it stopped;
        after a stop request it finishes the current batch, records :attr:`partial` and
        returns ``None``."""
        from tqdm.auto import tqdm

        p, self.partial = self.partial, None
        if p is not None:
            self.rng.bit_generator.state = p["rng"]  # the epoch's start: same order and crops
        start_state = self.rng.bit_generator.state
        batches = BatchIterator(x, y, self.batch_size, shuffle=True, crop=self.crop,
                                flip=self.flip, seed=self.rng)
        self.model.train()
        total_loss, correct, seen, skip = 0.0, 0, 0, 0
        if p is not None:
            total_loss, correct, seen, skip = p["loss"], p["correct"], p["seen"], p["batch"]
        t0 = time.perf_counter() - (p["seconds"] if p is not None else 0.0)
        with tqdm(total=len(batches), initial=skip, desc=desc, unit="batch",
                  disable=not self.progress, leave=False, dynamic_ncols=True) as bar:
            for i, (xb, yb) in enumerate(batches):
                if i < skip:  # drawn again (for the generator's sake), trained before the stop
                    continue
                if self.dp is not None:   # this rank's slice; scale: see DataParallel.shard
                    shard = self.dp.shard(xb, yb)
                    if shard is None:
                        bar.update(1)
                        continue
                    xb, yb, scale = shard
                logits = self.model(xb)
                loss, dlogits = self.loss(logits, yb)
                if self.dp is not None and scale != 1:
                    dlogits = dlogits * dlogits.dtype.type(scale)
                self.model.backward(dlogits)
                if self.dp is not None:
                    self.dp.average_gradients()
                self.optimizer.step()
                total_loss += float(loss) * len(yb)
                correct += int(np.sum(np.argmax(logits, axis=1) == yb))
                seen += len(yb)
                bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}",
                                img_s=f"{seen / (time.perf_counter() - t0):.0f}", refresh=False)
                bar.update(1)
                if self._stop.is_set() and i + 1 < len(batches):
                    self.partial = {"rng": start_state, "batch": i + 1, "loss": total_loss,
                                    "correct": correct, "seen": seen,
                                    "seconds": time.perf_counter() - t0}
                    return None
        if self.dp is not None:
            total_loss, correct, seen = self.dp.reduce_sums(total_loss, correct, seen)
        return total_loss / seen, correct / seen, seen / (time.perf_counter() - t0)

    def fit(self, data, epochs, checkpoint=None, metrics=None, on_epoch_end=None):
        """Train until :attr:`epoch` reaches ``epochs`` (a resumed trainer continues where its
        checkpoint stopped). After every epoch: the scheduler steps, the history grows, the
        best parameters are updated, ``checkpoint`` (a path) and ``metrics`` (a path for
        ``{"epochs": history}`` JSON) are written atomically, and ``on_epoch_end(trainer)`` is
        called. Returns :attr:`history`.

        After a stop request (:meth:`request_stop`, Ctrl-C under :meth:`stop_on_sigint`) the
        current batch is finished, the checkpoint (if any) written with the partial epoch, and
        :class:`TrainingInterrupted` raised; loading that checkpoint and calling ``fit`` again
        continues bitwise as if there had been no stop."""
        for split in ("x_train", "y_train"):
            if split not in data:
                raise ValueError(f"data must hold {split!r}, got keys {sorted(data)}")
        has_val = data.get("x_val") is not None and len(data["x_val"]) > 0
        has_test = data.get("x_test") is not None and len(data["x_test"]) > 0
        # under MPI the kernels compile in the first steps: a warm-up copy of the model would
        # need its own collectives (SyncBatchNorm2d holds the communicator)
        if self.warmup and self.dp is None and self.epoch < epochs and self.compile_seconds is None:
            self.warm_up(data)
        while self.epoch < epochs:
            t0 = time.perf_counter()
            result = self.train_epoch(
                data["x_train"], data["y_train"], desc=f"epoch {self.epoch + 1}/{epochs}")
            if result is None:
                batch = self.partial["batch"]
                if checkpoint is not None and self.is_root:
                    self.save(checkpoint)
                raise TrainingInterrupted(self.epoch, batch, checkpoint)
            loss, train_acc, ips = result
            if self.scheduler is not None:
                self.scheduler.step()
            if self.dp is not None:
                self.dp.sync_buffers()
            val_acc = self.evaluate(data["x_val"], data["y_val"]) if has_val else None
            test_acc = self.evaluate(data["x_test"], data["y_test"]) if has_test else None
            self.epoch += 1
            self.history.append({"epoch": self.epoch, "loss": loss, "train_accuracy": train_acc,
                                 "val_accuracy": val_acc, "test_accuracy": test_acc,
                                 "seconds": time.perf_counter() - t0, "images_per_second": ips})
            score = val_acc if has_val else train_acc
            if score > self.best_score:
                self.best_score, self.best_epoch = score, self.epoch
                self.best_params = self._copy_state()
            if self.verbose:
                fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
                print(f"epoch {self.epoch}/{epochs}: loss {loss:.4f}  train {train_acc:.4f}  "
                      f"val {fmt(val_acc)}  test {fmt(test_acc)}  {ips:.0f} img/s  "
                      f"{self.history[-1]['seconds']:.1f} s", flush=True)
            if checkpoint is not None and self.is_root:
                self.save(checkpoint)
            if metrics is not None and self.is_root:
                write_json(metrics, self.metrics())
            if on_epoch_end is not None and self.is_root:
                on_epoch_end(self)
            if self._stop.is_set() and self.epoch < epochs:
                raise TrainingInterrupted(self.epoch, 0, checkpoint)
        return self.history

    def metrics(self):
        """What ``metrics.json`` holds: ``{"epochs": history, "compile_seconds": seconds of
        the warm-up (compiling or loading kernels; ``None`` without one)}``."""
        return {"epochs": self.history, "compile_seconds": self.compile_seconds}

    def warm_up(self, data):
        """Compile or load the kernels for the batch sizes :meth:`fit` will use on ``data``
        (see :mod:`nbconv.warmup`); prints one line when ``verbose``. Returns the seconds."""
        from . import warmup as W
        x = data["x_train"]
        train = W._sizes(len(x), self.batch_size)
        evals = set()
        for split in ("x_train", "x_val", "x_test"):
            if data.get(split) is not None and len(data[split]):
                evals.update(W._sizes(len(data[split]), self.eval_batch_size))
        if self.verbose:
            compiling_announced()  # the line below tells of compiling: no second notice
            print(W.announce(x.dtype), end="", flush=True)
        sec, compiled = W.warm_up(self.model, x.shape[1:], train, sorted(evals), self.loss,
                                  x.dtype, optimizer=self.optimizer)
        if self.verbose:
            print(W.report(sec, compiled), flush=True)
        self.compile_seconds = sec
        return sec

    def request_stop(self):
        """Ask :meth:`fit` to stop after the current batch (thread- and signal-safe)."""
        self._stop.set()

    @contextlib.contextmanager
    def stop_on_sigint(self, message=None):
        """Within this block, the first Ctrl-C (SIGINT) calls :meth:`request_stop` (printing
        ``message``, if given), a second one raises ``KeyboardInterrupt`` at once (files are
        written atomically, so none is left half-written). Main thread only."""
        with sigint_requests_stop(self._stop, message):
            yield self

    def _copy_state(self):
        buffers = getattr(self.model, "buffers", {}) or {}
        return {"params": {k: v.copy() for k, v in self.model.params.items()},
                "buffers": {k: v.copy() for k, v in buffers.items()}}

    def restore_best(self):
        """Copy the best epoch's parameters and buffers into the model (in place)."""
        if self.best_params is None:
            raise RuntimeError("restore_best called before any epoch was trained")
        for k, v in self.best_params["params"].items():
            self.model.params[k][...] = v
        for k, v in self.best_params["buffers"].items():
            self.model.buffers[k][...] = v

    # -- checkpoints -------------------------------------------------------------------------
    def _model_signature(self, state_dict):
        return ckpt.signature(state_dict, [k for k, _ in self.model.named_parameters()])

    def state(self):
        """``(meta, arrays)``: everything a checkpoint holds, as a JSON-able dict and a dict of
        named arrays (layout in :mod:`nbconv.checkpoint`)."""
        arrays = {}
        sd = self.model.state_dict()
        sig = self._model_signature(sd)
        for kind, prefix in (("params", "param"), ("buffers", "buffer")):
            for k in sig[kind]:
                arrays[f"{prefix}/{k}"] = sd[k]
        best = None
        if self.best_params is not None:
            for kind in ("params", "buffers"):
                for k, v in self.best_params[kind].items():
                    arrays[f"best_{kind}/{k}"] = v
            best = {"epoch": self.best_epoch, "score": self.best_score}
        meta = {
            "signature": sig,
            "optimizer_class": type(self.optimizer).__name__,
            "scheduler_class": None if self.scheduler is None else type(self.scheduler).__name__,
            "epoch": self.epoch, "history": self.history, "best": best,
            "optimizer": ckpt.encode(self.optimizer.state_dict(), arrays, "optimizer"),
            "scheduler": None if self.scheduler is None else
            ckpt.encode(self.scheduler.state_dict(), arrays, "scheduler"),
            "extra": ckpt.encode(self.model.get_extra_state(), arrays, "extra"),
            "rng": {"data": self.rng.bit_generator.state},
            "partial": self.partial,
            "args": self.run_args,
        }
        return meta, arrays

    def save(self, path):
        """Write the checkpoint ``.npz`` to ``path`` atomically."""
        ckpt.write(path, *self.state())

    @staticmethod
    def read(path):
        """Read and verify a checkpoint file: ``(meta, arrays)`` (see
        :func:`nbconv.checkpoint.read`); ``CheckpointError`` if it is unreadable, truncated,
        altered (checksum) or of another format/version."""
        return ckpt.read(path)

    def load(self, path):
        """Restore model, optimizer, scheduler, epoch, history, best parameters and RNG states
        from ``path``. Everything is checked first (every array against the signature: present,
        same shape, same dtype; epoch, history, best entry and generator states by type); on any
        failure nothing is changed and :class:`CheckpointError` is raised."""
        meta, arrays = self.read(path)
        try:
            parts = self._check(meta, arrays)
        except CheckpointError as e:
            raise CheckpointError(f"checkpoint {path}: {e}") from None
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise CheckpointError(f"checkpoint {path} does not match its metadata: "
                                  f"{type(e).__name__}: {e}") from e
        state, extra, opt_state, sched_state, best_params = parts

        # everything checked: apply, rolling back if a part refuses its state
        backup = (self.model.state_dict(), self.model.get_extra_state(),
                  copy.deepcopy(self.optimizer.state_dict()),
                  None if self.scheduler is None else copy.deepcopy(self.scheduler.state_dict()))
        try:
            self.model.load_state_dict(state)
            self.model.set_extra_state(extra)
            self.optimizer.load_state_dict(opt_state)
            if self.scheduler is not None:
                self.scheduler.load_state_dict(sched_state)
        except Exception as e:
            self.model.load_state_dict(backup[0])
            self.model.set_extra_state(backup[1])
            self.optimizer.load_state_dict(backup[2])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(backup[3])
            raise CheckpointError(f"checkpoint {path}: model/optimizer/scheduler state "
                                  f"rejected: {e}") from e
        self.rng.bit_generator.state = meta["rng"]["data"]
        self.epoch, self.history = meta["epoch"], meta["history"]
        self.partial = meta.get("partial")
        self.run_args = meta.get("args")
        if meta["best"] is None:
            self.best_params, self.best_epoch, self.best_score = None, None, -np.inf
        else:
            self.best_params = best_params
            self.best_epoch, self.best_score = meta["best"]["epoch"], float(meta["best"]["score"])
        return self

    def _check(self, meta, arrays):
        """Everything :meth:`load` assigns, built and checked without changing anything:
        ``(state_dict, extra, optimizer state, scheduler state, best_params)``."""
        mine = self._model_signature(self.model.state_dict())
        if meta["signature"] != mine:
            raise CheckpointError(f"made for another model: "
                                  f"{ckpt.signature_diff(meta['signature'], mine)}")
        if meta["optimizer_class"] != type(self.optimizer).__name__:
            raise CheckpointError(f"holds {meta['optimizer_class']} state, the optimizer is "
                                  f"{type(self.optimizer).__name__}")
        sched = None if self.scheduler is None else type(self.scheduler).__name__
        if meta["scheduler_class"] != sched:
            raise CheckpointError(f"holds scheduler {meta['scheduler_class']}, the trainer has "
                                  f"{sched}")

        return ckpt.check_entries(meta, arrays, mine, self.rng,
                                  getattr(self.model, "buffers", {}) or {})
