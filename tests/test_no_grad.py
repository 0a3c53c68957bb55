"""nbconv.no_grad(): forwards that keep nothing for backward, for every layer family and a whole
ResNet (no saved array left anywhere in the module tree, the same results, the memory a forward
holds), with torch's thread-local, nesting and decorator semantics; eval() alone still saves."""
import copy
import gc
import threading
import tracemalloc

import numpy as np
import pytest

import nbconv
from nbconv import layers as L
from nbconv import models
from nbconv.layers.grad_mode import NOT_SAVED


def saved_arrays(model):
    """``[(module name, attribute path)]`` of every ndarray a module of ``model`` holds outside
    its parameters, gradients and buffers (what a forward kept for backward)."""
    found = []

    def walk(v, where, depth=0):
        if isinstance(v, np.ndarray):
            found.append(where)
        elif isinstance(v, (tuple, list)) and depth < 4:
            for i, e in enumerate(v):
                walk(e, f"{where}[{i}]", depth + 1)
        elif isinstance(v, dict) and depth < 4:
            for k, e in v.items():
                walk(e, f"{where}[{k!r}]", depth + 1)

    for name, m in model.named_modules():
        for k, v in vars(m).items():
            if k not in ("_params", "_grads", "_buffers", "_modules"):
                walk(v, f"{name or '<model>'}.{k}")
    return found


