"""The README's "Coming from PyTorch" snippets run as written: weights in from torch, weights
out to torch (same logits both ways) and the summary."""
import os
import re

import numpy as np
import pytest
import torch

import nbconv

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _snippets():
    text = open(README, encoding="utf-8").read()
    section = text.split("## Coming from PyTorch", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def _torch_twin():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 32, 7, padding=3), torch.nn.ReLU(),
                               torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                               torch.nn.Linear(8192, 100), torch.nn.ReLU(),
                               torch.nn.Linear(100, 10))


def _logits(model, net, x):
    with torch.no_grad():
        return model.eval()(x), net.eval()(torch.from_numpy(x)).numpy()


def test_readme_snippets(tmp_path, monkeypatch, capsys):
    pytest.importorskip("safetensors")
    snippets = _snippets()
    assert len(snippets) == 3 and all(len(s.strip().splitlines()) == 3 for s in snippets)
    monkeypatch.chdir(tmp_path)
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    ns = {"torch": torch, "nbconv": nbconv, "np": np, "net": _torch_twin()}
    exec(snippets[0], ns)                            # torch -> nbconv
    ours, theirs = _logits(ns["model"], ns["net"], x)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    ns["model"] = nbconv.three_layer_convnet(seed=7)  # other weights, to send to torch
    exec(snippets[1], ns)                            # nbconv -> torch
    ours, theirs = _logits(ns["model"], ns["net"], x)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    exec(snippets[2], ns)                            # repr and summary
    out = capsys.readouterr().out
    assert repr(_torch_twin()) in out
    assert "825,046" in out and "5,637,096" in out


def test_readme_trained_model_snippet(tmp_path, monkeypatch, capsys):
    """The "Use the trained model" snippet, on a checkpoint written as the training script
    writes it (into runs/demo) by a trainer of the default three-layer net."""
    text = open(README, encoding="utf-8").read()
    section = text.split("## Train a convnet on CIFAR-10", 1)[1].split("\n## ", 1)[0]
    snippets = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(snippets) == 1 and 'nbconv.load("runs/demo/checkpoint.npz")' in snippets[0]
    monkeypatch.chdir(tmp_path)
    trained = nbconv.three_layer_convnet(seed=11)
    opt = nbconv.optim.Adam(trained.params, trained.grads, lr=1e-3)
    nbconv.Trainer(trained, opt, progress=False, verbose=False, warmup=False).save(
        "runs/demo/checkpoint.npz")
    ns = {"nbconv": nbconv}
    exec(snippets[0], ns)
    for k, v in trained.state_dict().items():
        np.testing.assert_array_equal(ns["model"].state_dict()[k], v)
    data = nbconv.data.prepare()
    want = trained.eval()(data["x_test"][:8]).argmax(axis=1)
    np.testing.assert_array_equal(ns["pred"], want)
    assert capsys.readouterr().out.strip() == str([data["classes"][i] for i in want])


def _use_snippets():
    text = open(README, encoding="utf-8").read()
    section = text.split("\n## Use\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_use_snippets_run_and_the_residual_block_is_the_librarys(capsys):
    snippets = _use_snippets()
    assert len(snippets) == 3
    exec(snippets[0], {})                           # the training loop
    ng = {}
    exec(snippets[1], ng)                           # a forward under no_grad
    assert "(8, 10)" in capsys.readouterr().out
    from nbconv.layers.grad_mode import NOT_SAVED
    assert all(m._saved is NOT_SAVED for m in ng["model"].modules()
               if m._saved is not None)             # nothing kept (a block's relu never runs)
    with pytest.raises(RuntimeError, match="no_grad"):
        ng["model"].backward(ng["logits"])
    np.testing.assert_array_equal(ng["model"](ng["x"]), ng["logits"])
    ns = {}
    exec(snippets[2], ns)                           # a user's residual block, one SGD step
    out = capsys.readouterr().out
    assert "['1.conv1.weight', '1.bn1.weight', '1.bn1.bias']" in out
    assert np.isfinite(ns["loss"])
    # the block computes what nbconv.BasicBlock computes, forward and backward, in float64
    ours = ns["ResidualBlock"](4).double()
    lib = nbconv.BasicBlock(4, 4, dtype=np.float64)
    lib.load_state_dict(ours.state_dict())
    x = np.random.default_rng(0).standard_normal((2, 4, 5, 5))
    dy = np.random.default_rng(1).standard_normal((2, 4, 5, 5))
    np.testing.assert_allclose(ours(x), lib(x), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(ours.backward(dy), lib.backward(dy), rtol=1e-12, atol=1e-13)
    for k, g in lib.grads.items():
        np.testing.assert_allclose(ours.grads[k], g, rtol=1e-12, atol=1e-13, err_msg=k)
    with nbconv.no_grad():                          # the block keeps its values as the library's
        ours(x)
    with pytest.raises(RuntimeError, match="ResidualBlock.backward: the last forward ran under"):
        ours.backward(dy)
