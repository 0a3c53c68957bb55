"""benchmarks/resnet_cifar.py end to end on a few images (about 15 s: two processes): both
libraries train the same ResNet-20 on the same batches, so their first-epoch losses agree to
float32 rounding, and the report names both accuracies, both epoch times and the ratio.
The real comparison (10 epochs on the shared subset) is run by hand: see the README."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_resnet_cifar_benchmark_smoke():
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "resnet_cifar.py"), "--epochs", "1",
           "--limit", "16", "--test-limit", "16", "--batch-size", "8", "--data-dir",
           os.path.join(ROOT, "nbconv", "_sample", "cifar-10-batches-py"), "--json"]
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.strip().splitlines()
    res = json.loads(lines[-1])
    nb, tc = res["nbconv"], res["torch"]
    assert nb["train_images"] == tc["train_images"] == 16
    # the same weights, batches, crops and flips: the same losses up to float32 rounding
    assert abs(nb["epochs"][0]["loss"] - tc["epochs"][0]["loss"]) < 1e-4, (nb, tc)
    assert abs(nb["epochs"][0]["train_accuracy"] - tc["epochs"][0]["train_accuracy"]) <= 1 / 16
    text = "\n".join(lines[:-1])
    for words in ("test accuracy", "epoch (median)", "nbconv", "PyTorch",
                  "speed nbconv / PyTorch", "each library in its own process"):
        assert words in text, words
