"""Pictures through matplotlib: training curves, first-layer filters, a speed chart.

matplotlib is optional (``pip install -e ".[plot]"`` or ``pip install matplotlib``): it is
imported, with the non-interactive ``Agg`` backend, only when a picture is made, so importing
nbconv and training never need it. Without it the ``save_*`` functions raise ``ImportError``
saying how to get it (:func:`have_matplotlib` tells beforehand).

- :func:`save_curves`: loss and accuracy (train / val / test) per epoch, labelled axes, a tick
  per epoch, legends and a title;
- :func:`save_filters`: the filters of a conv layer's weight as a grid of tiles
  (:func:`filter_grid`, plain NumPy) with a title;
- :func:`save_speed_chart`: grouped bars per benchmark shape (nbconv vs torch vs im2col, rates
  or ratios).

Every PNG is rendered into memory and written with :func:`nbconv._io.atomic_write`.
"""
import io

import numpy as np

from ._io import atomic_write

__all__ = ["filter_grid", "save_filters", "save_curves", "save_speed_chart", "have_matplotlib",
           "INSTALL_HINT"]

INSTALL_HINT = 'pip install matplotlib (or: python -m pip install -e ".[plot]")'

# one colour per series, the same in every picture
COLORS = {"loss": "#c81e1e", "train_accuracy": "#1f77b4", "val_accuracy": "#ff7f0e",
          "test_accuracy": "#2ca02c", "nbconv": "#1f77b4", "torch": "#ee4c2c",
          "im2col": "#7f7f7f"}


