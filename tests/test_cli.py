"""scripts/train_cifar.py as a user meets it (issue 11): resume that cannot drift, run folders
that are never overwritten, Ctrl-C, the result line, --help; and Trainer stop requests."""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "train_cifar.py")


def _script():
    spec = importlib.util.spec_from_file_location("train_cifar", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from nbconv import data as D
    raw = D.load_cifar10()
    d = tmp_path_factory.mktemp("data") / "cifar-10-batches-py"
    d.mkdir()
    D.save_batch(d / "data_batch_1", raw["x_train"][:80], raw["y_train"][:80], "b1")
    D.save_batch(d / "test_batch", raw["x_test"][:30], raw["y_test"][:30], "t")
    return d


def common(d, out):
    return ["--data-dir", str(d), "--val-size", "16", "--batch-size", "16", "--hidden", "8",
            "--out", str(out), "--no-progress"]


def test_resume_takes_saved_arguments_and_refuses_contradictions(tiny_dir, tmp_path, capsys):
    script = _script()
    out = tmp_path / "run"
    script.main(common(tiny_dir, out) + ["--epochs", "1", "--lr", "0.002"])
    text = capsys.readouterr().out
    assert "kernels" in text and text.count("test accuracy") == 1
    # everything from the checkpoint: --out DIR --resume alone
    script.main(["--out", str(out), "--resume", "--epochs", "2"])
    text = capsys.readouterr().out
    assert "resume: --epochs 2 (the run was started with 1)" in text
    assert "lr 0.002" in text and "from " + str(tiny_dir) in text
    # a contradicting option is refused, naming both values
    with pytest.raises(SystemExit, match=r"--data-dir /elsewhere \(the run used .*cifar-10"):
        script.main(["--out", str(out), "--resume", "--epochs", "3", "--data-dir", "/elsewhere"])
    with pytest.raises(SystemExit, match=r"--lr 0.1 \(the run used 0.002\)"):
        script.main(["--out", str(out), "--resume", "--epochs", "3", "--lr", "0.1"])
    with pytest.raises(SystemExit, match="nothing to do"):
        script.main(["--out", str(out), "--resume"])


def test_cosine_run_cannot_be_extended_silently(tiny_dir, tmp_path):
    script = _script()
    out = tmp_path / "cos"
    script.main(common(tiny_dir, out) + ["--epochs", "1", "--schedule", "cosine"])
    with pytest.raises(SystemExit, match="cosine learning-rate schedule was planned for 1"):
        script.main(["--out", str(out), "--resume", "--epochs", "2"])


def test_runs_never_overwrite_each_other(tiny_dir, tmp_path, monkeypatch):
    script = _script()
    monkeypatch.chdir(tmp_path)
    a = script.new_out_dir(script.parse_args([]))
    b = script.new_out_dir(script.parse_args([]))
    assert a != b and a.startswith("runs" + os.sep) and os.path.isdir(b)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "metrics.json").write_text("{}")
    with pytest.raises(SystemExit, match="exists and is not empty"):
        script.main(common(tiny_dir, tmp_path / "full") + ["--epochs", "1"])
    assert (tmp_path / "full" / "metrics.json").read_text() == "{}"
    args = script.parse_args(["--out", "full", "--force"])
    assert script.new_out_dir(args) == "full"


def test_help_shows_every_default():
    text = _script().build_parser().format_help()
    for s in ("(default: three-layer 10, deep 20)", "(default: three-layer 50, deep 64)",
              "(default: three-layer adam, deep adamw)", "(default: 0.9)", "(default: 0.1)",
              "(default: float32)", "(default: a new runs/<YYYYmmdd-"):
        assert s in " ".join(text.split()), s