def _x(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# every layer family: (layer factory, input shape)
FAMILIES = {
    "Conv2d": (lambda: L.Conv2d(3, 4, 3, padding=1, seed=0), (2, 3, 6, 6)),
    "Conv2d-strided": (lambda: L.Conv2d(3, 4, 3, stride=2, padding=1, bias=False, seed=0),
                       (2, 3, 6, 6)),
    "ConvTranspose2d": (lambda: L.ConvTranspose2d(3, 4, 3, stride=2, seed=0), (2, 3, 4, 4)),
    "MaxPool2d": (lambda: L.MaxPool2d(2), (2, 3, 6, 6)),
    "AvgPool2d": (lambda: L.AvgPool2d(3, 1, 1), (2, 3, 6, 6)),
    "GlobalAvgPool2d": (lambda: L.GlobalAvgPool2d(), (2, 3, 6, 6)),
    "AdaptiveAvgPool2d": (lambda: L.AdaptiveAvgPool2d(2), (2, 3, 5, 5)),
    "AdaptiveMaxPool2d": (lambda: L.AdaptiveMaxPool2d(2, return_indices=False), (2, 3, 5, 5)),
    "BatchNorm2d": (lambda: L.BatchNorm2d(3), (2, 3, 4, 4)),
    "SyncBatchNorm2d": (lambda: L.SyncBatchNorm2d(3), (2, 3, 4, 4)),
    "GroupNorm": (lambda: L.GroupNorm(1, 3), (2, 3, 4, 4)),
    "ReLU": (lambda: L.ReLU(), (2, 3, 4, 4)),
    "LeakyReLU": (lambda: L.LeakyReLU(0.1), (2, 3, 4, 4)),
    "GELU": (lambda: L.GELU(), (2, 5)),
    "SiLU": (lambda: L.SiLU(), (2, 5)),
    "Sigmoid": (lambda: L.Sigmoid(), (2, 5)),
    "Tanh": (lambda: L.Tanh(), (2, 5)),
    "Identity": (lambda: L.Identity(), (2, 5)),
    "Flatten": (lambda: L.Flatten(), (2, 3, 2, 2)),
    "Linear": (lambda: L.Linear(5, 4, seed=0), (2, 5)),
    "Dropout": (lambda: L.Dropout(0.5, seed=0), (2, 5)),
    "Sequential": (lambda: L.Sequential(L.Conv2d(3, 4, 3, padding=1, seed=0), L.ReLU(),
                                        L.Flatten(), L.Linear(4 * 16, 3, seed=1)),
                   (2, 3, 4, 4)),
    "BasicBlock": (lambda: L.BasicBlock(4, 4, seed=0), (2, 4, 4, 4)),
    "BasicBlock-A": (lambda: L.BasicBlock(4, 8, 2, L.PadShortcut(4, 8), seed=0), (2, 4, 4, 4)),
    "Bottleneck": (lambda: L.Bottleneck(8, 2, seed=0), (2, 8, 4, 4)),
    "PadShortcut": (lambda: L.PadShortcut(4, 8), (2, 4, 4, 4)),
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("training", [True, False])
def test_every_layer_family_keeps_nothing_and_computes_the_same(name, training):
    make, shape = FAMILIES[name]
    x = _x(shape)
    with_grad, without = make().train(training), make().train(training)
    dy = _x(with_grad(x).shape, seed=1)
    with_grad.backward(dy)
    y = with_grad(x)                 # the second forward (dropout's mask, running statistics)
    without(x)
    without.backward(dy)             # an earlier forward with gradients: its values are dropped
    ran = [m for m in without.modules() if m._saved is not None]   # (a block's relu never runs)
    assert without in ran and all(m._saved is not NOT_SAVED for m in ran)
    with nbconv.no_grad():
        y2 = without(x)
    np.testing.assert_array_equal(y2, y)   # bitwise: the same kernels ran
    assert saved_arrays(without) == []
    assert all(m._saved is NOT_SAVED for m in ran)
    with pytest.raises(RuntimeError, match=r"no_grad\(\) and kept nothing for backward"):
        without.backward(dy)
    for k, v in with_grad.buffers.items():   # running statistics updated alike (train mode)
        np.testing.assert_array_equal(without.buffers[k], v)
    without(x)                        # gradients enabled again: backward works
    without.backward(dy)


def test_loss_layer_under_no_grad():
    crit = L.CrossEntropyLoss()
    logits, labels = _x((4, 3)), np.array([0, 1, 2, 1])
    loss = crit(logits, labels)
    with nbconv.no_grad():
        assert crit(logits, labels) == loss
    assert crit._saved is NOT_SAVED
    with pytest.raises(RuntimeError, match="CrossEntropyLoss.backward: the last forward ran "
                                           "under nbconv.no_grad"):
        crit.backward()


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_resnet_forward_under_no_grad_keeps_no_array_anywhere(shortcut):
    model = models.resnet20(shortcut=shortcut, seed=0)
    twin = copy.deepcopy(model)
    x = _x((2, 3, 16, 16))
    for training in (True, False):
        model.train(training), twin.train(training)
        y = model(x)
        model.backward(_x(y.shape, seed=2))
        assert len(saved_arrays(model)) > 40   # conv layouts, BatchNorm inputs, ReLU outputs
        with nbconv.no_grad():
            y2 = twin(x)
        np.testing.assert_array_equal(y2, y)
        assert saved_arrays(twin) == [], saved_arrays(twin)[:5]
        for k, v in model.buffers.items():
            np.testing.assert_array_equal(twin.buffers[k], v)
        with pytest.raises(RuntimeError, match="ResNet.backward: the last forward ran under "
                                               "nbconv.no_grad"):
            twin.backward(np.ones_like(y))


def test_resnet_gradients_after_a_no_grad_forward_are_unchanged():
    model = models.resnet20(seed=0)
    twin = copy.deepcopy(model)
    x, labels = _x((4, 3, 16, 16)), np.arange(4)
    crit = L.CrossEntropyLoss()
    crit(model(x), labels)
    model.backward(crit.backward())
    twin.eval()
    with nbconv.no_grad():
        twin(x)
    twin.train()
    # the running statistics differ by one more eval pass: none (eval mode does not update)
    crit(twin(x), labels)
    twin.backward(crit.backward())
    for k, g in model.grads.items():
        np.testing.assert_array_equal(twin.grads[k], g, err_msg=k)


def _held_bytes(fn):
    """``(bytes still allocated after fn() returned and its result was dropped, peak bytes
    during fn())`` of the NumPy allocations (tracemalloc sees NumPy's data buffers)."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        y = fn()
        out = y.nbytes
        del y
        gc.collect()
        current, peak = tracemalloc.get_traced_memory()
        return current - base, peak - base - out
    finally:
        tracemalloc.stop()


def test_a_forward_under_no_grad_holds_only_live_activations():
    model = models.resnet20(seed=0).eval()
    x = _x((8, 3, 32, 32))
    model(x)   # kernels compiled or loaded, scratch settled
    with nbconv.no_grad():
        model(x)   # what the forward with gradients kept is dropped
    kept, peak_grad = _held_bytes(lambda: model(x))
    act = 8 * 16 * 32 * 32 * 4   # one activation of the first stage, 512 KiB
    assert kept > 20 * act, kept   # every layer keeps its input or output for backward
    with nbconv.no_grad():
        model(x)
        kept0, peak0 = _held_bytes(lambda: model(x))
    assert kept0 < 64 * 1024, f"no_grad forward left {kept0} bytes allocated"
    # while it runs: the input and output of the current layer, a residual block's input and
    # the conv's working layouts (measured 5.7 activations; with gradients 31): a few
    # activations, not one per layer
    assert peak0 < 10 * act, (peak0, peak_grad)
    assert peak0 < peak_grad / 3, (peak0, peak_grad)


def test_eval_alone_still_saves_as_torch():
    model = models.resnet20(seed=0).eval()
    model.input_grad = True
    x = _x((2, 3, 8, 8))
    y = model(x)
    assert saved_arrays(model)
    assert model.backward(np.ones_like(y)).shape == x.shape


def test_trainer_predict_keeps_nothing():
    model = L.Sequential(L.Conv2d(3, 4, 3, padding=1, seed=0), L.BatchNorm2d(4), L.ReLU(),
                         L.GlobalAvgPool2d(), L.Linear(4, 3, seed=1))
    tr = nbconv.Trainer(model, nbconv.optim.SGD(model.parameters(), lr=0.1), progress=False,
                        verbose=False, warmup=False)
    x = _x((5, 3, 4, 4))
    y = tr.predict(x)
    assert saved_arrays(model) == [] and model.training
    np.testing.assert_array_equal(y, model.eval()(x))


def test_modes_are_thread_local_nest_and_decorate():
    assert nbconv.is_grad_enabled()
    seen = {}

    def other():
        seen["thread"] = nbconv.is_grad_enabled()

    with nbconv.no_grad():
        assert not nbconv.is_grad_enabled()
        t = threading.Thread(target=other)
        t.start()
        t.join()
        with nbconv.enable_grad():
            assert nbconv.is_grad_enabled()
        assert not nbconv.is_grad_enabled()
        with nbconv.inference_mode(False):
            assert nbconv.is_grad_enabled()
    assert nbconv.is_grad_enabled() and seen["thread"] is True   # as torch: per thread
    with nbconv.inference_mode():
        assert not nbconv.is_grad_enabled()

    @nbconv.no_grad()
    def f():
        return nbconv.is_grad_enabled()

    assert f() is False and nbconv.is_grad_enabled() and f.__name__ == "f"
    try:
        with nbconv.no_grad():
            raise KeyError("x")
    except KeyError:
        pass
    assert nbconv.is_grad_enabled()   # restored after an exception
    nbconv.set_grad_enabled(False)    # a call sets the mode ...
    assert not nbconv.is_grad_enabled()
    nbconv.set_grad_enabled(True)
    with nbconv.set_grad_enabled(False):   # ... a with block restores it
        assert not nbconv.is_grad_enabled()
    assert nbconv.is_grad_enabled()

    @nbconv.set_grad_enabled(False)
    def g():
        return nbconv.is_grad_enabled()

    assert nbconv.is_grad_enabled() and g() is False and nbconv.is_grad_enabled()
    with pytest.raises(TypeError, match="bool"):
        nbconv.set_grad_enabled("no")
    with pytest.raises(TypeError, match="decorates a callable"):
        nbconv.no_grad()(3)


def test_a_users_layer_gets_no_grad_through_save_for_backward():
    class Double(nbconv.Layer):
        def forward(self, x):
            self.save_for_backward(x.shape, x.dtype)
            return 2 * x

        def backward(self, dy):
            dy, dtype = self.saved_for_backward(dy)
            return (2 * dy).astype(dtype)

    layer = Double()
    x = _x((2, 3))
    layer(x)
    np.testing.assert_array_equal(layer.backward(np.ones((2, 3), np.float32)), 2)
    with pytest.raises(ValueError, match="shape"):
        layer.backward(np.ones((3, 3), np.float32))
    with nbconv.no_grad():
        layer(x)
    with pytest.raises(RuntimeError, match="Double.backward: the last forward ran under"):
        layer.backward(np.ones((2, 3), np.float32))
