"""Compile nbconv's kernels ahead of time (or load them from Numba's on-disk cache).

Numba compiles a kernel the first time it is called with a new dtype and caches the machine code
in ``__pycache__`` beside the kernel modules; later processes load it in about a second. The
first training run therefore spends tens of seconds compiling before its first batch.
:func:`warm_up` does that work in the open, before training starts, and says how long it took
(:class:`nbconv.train.Trainer` calls it before its first epoch); the command line fills the
cache for both dtypes ahead of time (optional, e.g. as an install step)::

    python -m nbconv.warmup                     # three-layer, deep, resnet20; float32 and float64
    python -m nbconv.warmup --dtype float32 --model deep

(with every optimizer's update kernels, :func:`optimizer_kernels`).

Which kernels an op runs depends on its shapes, batch size included (e.g. products and copies
below ``PARALLEL_ELEMENTS``/``SMALL_COPY_BYTES`` run on one thread, the conv planner picks its
layout from the shapes), so the warm-up runs the model at the batch sizes training will use:
a training step (train mode, forward, backward and, given the run's optimizer, its ``step``:
the fused update kernels of :mod:`nbconv.kernels.optim`) at each training batch size and an
evaluation pass (eval mode) at each evaluation batch size. It runs on a deep copy of the model
and the optimizer: their parameters, buffers, state and random generators are not touched.
"""
import argparse
import copy
import os
import time

import numpy as np

from . import _config

__all__ = ["warm_up", "optimizer_kernels", "kernels_cached", "compilations", "main"]

# rough compile times on 2 cores (seconds), for the "about N s" message
ESTIMATE_SECONDS = {"three-layer": 30, "deep": 60}
# the models warmed by default: the deeper CIFAR ResNets run resnet20's kernels (the same
# layers on the same sizes, more of them), so warming them too would only take longer
DEFAULT_MODELS = ("three-layer", "deep", "resnet20")
# the training batch sizes warmed by default (--batch-size overrides): the command's defaults
BATCH_SIZES = {"three-layer": (50, 64), "deep": (50, 64)}
RESNET_BATCH_SIZES = (128,)


def compilations():
    """How many kernel compilations (cache misses) this process has done so far."""
    return sum(sum(d.stats.cache_misses.values()) for d in _config.DISPATCHERS)


def kernels_cached():
    """True if Numba's on-disk cache holds some nbconv kernel (an earlier run compiled; which
    kernels and dtypes a model needs is only known once it runs)."""
    for d in _config.DISPATCHERS:
        cache = getattr(d, "_cache", None)
        path = getattr(getattr(cache, "_cache_file", None), "_index_path", None)
        if path is not None and os.path.exists(path):
            return True
    return False


def cache_dirs():
    """The folders Numba's on-disk cache keeps nbconv's kernels in: ``__pycache__`` beside the
    kernel modules, a folder under ``NUMBA_CACHE_DIR`` when that is set, or Numba's per-user
    cache where the package's folder is read-only (a sorted list, usually of one)."""
    from . import functional  # noqa: F401  (imports every kernel module: registers them)
    found = {getattr(getattr(d, "_cache", None), "_cache_path", None) for d in _config.DISPATCHERS}
    found.discard(None)
    return sorted(found) or [os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels",
                                          "__pycache__")]


def _sizes(n, batch):
    """The batch sizes a pass over ``n`` items in batches of ``batch`` sees."""
    sizes = {min(batch, n)}
    if n > batch and n % batch:
        sizes.add(n % batch)
    return sorted(sizes)