def test_sigint_checkpoints_and_resume_continues(tiny_dir, tmp_path):
    out = tmp_path / "int"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, SCRIPT] + common(tiny_dir, out) + ["--epochs", "30",
                                                                "--batch-size", "4"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=env, cwd=ROOT)
    lines = []
    for line in p.stdout:
        lines.append(line)
        if line.startswith("epoch 1/30"):
            break
    p.send_signal(signal.SIGINT)
    rest, _ = p.communicate(timeout=120)
    text = "".join(lines) + rest
    assert p.returncode == 130, text
    assert "Traceback" not in text
    last = text.strip().splitlines()[-1]
    assert last.startswith("interrupted: checkpoint") and "--resume" in last, last
    cont = last.split("continue with: ")[1].split()
    r = subprocess.run([sys.executable] + cont[1:] + ["--epochs", "3"], capture_output=True,
                       text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resumed from" in r.stdout and "test accuracy" in r.stdout


def test_second_sigint_stops_at_once(tiny_dir, tmp_path):
    out = tmp_path / "int2"
    cmd = [sys.executable, SCRIPT] + common(tiny_dir, out) + ["--epochs", "30"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    for line in p.stdout:
        if line.startswith("epoch 1/30"):
            break
    p.send_signal(signal.SIGINT)
    time.sleep(0.01)
    p.send_signal(signal.SIGINT)
    rest, _ = p.communicate(timeout=120)
    assert p.returncode == 130, rest
    assert "Traceback" not in rest and "continue with" in rest
    from nbconv.checkpoint import read
    if (out / "checkpoint.npz").exists():  # whole if there: no half-written file
        read(out / "checkpoint.npz")


def test_stop_request_mid_epoch_resumes_bitwise(tmp_path):
    from test_train import tiny_data, tiny_trainer
    from nbconv.train import TrainingInterrupted
    data = tiny_data()
    straight = tiny_trainer()
    straight.fit(data, 3)

    tr = tiny_trainer(warmup=False)  # the warm-up would call the loss too
    calls = []
    loss = tr.loss

    def counting(logits, labels):
        calls.append(1)
        if len(calls) == 7:  # in epoch 2 (5 batches an epoch)
            tr.request_stop()
        return loss(logits, labels)
    tr.loss = counting
    path = tmp_path / "ck.npz"
    with pytest.raises(TrainingInterrupted) as e:
        tr.fit(data, 3, checkpoint=path)
    assert (e.value.epoch, e.value.batch) == (1, 2)
    again = tiny_trainer(seed=5)
    again.load(path)
    assert again.partial["batch"] == 2
    again.fit(data, 3)
    for k in straight.model.params:
        np.testing.assert_array_equal(again.model.params[k], straight.model.params[k])
    assert [h["loss"] for h in again.history] == [h["loss"] for h in straight.history]


def test_second_sigint_wrapped_in_another_exception_stops_at_once(tmp_path, capsys):
    """A second Ctrl-C that lands while a C extension is being imported (matplotlib's, for the
    pictures) surfaces as an ImportError whose cause is the KeyboardInterrupt: it must end the
    run like a plain second Ctrl-C (exit 130, no traceback), and other errors must not."""
    mod = _script()

    class Args:
        out, epochs = str(tmp_path), 1

    class Wrapped:
        dp = None

        def __init__(self, exc):
            self.exc = exc

        def stop_on_sigint(self, message):
            import contextlib
            return contextlib.nullcontext()

        def fit(self, *a, **k):
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt as e:
                raise self.exc from e

    old = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as stop:
            mod.train(Wrapped(ImportError("initialization failed")), {}, Args, "ck", None)
        assert stop.value.code == 130 and "stopped at once" in capsys.readouterr().out
    finally:
        signal.signal(signal.SIGINT, old)
    with pytest.raises(ValueError):   # an error with no interrupt behind it is not swallowed
        mod.train(type("Plain", (Wrapped,), {"fit": lambda self, *a, **k: (_ for _ in ()).throw(
            ValueError("real"))})(None), {}, Args, "ck", None)
