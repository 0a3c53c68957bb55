"""Training loop with progress bar, history, best parameters and exact-resume checkpoints.

::

    trainer = Trainer(model, optimizer, scheduler=None, batch_size=64, crop=4, flip=True, seed=0)
    trainer.fit(data, epochs=10, checkpoint="run/checkpoint.npz", metrics="run/metrics.json")

``model`` follows the layer protocol (``model(x) -> logits (N, classes)``, ``model.backward``,
``model.params``/``model.grads``/``model.buffers`` flat dicts, ``train()``/``eval()``);
``optimizer`` has ``step()``, ``state_dict()`` and ``load_state_dict()`` (so has ``scheduler``,
stepped once per epoch). ``data`` is a dict with ``x_train (N, C, H, W)``, ``y_train (N,)`` and
optionally ``x_val``/``y_val`` and ``x_test``/``y_test`` (see :func:`nbconv.data.prepare`).

Each epoch appends to :attr:`Trainer.history` a dict ``{"epoch", "loss", "train_accuracy",
"val_accuracy", "test_accuracy", "seconds", "images_per_second"}``: ``loss`` and
``train_accuracy`` are means over the epoch's training batches (train mode, augmented),
``val``/``test`` accuracies are measured in eval mode afterwards (``None`` without that split).
:attr:`best_params` keeps a copy of the parameters and buffers of the epoch with the best
validation accuracy (training accuracy without a validation split).

Checkpoints (:meth:`Trainer.save` / :meth:`Trainer.load`) are one ``.npz`` file (no pickles)
written atomically (temp file in the same directory, then ``os.replace``). It holds the
parameters, buffers, optimizer and scheduler state, epoch, history, best parameters, the state
of every random generator (the data shuffling/augmentation one and each layer's, e.g. Dropout's),
BatchNorm2d's ``num_batches_tracked`` counters, a format version, the model's signature (parameter/buffer names, shapes, dtypes) and a SHA-256
checksum of all of it. :meth:`Trainer.load` checks everything before it changes anything and
raises :class:`CheckpointError` on a corrupted, truncated or mismatched file: the model, optimizer
and trainer are never left half-loaded. Training resumed from a checkpoint of epoch k gives
bitwise the same parameters as an uninterrupted run.
"""
import copy
import hashlib
import io
import json
import time

import numpy as np

from ._io import atomic_write
from .data import BatchIterator

__all__ = ["Trainer", "CheckpointError", "accuracy", "write_json"]

FORMAT = "nbconv-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file cannot be used: unreadable, corrupted, or made for another model."""


def accuracy(logits, labels):
    """Fraction of rows of ``logits (N, K)`` whose argmax equals ``labels (N,)``."""
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def write_json(path, obj):
    """Write ``obj`` as JSON to ``path`` atomically (temp file + rename)."""
    atomic_write(path, json.dumps(obj, indent=1).encode())


# ---- nested state <-> JSON + arrays -------------------------------------------------------------