def have_matplotlib():
    """True when matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(f"nbconv.viz needs matplotlib to draw pictures: {INSTALL_HINT}") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path, dpi=110):
    plt = _pyplot()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    atomic_write(path, buf.getvalue())


# ---- filters ------------------------------------------------------------------------------------

def filter_grid(weight, scale=4, border=1, ncols=None):
    """Tile ``weight (F, C, KH, KW)`` into a uint8 RGB image (plain NumPy).

    C = 3 gives RGB filters, other C the mean over channels in gray. Each filter is mapped
    linearly from its own [min, max] to [0, 255], enlarged by ``scale`` (nearest neighbour) and
    placed on a ``rows x ncols`` grid (``ncols`` default ``ceil(sqrt(F))``) with ``border``
    white pixels around every tile. Size: ``rows * (KH*scale + border) + border`` by
    ``ncols * (KW*scale + border) + border``.
    """
    w = np.asarray(weight, np.float64)
    if w.ndim != 4:
        raise ValueError(f"weight must be (F, C, KH, KW), got shape {w.shape}")
    f, c, kh, kw = w.shape
    if c != 3:
        w = np.repeat(w.mean(axis=1, keepdims=True), 3, axis=1)
    lo = w.min(axis=(1, 2, 3), keepdims=True)
    span = w.max(axis=(1, 2, 3), keepdims=True) - lo
    tiles = (w - lo) / np.where(span > 0, span, 1.0)
    tiles = np.round(255 * tiles).astype(np.uint8).transpose(0, 2, 3, 1)  # (F, KH, KW, 3)
    tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    ncols = ncols or int(np.ceil(np.sqrt(f)))
    nrows = -(-f // ncols)
    th, tw = kh * scale, kw * scale
    img = np.full((nrows * (th + border) + border, ncols * (tw + border) + border, 3), 255,
                  np.uint8)
    for i in range(f):
        r, q = divmod(i, ncols)
        y0, x0 = border + r * (th + border), border + q * (tw + border)
        img[y0:y0 + th, x0:x0 + tw] = tiles[i]
    return img


def save_filters(path, weight, scale=4, border=1, title=None):
    """The filters of ``weight (F, C, KH, KW)`` (:func:`filter_grid`) as a PNG with a title
    (default ``"First-layer filters (F x C x KH x KW)"``)."""
    img = filter_grid(weight, scale, border)
    plt = _pyplot()
    f, c, kh, kw = np.shape(weight)
    inches = max(3.0, min(8.0, img.shape[1] / 60))
    fig, ax = plt.subplots(figsize=(inches, inches * img.shape[0] / img.shape[1] + 0.5))
    ax.imshow(img, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title or f"First-layer filters ({f} x {c} x {kh} x {kw}, each scaled to its "
                          f"own range)", fontsize=9)
    _save(fig, path)


# ---- training curves ----------------------------------------------------------------------------

def _series(history, key):
    pts = [(e["epoch"], e[key]) for e in history if e.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def save_curves(path, history, title=None):
    """Training curves of ``history`` (a list of per-epoch dicts with ``epoch``, ``loss`` and
    any of ``train_accuracy`` / ``val_accuracy`` / ``test_accuracy``; missing or None values
    are skipped, as :attr:`nbconv.train.Trainer.history` holds them) as a PNG: the training
    loss on the left, the accuracies on the right (0 to 1), epochs on the x axes with a tick
    per epoch (at most about 12 labelled), legends, and ``title`` (e.g. the model's name)
    above."""
    if not history:
        raise ValueError("history is empty: nothing to plot")
    plt = _pyplot()
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = [e["epoch"] for e in history]
    x, y = _series(history, "loss")
    ax_l.plot(x, y, "o-", color=COLORS["loss"], ms=3, label="train loss")
    ax_l.set_ylabel("cross-entropy loss")
    ax_l.set_ylim(bottom=0)
    ax_l.set_title("Loss", fontsize=10)
    for key, name in (("train_accuracy", "train"), ("val_accuracy", "val"),
                      ("test_accuracy", "test")):
        x, y = _series(history, key)
        if x:
            ax_a.plot(x, y, "o-", color=COLORS[key], ms=3, label=f"{name} accuracy")
    ax_a.set_ylabel("accuracy")
    ax_a.set_ylim(0, 1)
    ax_a.set_title("Accuracy", fontsize=10)
    step = max(1, -(-len(epochs) // 12))
    for ax in (ax_l, ax_a):
        ax.set_xlabel("epoch")
        ax.set_xticks(epochs[::step])
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8, loc="best")
    fig.suptitle(title or "Training curves")
    fig.tight_layout()
    _save(fig, path)


# ---- speed chart --------------------------------------------------------------------------------

def save_speed_chart(path, rows, title, ylabel="images / s", log=False, xlabel="benchmark row",
                     peak=None):
    """Grouped bars, one group per benchmark shape, one bar per implementation, as a PNG.

    ``rows``: a list of dicts, each ``{"label": "S1 forward", "nbconv": 1520.0, "torch":
    1310.0, "im2col": 640.0}``: the ``label`` names the group (x axis), every other key is a
    series (its bars share a colour, named in the legend; series in the order they first
    appear; a missing or ``None`` value leaves a gap). Values are whatever ``ylabel`` says
    (rates, or ratios to torch: then a dashed line marks 1). ``log=True`` uses a log y axis.
    ``xlabel`` names the x axis (what the labels are). ``peak``: ``(value, label)`` draws a
    dotted horizontal line there (the machine's FMA peak under a chart of GFLOP/s)."""
    if not rows:
        raise ValueError("rows is empty: nothing to plot")
    names = []
    for r in rows:
        if "label" not in r:
            raise ValueError(f"every row needs a 'label', got {r!r}")
        names += [k for k in r if k != "label" and k not in names]
    plt = _pyplot()
    n = len(rows)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * n * max(1, len(names)) / 2 + 2), 4))
    width = 0.8 / max(1, len(names))
    xs = np.arange(n)
    for i, name in enumerate(names):
        vals = [r.get(name) for r in rows]
        pos = [x for x, v in zip(xs, vals) if v is not None]
        ax.bar(np.array(pos) + (i - (len(names) - 1) / 2) * width,
               [v for v in vals if v is not None], width, label=name,
               color=COLORS.get(name))
    if "ratio" in ylabel.lower() or "x torch" in ylabel.lower():
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
    if peak is not None:
        ax.axhline(peak[0], color="r", lw=1.0, ls=":", label=peak[1])
    ax.set_xticks(xs)
    ax.set_xticklabels([str(r["label"]) for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)
