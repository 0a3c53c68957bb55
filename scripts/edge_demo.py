"""Edge detection with hand-set kernels: Sobel x/y and a Laplacian applied by ``nbconv.Conv2d``
to real CIFAR-10 images from the sample bundled with nbconv, drawn as one labelled PNG grid.

    python scripts/edge_demo.py                      # -> docs/edge_demo.png
    python scripts/edge_demo.py --out /tmp/e.png --images 6 --seed 1

One ``Conv2d(1, 3, 3, bias=False)`` holds the three filters (its ``weight`` set by hand,
``(3, 1, 3, 3)``) and runs on the grayscale images ``(N, 1, 34, 34)``, edge-replicated by one
pixel (zero padding would draw a false edge around every image); the columns are the
input, the x gradient (Sobel x: responds to vertical edges), the y gradient (Sobel y:
horizontal edges), the gradient magnitude ``sqrt(gx^2 + gy^2)`` and the Laplacian (second
derivative: both sides of every edge). Signed responses use a blue-white-red map centred on 0.
Needs matplotlib (``pip install -e ".[plot]"``).
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import nbconv  # noqa: E402
from nbconv import data as D  # noqa: E402
from nbconv import viz  # noqa: E402

SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)
SOBEL_Y = SOBEL_X.T.copy()
LAPLACIAN = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float32)


def edge_layer():
    """``Conv2d(1, 3, 3, bias=False)`` with the Sobel x, Sobel y and Laplacian kernels as its
    three filters."""
    conv = nbconv.Conv2d(1, 3, 3, bias=False)
    conv.params["weight"][...] = np.stack([SOBEL_X, SOBEL_Y, LAPLACIAN])[:, None]
    return conv


def grayscale(x_uint8):
    """``(N, 3, H, W)`` uint8 -> ``(N, 1, H, W)`` float32 in [0, 1] (ITU-R 601 luma)."""
    rgb = x_uint8.astype(np.float32) / 255
    luma = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
    return luma[:, None].astype(np.float32)


def pick_images(n, seed):
    """``n`` test images of different classes from the bundled sample, and their class names."""
    d = D.load_cifar10()
    rng = np.random.default_rng(seed)
    classes = rng.permutation(len(d["classes"]))[:n]
    idx = [int(rng.choice(np.flatnonzero(d["y_test"] == c))) for c in classes]
    return d["x_test"][idx], [d["classes"][c] for c in classes]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join("docs", "edge_demo.png"),
                   help="PNG to write (default docs/edge_demo.png)")
    p.add_argument("--images", type=int, default=4, help="rows: images to show (default 4)")
    p.add_argument("--seed", type=int, default=0, help="which images (default 0)")
    args = p.parse_args(argv)
    if not viz.have_matplotlib():
        raise SystemExit(f"edge_demo needs matplotlib: {viz.INSTALL_HINT}")
    images, names = pick_images(args.images, args.seed)
    gray = grayscale(images)
    conv = edge_layer()
    padded = np.pad(gray, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    y = conv(padded)                              # (N, 3, 32, 32): gx, gy, laplacian
    gx, gy, lap = y[:, 0], y[:, 1], y[:, 2]
    mag = np.sqrt(gx ** 2 + gy ** 2)

    plt = viz._pyplot()
    cols = ["input", "gradient x (Sobel x)", "gradient y (Sobel y)", "magnitude",
            "Laplacian"]
    n = len(images)
    fig, axes = plt.subplots(n, 5, figsize=(10, 2.1 * n + 0.6), squeeze=False)
    g = max(np.abs(gx).max(), np.abs(gy).max())
    lp = np.abs(lap).max()
    for r in range(n):
        panels = [(images[r].transpose(1, 2, 0), {}),
                  (gx[r], dict(cmap="bwr", vmin=-g, vmax=g)),
                  (gy[r], dict(cmap="bwr", vmin=-g, vmax=g)),
                  (mag[r], dict(cmap="gray", vmin=0, vmax=mag.max())),
                  (lap[r], dict(cmap="bwr", vmin=-lp, vmax=lp))]
        for c, (img, kw) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img, interpolation="nearest", **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=9)
        axes[r, 0].set_ylabel(names[r], fontsize=9)
    fig.suptitle("Hand-set 3x3 kernels in nbconv.Conv2d on CIFAR-10 test images "
                 "(blue < 0 < red)", fontsize=10)
    fig.tight_layout()
    viz._save(fig, args.out)
    print(f"wrote {args.out}")
    return y


if __name__ == "__main__":
    main()