def _encode(obj, arrays, prefix):
    """A JSON-able tree of ``obj``; arrays go into ``arrays`` under ``prefix/...`` names."""
    if isinstance(obj, np.ndarray):
        name = f"{prefix}"
        arrays[name] = obj
        return {"__array__": name}
    if isinstance(obj, dict):
        return {"__dict__": [[_encode(k, arrays, f"{prefix}/k{i}"), _encode(v, arrays, f"{prefix}/{i}")]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, arrays, f"{prefix}/{i}") for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if isinstance(obj, np.generic):
        return {"__scalar__": obj.item(), "dtype": obj.dtype.str}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint ({prefix})")


def _decode(tree, arrays):
    if isinstance(tree, list):
        return [_decode(v, arrays) for v in tree]
    if isinstance(tree, dict):
        if "__array__" in tree:
            return arrays[tree["__array__"]]
        if "__dict__" in tree:
            return {_decode(k, arrays): _decode(v, arrays) for k, v in tree["__dict__"]}
        if "__tuple__" in tree:
            return tuple(_decode(v, arrays) for v in tree["__tuple__"])
        if "__scalar__" in tree:
            return np.dtype(tree["dtype"]).type(tree["__scalar__"])
        raise CheckpointError(f"unknown entry in checkpoint: {sorted(tree)}")
    return tree


def _checksum(meta_bytes, arrays):
    h = hashlib.sha256(meta_bytes)
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _layers(model):
    """``(path, layer)`` for ``model`` and every layer it holds (attributes or lists of them)."""
    out = []

    def visit(obj, path, depth):
        out.append((path, obj))
        if depth > 8:
            return
        for name, v in sorted(vars(obj).items()):
            items = enumerate(v) if isinstance(v, (list, tuple)) else [(None, v)]
            for i, item in items:
                if hasattr(item, "__dict__") and hasattr(item, "forward") and item is not obj:
                    visit(item, f"{path}{name}." + ("" if i is None else f"{i}."), depth + 1)

    visit(model, "", 0)
    return out


def _rngs(model):
    """Every ``numpy.random.Generator`` held by ``model`` or its layers (e.g. Dropout's), by a
    stable path."""
    return {f"{path}{name}": v for path, layer in _layers(model)
            for name, v in sorted(vars(layer).items()) if isinstance(v, np.random.Generator)}


def _counters(model):
    """``path -> layer`` of the layers with a ``num_batches_tracked`` counter (BatchNorm2d: it
    sets the running-average weight when ``momentum=None``)."""
    return {path: layer for path, layer in _layers(model)
            if isinstance(getattr(layer, "num_batches_tracked", None), (int, np.integer))}


def _signature(model):
    buffers = getattr(model, "buffers", {}) or {}
    return {"params": {k: [list(v.shape), v.dtype.str] for k, v in model.params.items()},
            "buffers": {k: [list(v.shape), v.dtype.str] for k, v in buffers.items()}}


# ---- the trainer ----------------------------------------------------------------------------------

class Trainer:
    """Train ``model`` with ``optimizer`` (and an optional per-epoch ``scheduler``).

    ``loss``: a callable ``(logits (N, K), labels (N,)) -> (loss, dlogits)``, default
    :class:`nbconv.layers.SoftmaxCrossEntropy`. ``batch_size``/``crop``/``flip``: the training
    :class:`nbconv.data.BatchIterator` (shuffled with a generator seeded by ``seed``).
    ``eval_batch_size``: batch size of the accuracy passes. ``progress``: show a tqdm bar
    (loss, accuracy, images/s). ``verbose``: print one line per epoch (default: ``progress``).
    """

    def __init__(self, model, optimizer, scheduler=None, loss=None, batch_size=64, crop=0,
                 flip=False, seed=0, eval_batch_size=500, progress=True, verbose=None):
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

    # -- evaluation --------------------------------------------------------------------------
    def predict(self, x):
        """Logits of ``x (N, C, H, W)`` in eval mode, computed in batches (mode restored)."""
        was = getattr(self.model, "training", True)
        self.model.eval()
        try:
            return np.concatenate([self.model(x[i:i + self.eval_batch_size])
                                   for i in range(0, len(x), self.eval_batch_size)])
        finally:
            self.model.train(was)

    def evaluate(self, x, y):
        """Accuracy of the model on ``x (N, C, H, W)``, ``y (N,)`` in eval mode."""
        return accuracy(self.predict(x), y)

    # -- training ----------------------------------------------------------------------------
    def train_epoch(self, x, y, desc="train"):
        """One pass over ``(x, y)``; returns ``(mean loss, accuracy, images/s)``."""
        from tqdm.auto import tqdm

        batches = BatchIterator(x, y, self.batch_size, shuffle=True, crop=self.crop,
                                flip=self.flip, seed=self.rng)
        self.model.train()
        total_loss, correct, seen = 0.0, 0, 0
        t0 = time.perf_counter()
        with tqdm(total=len(batches), desc=desc, unit="batch", disable=not self.progress,
                  leave=False, dynamic_ncols=True) as bar:
            for xb, yb in batches:
                logits = self.model(xb)
                loss, dlogits = self.loss(logits, yb)
                self.model.backward(dlogits)
                self.optimizer.step()
                total_loss += float(loss) * len(yb)
                correct += int(np.sum(np.argmax(logits, axis=1) == yb))
                seen += len(yb)
                bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}",
                                img_s=f"{seen / (time.perf_counter() - t0):.0f}", refresh=False)
                bar.update(1)
        return total_loss / seen, correct / seen, seen / (time.perf_counter() - t0)

    def fit(self, data, epochs, checkpoint=None, metrics=None, on_epoch_end=None):
        """Train until :attr:`epoch` reaches ``epochs`` (a resumed trainer continues where its
        checkpoint stopped). After every epoch: the scheduler steps, the history grows, the
        best parameters are updated, ``checkpoint`` (a path) and ``metrics`` (a path for
        ``{"epochs": history}`` JSON) are written atomically, and ``on_epoch_end(trainer)`` is
        called. Returns :attr:`history`."""
        for split in ("x_train", "y_train"):
            if split not in data:
                raise ValueError(f"data must hold {split!r}, got keys {sorted(data)}")
        has_val = data.get("x_val") is not None and len(data["x_val"]) > 0
        has_test = data.get("x_test") is not None and len(data["x_test"]) > 0
        while self.epoch < epochs:
            t0 = time.perf_counter()
            loss, train_acc, ips = self.train_epoch(
                data["x_train"], data["y_train"], desc=f"epoch {self.epoch + 1}/{epochs}")
            if self.scheduler is not None:
                self.scheduler.step()
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
            if checkpoint is not None:
                self.save(checkpoint)
            if metrics is not None:
                write_json(metrics, {"epochs": self.history})
            if on_epoch_end is not None:
                on_epoch_end(self)
        return self.history

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
    def state(self):
        """``(meta, arrays)``: everything a checkpoint holds, as a JSON-able dict and a dict of
        named arrays."""
        arrays = {}
        buffers = getattr(self.model, "buffers", {}) or {}
        for k, v in self.model.params.items():
            arrays[f"param/{k}"] = v
        for k, v in buffers.items():
            arrays[f"buffer/{k}"] = v
        best = None
        if self.best_params is not None:
            for kind in ("params", "buffers"):
                for k, v in self.best_params[kind].items():
                    arrays[f"best_{kind}/{k}"] = v
            best = {"epoch": self.best_epoch, "score": self.best_score}
        meta = {
            "format": FORMAT, "version": VERSION,
            "signature": _signature(self.model),
            "optimizer_class": type(self.optimizer).__name__,
            "scheduler_class": None if self.scheduler is None else type(self.scheduler).__name__,
            "epoch": self.epoch, "history": self.history, "best": best,
            "optimizer": _encode(self.optimizer.state_dict(), arrays, "optimizer"),
            "scheduler": None if self.scheduler is None else
            _encode(self.scheduler.state_dict(), arrays, "scheduler"),
            "rng": {"data": self.rng.bit_generator.state,
                    "model": {k: g.bit_generator.state for k, g in _rngs(self.model).items()}},
            "counters": {k: int(v.num_batches_tracked) for k, v in _counters(self.model).items()},
        }
        return meta, arrays

    def save(self, path):
        """Write the checkpoint ``.npz`` to ``path`` atomically."""
        meta, arrays = self.state()
        meta_bytes = json.dumps(meta, sort_keys=True).encode()
        out = dict(arrays)
        out["__meta__"] = np.frombuffer(meta_bytes, np.uint8)
        out["__checksum__"] = np.frombuffer(_checksum(meta_bytes, arrays).encode(), np.uint8)
        buf = io.BytesIO()
        np.savez(buf, **out)
        atomic_write(path, buf.getvalue())

    @staticmethod
    def read(path):
        """Read and verify a checkpoint file: ``(meta, arrays)``; ``CheckpointError`` if it is
        unreadable, truncated, altered (checksum) or of another format/version."""
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except FileNotFoundError:
            raise
        except Exception as e:  # zip/CRC/format errors of a truncated or damaged file
            raise CheckpointError(f"checkpoint {path} is unreadable (corrupted or truncated?): "
                                  f"{type(e).__name__}: {e}") from e
        if "__meta__" not in arrays or "__checksum__" not in arrays:
            raise CheckpointError(f"{path} is not an nbconv checkpoint (no __meta__/__checksum__)")
        meta_bytes = arrays.pop("__meta__").tobytes()
        stored = arrays.pop("__checksum__").tobytes().decode("ascii", "replace")
        if _checksum(meta_bytes, arrays) != stored:
            raise CheckpointError(f"checkpoint {path} is corrupted: checksum mismatch")
        meta = json.loads(meta_bytes)
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise CheckpointError(f"{path}: format {meta.get('format')!r} version "
                                  f"{meta.get('version')!r}, expected {FORMAT!r} {VERSION}")
        return meta, arrays

    def load(self, path):
        """Restore model, optimizer, scheduler, epoch, history, best parameters and RNG states
        from ``path``. Everything is checked first; on any failure nothing is changed and
        :class:`CheckpointError` is raised."""
        meta, arrays = self.read(path)
        mine = _signature(self.model)
        if meta["signature"] != mine:
            raise CheckpointError(f"checkpoint {path} is for another model: "
                                  f"{_diff(meta['signature'], mine)}")
        if meta["optimizer_class"] != type(self.optimizer).__name__:
            raise CheckpointError(f"checkpoint {path} holds {meta['optimizer_class']} state, "
                                  f"the optimizer is {type(self.optimizer).__name__}")
        sched = None if self.scheduler is None else type(self.scheduler).__name__
        if meta["scheduler_class"] != sched:
            raise CheckpointError(f"checkpoint {path} holds scheduler {meta['scheduler_class']}, "
                                  f"the trainer has {sched}")
        model_rngs = _rngs(self.model)
        if sorted(meta["rng"]["model"]) != sorted(model_rngs):
            raise CheckpointError(f"checkpoint {path} has random generators "
                                  f"{sorted(meta['rng']['model'])}, the model {sorted(model_rngs)}")
        counters = _counters(self.model)
        if sorted(meta["counters"]) != sorted(counters):
            raise CheckpointError(f"checkpoint {path} has batch counters for layers "
                                  f"{sorted(meta['counters'])}, the model {sorted(counters)}")
        opt_state = _decode(meta["optimizer"], arrays)
        sched_state = None if meta["scheduler"] is None else _decode(meta["scheduler"], arrays)

        # everything checked: apply, rolling back if the optimizer/scheduler refuse their state
        backup = (self._copy_state(), copy.deepcopy(self.optimizer.state_dict()),
                  None if self.scheduler is None else copy.deepcopy(self.scheduler.state_dict()))
        try:
            self.optimizer.load_state_dict(opt_state)
            if self.scheduler is not None:
                self.scheduler.load_state_dict(sched_state)
        except Exception as e:
            self.optimizer.load_state_dict(backup[1])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(backup[2])
            raise CheckpointError(f"checkpoint {path}: optimizer/scheduler state rejected: {e}") from e
        for k in self.model.params:
            self.model.params[k][...] = arrays[f"param/{k}"]
        buffers = getattr(self.model, "buffers", {}) or {}
        for k in buffers:
            buffers[k][...] = arrays[f"buffer/{k}"]
        for k, layer in counters.items():
            layer.num_batches_tracked = meta["counters"][k]
        for k, g in model_rngs.items():
            g.bit_generator.state = meta["rng"]["model"][k]
        self.rng.bit_generator.state = meta["rng"]["data"]
        self.epoch, self.history = meta["epoch"], meta["history"]
        if meta["best"] is None:
            self.best_params, self.best_epoch, self.best_score = None, None, -np.inf
        else:
            self.best_params = {kind: {k: arrays[f"best_{kind}/{k}"].copy() for k in mine[kind]}
                                for kind in ("params", "buffers")}
            self.best_epoch, self.best_score = meta["best"]["epoch"], meta["best"]["score"]
        return self


def _diff(theirs, mine):
    out = []
    for kind in ("params", "buffers"):
        a, b = theirs.get(kind, {}), mine.get(kind, {})
        if set(a) - set(b):
            out.append(f"{kind} only in the checkpoint: {sorted(set(a) - set(b))}")
        if set(b) - set(a):
            out.append(f"{kind} only in the model: {sorted(set(b) - set(a))}")
        for k in sorted(set(a) & set(b)):
            if a[k] != b[k]:
                out.append(f"{kind} {k!r}: checkpoint shape/dtype {a[k]}, model {b[k]}")
    return "; ".join(out[:6]) or "differs"