def warm_up(model, input_shape, train_sizes=(), eval_sizes=(), loss=None, dtype=np.float32,
            optimizer=None):
    """Run ``model`` (a deep copy) once per batch size: a training step (``train()``, forward,
    ``backward`` and, if ``optimizer`` (the one training will use, on ``model``'s parameters)
    is given, its ``step()`` on a deep copy taken together with the model's) for each of
    ``train_sizes`` and an eval-mode forward for each of ``eval_sizes``, on zero-mean random
    inputs ``(n, *input_shape)`` of ``dtype``, so that every kernel those passes use is compiled
    or loaded from cache. Returns ``(seconds, compiled)``: the wall time and the number of
    kernels compiled (0: all came from cache)."""
    if loss is None:
        from .layers import SoftmaxCrossEntropy
        loss = SoftmaxCrossEntropy()
    m, opt = copy.deepcopy((model, optimizer))  # together: opt's arrays are m's
    g = np.random.default_rng(0)
    before, t0 = compilations(), time.perf_counter()
    for train, sizes in ((True, train_sizes), (False, eval_sizes)):
        m.train(train)
        for n in sizes:
            x = g.standard_normal((n, *input_shape)).astype(dtype)
            logits = m(x)
            if train:
                _, dlogits = loss(logits, np.arange(n) % logits.shape[1])
                m.backward(dlogits)
                if opt is not None:
                    opt.step()
    return time.perf_counter() - t0, compilations() - before


def optimizer_kernels(dtype):
    """One step of each optimizer family (SGD with momentum, Adam/AdamW, RMSprop) on a small
    parameter of ``dtype``: compiles (or loads) their fused update kernels, whichever one a
    run picks (the command line does this; :func:`warm_up` steps the run's own optimizer)."""
    from . import optim
    for cls, kw in ((optim.SGD, dict(momentum=0.9)), (optim.Adam, {}), (optim.RMSprop, {})):
        params = {"p": np.zeros(4, dtype)}
        cls(params, {"p": np.zeros(4, dtype)}, lr=0.1, **kw).step()


def announce(dtype, estimate=None):
    """The first half of the warm-up line (printed before :func:`warm_up`)."""
    name = np.dtype(dtype).name
    if kernels_cached():
        return f"loading kernels for {name} from Numba's cache (compiling any not cached yet)..."
    about = f", about {estimate} s" if estimate else ""
    return f"compiling kernels for {name} (first run only{about})..."


def report(seconds, compiled):
    """The second half of the warm-up line."""
    if compiled:
        return f" compiled in {seconds:.1f} s"
    return f" kernels loaded from cache in {seconds:.1f} s"


def main(argv=None):
    from . import models
    ap = argparse.ArgumentParser(
        prog="python -m nbconv.warmup",
        description="Compile nbconv's kernels into Numba's on-disk cache ahead of time.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--dtype", nargs="+", choices=("float32", "float64"),
                    default=["float32", "float64"], help="dtypes to compile for")
    ap.add_argument("--model", nargs="+", choices=list(models.MODELS),
                    default=list(DEFAULT_MODELS), help="models whose kernels to compile")
    ap.add_argument("--batch-size", type=int, nargs="+", default=argparse.SUPPRESS,
                    help="training batch sizes to warm up (default: 50 and 64, the ResNets "
                         "128)")
    ap.add_argument("--eval-batch-size", type=int, default=500,
                    help="evaluation batch size to warm up")
    args = ap.parse_args(argv)
    total = time.perf_counter()
    _config.compiling_announced()  # each line below says what compiles
    _warm_all(args)
    print(f"done in {time.perf_counter() - total:.1f} s; kernels cached in "
          f"{', '.join(cache_dirs())}")


def _warm_all(args):
    from . import models
    for dtype in args.dtype:
        for name in args.model:
            model = models.MODELS[name](seed=0, dtype=np.dtype(dtype))
            print(f"{name}: " + announce(dtype, ESTIMATE_SECONDS.get(name)), end="", flush=True)
            t0, before = time.perf_counter(), compilations()
            train = getattr(args, "batch_size", None) or BATCH_SIZES.get(name,
                                                                         RESNET_BATCH_SIZES)
            warm_up(model, (3, 32, 32), train, [args.eval_batch_size, 1],
                    dtype=np.dtype(dtype))
            optimizer_kernels(np.dtype(dtype))
            print(report(time.perf_counter() - t0, compilations() - before), flush=True)


if __name__ == "__main__":
    main()
