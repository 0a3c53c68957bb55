"""Train a CIFAR-10 convnet with nbconv and print its test accuracy (``--help`` lists the
options). The command lives in :mod:`nbconv.cli`, also installed as ``nbconv-train``."""
from nbconv.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
