"""Classify PNG images (or CIFAR-10 test images) with a trained model and print the top-5
classes with their probabilities (``--help`` lists the options). The command lives in
:mod:`nbconv.predict`, also installed as ``nbconv-predict``."""
from nbconv.predict import main

if __name__ == "__main__":
    raise SystemExit(main())
