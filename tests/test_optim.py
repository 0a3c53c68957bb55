"""Optimizers and schedules against torch.optim: several steps on the same params and grads,
state save/restore, hyper-parameter validation."""
import copy
import math

import numpy as np
import pytest
import torch

from nbconv import optim

from helpers import DTYPES, assert_same_bits_wherever

SHAPES = {"0.weight": (4, 3), "0.bias": (4,), "2.weight": (2, 2, 3, 3)}
STEPS = 6

CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.5, 0.9), eps=1e-6, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.01)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.02, weight_decay=0.3, amsgrad=True)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, centered=True)),
    ("RMSprop", dict(lr=0.01, momentum=0.9, weight_decay=0.05)),
    ("RMSprop", dict(lr=0.005, momentum=0.5, centered=True, weight_decay=0.01, eps=1e-4)),
]
CASE_IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for n, kw in CASES]
# tolerance of params after several steps (float32: a few ulps of rounding per op compound)
PTOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}


def make_params(dtype, seed=0):
    g = np.random.default_rng(seed)
    params = {k: g.normal(size=s).astype(dtype) for k, s in SHAPES.items()}
    grads = {k: np.zeros_like(p) for k, p in params.items()}
    return params, grads


def grad_seq(dtype, steps=STEPS, seed=1):
    g = np.random.default_rng(seed)
    return [{k: g.normal(scale=0.5, size=s).astype(dtype) for k, s in SHAPES.items()}
            for _ in range(steps)]


def run_ours(opt, grads, seq):
    out = []
    for gs in seq:
        for k, v in gs.items():
            grads[k][...] = v
        opt.step()
        out.append({k: p.copy() for k, p in opt.params.items()})
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,kw", CASES, ids=CASE_IDS)
def test_matches_torch(name, kw, dtype):
    params, grads = make_params(dtype)
    tparams = {k: torch.tensor(p.copy(), requires_grad=True) for k, p in params.items()}
    ids = {k: id(p) for k, p in params.items()}
    opt = getattr(optim, name)(params, grads, **kw)
    topt = getattr(torch.optim, name)(list(tparams.values()), **kw)
    seq = grad_seq(dtype)
    for step, gs in enumerate(seq):
        for k, v in gs.items():
            grads[k][...] = v
            tparams[k].grad = torch.tensor(v.copy())
        before = {k: g.copy() for k, g in grads.items()}
        opt.step()
        topt.step()
        for k, p in params.items():
            assert p.dtype == np.dtype(dtype) and id(p) == ids[k]  # updated in place
            np.testing.assert_allclose(p, tparams[k].detach().numpy(), **PTOL[dtype],
                                       err_msg=f"{name} {kw} step {step + 1} {k}")
            np.testing.assert_array_equal(grads[k], before[k])  # grads not modified
    # the params really moved (a test that cannot fail is a defect)
    p0, _ = make_params(dtype)
    assert all(np.abs(params[k] - p0[k]).max() > 1e-3 for k in params)


def test_adamw_differs_from_adam_with_decay():
    runs = []
    for name in ("Adam", "AdamW"):
        params, grads = make_params(np.float64)
        runs.append(run_ours(getattr(optim, name)(params, grads, lr=0.01, weight_decay=0.5),
                             grads, grad_seq(np.float64))[-1])
    assert np.abs(runs[0]["0.weight"] - runs[1]["0.weight"]).max() > 1e-4


def test_zero_lr_and_zero_grad():
    params, grads = make_params(np.float32)
    p0 = {k: p.copy() for k, p in params.items()}
    opt = optim.Adam(params, grads, lr=0.0)
    run_ours(opt, grads, grad_seq(np.float32, 2))
    for k in params:
        np.testing.assert_array_equal(params[k], p0[k])
    opt.zero_grad()
    assert all(not g.any() for g in grads.values())


@pytest.mark.parametrize("name,kw", CASES, ids=CASE_IDS)
def test_state_dict_resume_is_exact(name, kw):
    dtype = np.float32
    seq = grad_seq(dtype, 7)
    params, grads = make_params(dtype)
    opt = getattr(optim, name)(params, grads, **kw)
    run_ours(opt, grads, seq[:3])
    saved_params = {k: p.copy() for k, p in params.items()}
    state = opt.state_dict()
    state_copy = copy.deepcopy(state)
    full = run_ours(opt, grads, seq[3:])
    # the returned state is a deep copy: further steps did not change it
    assert state["step_count"] == 3
    for k, s in state["state"].items():
        for n, a in s.items():
            np.testing.assert_array_equal(a, state_copy["state"][k][n])
    # a fresh optimizer (other defaults) on restored params continues bit for bit
    params2 = {k: p.copy() for k, p in saved_params.items()}
    grads2 = {k: np.zeros_like(p) for k, p in params2.items()}
    opt2 = getattr(optim, name)(params2, grads2, lr=0.5)
    opt2.load_state_dict(state)
    assert opt2.step_count == 3 and opt2.lr == kw["lr"]
    resumed = run_ours(opt2, grads2, seq[3:])
    for a, b in zip(full, resumed):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    # loading copied the arrays: stepping opt2 did not touch the dict it was given
    for k, s in state["state"].items():
        for n, a in s.items():
            np.testing.assert_array_equal(a, state_copy["state"][k][n])


def _bad_states():
    params, grads = make_params(np.float32)
    opt = optim.Adam(params, grads, lr=0.01, amsgrad=True)
    run_ours(opt, grads, grad_seq(np.float32, 2))
    good = opt.state_dict()

    def edit(fn):
        s = copy.deepcopy(good)
        fn(s)
        return s
    return good, [
        (edit(lambda s: s.pop("step_count")), ValueError, "step_count"),
        (edit(lambda s: s["hyper"].update(lr=-1.0)), ValueError, "lr"),
        (edit(lambda s: s["hyper"].update(betas=(0.9, 1.0))), ValueError, "betas"),
        (edit(lambda s: s["hyper"].pop("eps")), ValueError, "eps"),
        (edit(lambda s: s["state"].pop("0.bias")), ValueError, "0.bias"),
        (edit(lambda s: s["state"]["0.bias"].pop("max_exp_avg_sq")), ValueError,
         "max_exp_avg_sq"),
        (edit(lambda s: s["state"]["0.weight"].update(exp_avg=np.zeros((3, 4), np.float32))),
         ValueError, "exp_avg"),
        (edit(lambda s: s["state"]["0.weight"].update(exp_avg=np.zeros((4, 3)))),
         ValueError, "float32"),
        (edit(lambda s: s.update(step_count=-1)), ValueError, "step_count"),
        ("nope", ValueError, "dict"),
    ]


def test_load_state_dict_rejects_bad_state_without_changes():
    good, bad = _bad_states()
    params, grads = make_params(np.float32, seed=5)
    opt = optim.Adam(params, grads, lr=0.003)
    run_ours(opt, grads, grad_seq(np.float32, 1))
    before = opt.state_dict()
    for state, err, word in bad:
        with pytest.raises(err, match=word):
            opt.load_state_dict(state)
        after = opt.state_dict()
        assert after["hyper"] == before["hyper"] and after["step_count"] == 1
        for k in before["state"]:
            assert set(after["state"][k]) == set(before["state"][k])
            for n in before["state"][k]:
                np.testing.assert_array_equal(after["state"][k][n], before["state"][k][n])
    opt.load_state_dict(good)  # and the good one loads
    assert opt.step_count == 2 and opt.amsgrad


def test_sgd_momentum_buffer_required_after_first_step():
    params, grads = make_params(np.float64)
    opt = optim.SGD(params, grads, lr=0.1, momentum=0.9)
    state = opt.state_dict()
    assert state["state"]["0.bias"] == {}
    run_ours(opt, grads, grad_seq(np.float64, 1))
    state = opt.state_dict()
    state["state"]["0.bias"] = {}
    with pytest.raises(ValueError, match="momentum_buffer"):
        opt.load_state_dict(state)


@pytest.mark.parametrize("ctor,kw,err,word", [
    (optim.SGD, dict(lr=-0.1), ValueError, "lr"),
    (optim.SGD, dict(lr=float("nan")), ValueError, "lr"),
    (optim.SGD, dict(lr="0.1"), TypeError, "lr"),
    (optim.SGD, dict(lr=0.1, momentum=-0.5), ValueError, "momentum"),
    (optim.SGD, dict(lr=0.1, weight_decay=-1), ValueError, "weight_decay"),
    (optim.SGD, dict(lr=0.1, nesterov=True), ValueError, "nesterov"),
    (optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), ValueError,
     "nesterov"),
    (optim.SGD, dict(lr=0.1, momentum=0.9, nesterov="yes"), TypeError, "nesterov"),
    (optim.Adam, dict(betas=(1.0, 0.999)), ValueError, r"betas\[0\]"),
    (optim.Adam, dict(betas=(0.9, -0.1)), ValueError, r"betas\[1\]"),
    (optim.Adam, dict(betas=(0.9,)), ValueError, "betas"),
    (optim.Adam, dict(eps=-1e-8), ValueError, "eps"),
    (optim.Adam, dict(lr=float("inf")), ValueError, "lr"),
    (optim.AdamW, dict(weight_decay=-0.01), ValueError, "weight_decay"),
    (optim.Adam, dict(amsgrad=1), TypeError, "amsgrad"),
    (optim.RMSprop, dict(alpha=1.5), ValueError, "alpha"),
    (optim.RMSprop, dict(momentum=-1), ValueError, "momentum"),
    (optim.RMSprop, dict(centered=None), TypeError, "centered"),
])
def test_bad_hyper_parameters(ctor, kw, err, word):
    params, grads = make_params(np.float32)
    with pytest.raises(err, match=word):
        ctor(params, grads, **kw)


def test_bad_params_and_grads():
    params, grads = make_params(np.float32)
    with pytest.raises(ValueError, match="empty"):
        optim.SGD({}, {}, lr=0.1)
    with pytest.raises(ValueError, match="0.bias"):
        optim.SGD(params, {k: v for k, v in grads.items() if k != "0.bias"}, lr=0.1)
    with pytest.raises(ValueError, match="0.bias"):
        optim.SGD(params, {**grads, "0.bias": np.zeros(5, np.float32)}, lr=0.1)
    with pytest.raises(ValueError, match="0.bias"):
        optim.Adam(params, {**grads, "0.bias": np.zeros(4, np.float64)})
    with pytest.raises(TypeError, match="0.bias"):
        optim.Adam({**params, "0.bias": [0.0] * 4}, grads)
    with pytest.raises(TypeError, match="int64"):
        optim.Adam({**params, "0.bias": np.zeros(4, np.int64)},
                   {**grads, "0.bias": np.zeros(4, np.int64)})
    with pytest.raises(TypeError, match="dict"):
        optim.Adam(list(params.values()), grads)
    opt = optim.SGD(params, grads, lr=0.1)
    opt.lr = -1.0
    with pytest.raises(ValueError, match="lr"):
        opt.step()


def test_optimizer_on_model_params_reaches_layers():
    from nbconv.layers import Linear, ReLU, Sequential, SoftmaxCrossEntropy
    model = Sequential(Linear(5, 8, seed=0), ReLU(), Linear(8, 3, seed=1))
    opt = optim.SGD(model.params, model.grads, lr=0.5)
    w_before = model[0].params["weight"].copy()
    x = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)
    loss0, d = SoftmaxCrossEntropy()(model(x), np.array([0, 1, 2, 0, 1, 2]))
    model.backward(d)
    opt.step()
    assert np.abs(model[0].params["weight"] - w_before).max() > 0
    loss1, _ = SoftmaxCrossEntropy()(model(x), np.array([0, 1, 2, 0, 1, 2]))
    assert loss1 < loss0


# ---- schedules ------------------------------------------------------------------------------

SCHEDULES = [
    ("StepLR", dict(step_size=3)),
    ("StepLR", dict(step_size=2, gamma=0.5)),
    ("CosineAnnealingLR", dict(T_max=5)),
    ("MultiStepLR", dict(milestones=[5, 8])),
    ("MultiStepLR", dict(milestones=[1, 3, 3, 9], gamma=0.5)),
    ("CosineAnnealingLR", dict(T_max=4, eta_min=0.01)),
]


@pytest.mark.parametrize("name,kw", SCHEDULES)
def test_schedule_matches_torch(name, kw):
    params, grads = make_params(np.float32)
    opt = optim.SGD(params, grads, lr=0.1, momentum=0.9)
    sched = getattr(optim, name)(opt, **kw)
    topt = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1, momentum=0.9)
    tsched = getattr(torch.optim.lr_scheduler, name)(topt, **kw)
    assert sched.get_last_lr() == pytest.approx(tsched.get_last_lr(), rel=1e-15)
    lrs = []
    for epoch in range(13):   # past T_max: the cosine goes back up, as torch
        topt.step()
        tsched.step()
        sched.step()
        assert opt.lr == pytest.approx(topt.param_groups[0]["lr"], rel=1e-13, abs=1e-16), epoch
        assert sched.get_last_lr() == pytest.approx(tsched.get_last_lr(), rel=1e-13, abs=1e-16)
        lrs.append(opt.lr)
    assert len(set(lrs)) > 2


def test_cosine_closed_form():
    params, grads = make_params(np.float64)
    opt = optim.Adam(params, grads, lr=0.2)
    sched = optim.CosineAnnealingLR(opt, T_max=10, eta_min=0.02)
    for e in range(1, 11):
        sched.step()
        assert opt.lr == pytest.approx(0.02 + 0.18 * (1 + math.cos(math.pi * e / 10)) / 2)
    assert opt.lr == pytest.approx(0.02)


@pytest.mark.parametrize("name,kw", SCHEDULES)
def test_schedule_state_resume(name, kw):
    params, grads = make_params(np.float32)
    opt = optim.Adam(params, grads, lr=0.1)
    sched = getattr(optim, name)(opt, **kw)
    for _ in range(3):
        sched.step()
    s_state, o_state = sched.state_dict(), opt.state_dict()
    rest = []
    for _ in range(6):
        sched.step()
        rest.append(opt.lr)
    opt2 = optim.Adam(*make_params(np.float32), lr=7.0)
    sched2 = getattr(optim, name)(opt2, **{k: [m + 1 for m in v] if isinstance(v, list) else
                                          v + 1 for k, v in kw.items()})
    opt2.load_state_dict(o_state)
    sched2.load_state_dict(s_state)
    assert sched2.last_epoch == 3 and sched2.get_last_lr() == [o_state["hyper"]["lr"]]
    rest2 = []
    for _ in range(6):
        sched2.step()
        rest2.append(opt2.lr)
    assert rest == rest2


@pytest.mark.parametrize("ctor,kw,err,word", [
    (optim.StepLR, dict(step_size=0), ValueError, "step_size"),
    (optim.StepLR, dict(step_size=1.5), TypeError, "step_size"),
    (optim.StepLR, dict(step_size=2, gamma=-0.1), ValueError, "gamma"),
    (optim.CosineAnnealingLR, dict(T_max=0), ValueError, "T_max"),
    (optim.MultiStepLR, dict(milestones=[3, 2]), ValueError, "non-decreasing"),
    (optim.MultiStepLR, dict(milestones=[0, 2]), ValueError, "milestones"),
    (optim.MultiStepLR, dict(milestones=5), TypeError, "milestones"),
    (optim.MultiStepLR, dict(milestones=[2], gamma=-1.0), ValueError, "gamma"),
    (optim.CosineAnnealingLR, dict(T_max=3, eta_min=float("nan")), ValueError, "eta_min"),
])
def test_bad_schedule_arguments(ctor, kw, err, word):
    params, grads = make_params(np.float32)
    with pytest.raises(err, match=word):
        ctor(optim.SGD(params, grads, lr=0.1), **kw)


def test_bad_schedule_state_rejected_without_changes():
    params, grads = make_params(np.float32)
    sched = optim.StepLR(optim.SGD(params, grads, lr=0.1), step_size=2)
    sched.step()
    before = sched.state_dict()
    for bad in ({**before, "step_size": 0}, {**before, "last_epoch": -2},
                {k: v for k, v in before.items() if k != "gamma"}):
        with pytest.raises(ValueError):
            sched.load_state_dict(bad)
        assert sched.state_dict() == before
    with pytest.raises(TypeError, match="lr"):
        optim.StepLR(object(), step_size=1)


# ---- fused kernels: bitwise equal to the NumPy formulation --------------------------------------

def _run_steps(opt_cls, kw, dtype, path, parallel, seed=3):
    """Params after STEPS steps, updating through the fused kernels or the NumPy ``_update``."""
    params, _ = make_params(dtype, seed)
    params["big"] = np.random.default_rng(seed).normal(size=70001).astype(dtype)
    grads = {k: np.zeros_like(p) for k, p in params.items()}
    opt = opt_cls(params, grads, **kw)
    rng = np.random.default_rng(seed + 1)
    for step in range(STEPS):
        for g in grads.values():
            g[...] = rng.normal(size=g.shape)
        grads["big"][:4] = [np.nan, np.inf, -np.inf, 0.0] if step == 2 else grads["big"][:4]
        if path == "fused":
            opt.step()
        else:   # the NumPy path, the one non-contiguous arrays take
            opt.lr = float(opt.lr)
            opt.step_count += 1
            with np.errstate(all="ignore"):   # the inf/NaN gradients
                for k, p in params.items():
                    opt._update(p, grads[k], opt.state[k], opt._tmp(k, p))
    return params, opt.state


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,kw", CASES, ids=CASE_IDS)
def test_fused_update_bitwise_equals_numpy(name, kw, dtype, monkeypatch):
    cls = getattr(optim, name)
    ref, ref_state = _run_steps(cls, kw, dtype, "numpy", False)
    for threshold in (1 << 30, 1):   # all serial kernels, then all parallel ones
        monkeypatch.setattr(optim.optimizers, "PARALLEL_ELEMENTS", threshold)
        got, state = _run_steps(cls, kw, dtype, "fused", threshold == 1)
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k], err_msg=f"{name} {k} {threshold}")
            assert set(state[k]) == set(ref_state[k])
            for n in ref_state[k]:
                np.testing.assert_array_equal(state[k][n], ref_state[k][n], err_msg=f"{k} {n}")


def test_non_contiguous_param_takes_numpy_path_and_updates_in_place():
    base = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    params = {"w": base[:, ::2]}   # a view: the update must land in base
    grads = {"w": np.ones((6, 2), np.float32)}
    before = base.copy()
    optim.Adam(params, grads, lr=0.1).step()
    assert np.all(base[:, ::2] < before[:, ::2]) and np.array_equal(base[:, 1::2], before[:, 1::2])


# ---- the fused kernels are built like every other kernel ------------------------------------

def test_fused_kernels_built_by_config():
    """The optimizer kernels come from _config's decorators (issue 18: they had their own njit
    flags): registered for nbconv.warmup, the parallel ones under the launch lock and the fork
    guard, all without fastmath."""
    from nbconv import _config
    from nbconv.kernels import optim as K
    for name in ("sgd", "adam", "rmsprop"):
        par, ser = getattr(K, name), getattr(K, name + "_serial")
        assert isinstance(par, _config.Kernel), name
        assert par.dispatcher in _config.DISPATCHERS and ser in _config.DISPATCHERS, name
        for d in (par.dispatcher, ser):
            assert not d.targetoptions.get("fastmath"), name


def test_warm_up_compiles_the_runs_optimizer(tmp_path):
    """The Trainer's warm-up steps the run's optimizer on copies, so its update kernel is
    compiled (or loaded) before the first epoch, and only that one; the model and optimizer
    are untouched. ``python -m nbconv.warmup``'s helper compiles every optimizer family. In a
    fresh process, where no kernel has run yet."""
    import os
    import subprocess
    import sys
    code = """if True:
        import numpy as np, nbconv
        from nbconv import optim
        from nbconv.kernels import optim as K
        model = nbconv.Sequential(nbconv.Flatten(), nbconv.Linear(12, 3, seed=0))
        opt = optim.Adam(model.params, model.grads, lr=0.1)
        before = {k: v.copy() for k, v in model.params.items()}
        assert not K.adam_serial.signatures
        x = np.random.default_rng(0).standard_normal((10, 3, 2, 2)).astype(np.float32)
        t = nbconv.Trainer(model, opt, batch_size=4, progress=False)
        t.warm_up({"x_train": x, "y_train": np.arange(10) % 3})
        assert [s[0].dtype.name for s in K.adam_serial.signatures] == ["float32"]
        assert not K.sgd_serial.signatures and not K.rmsprop_serial.signatures
        assert opt.step_count == 0 and not any(opt.state.values())
        assert all(np.array_equal(before[k], v) for k, v in model.params.items())
        from nbconv.warmup import optimizer_kernels  # python -m nbconv.warmup: every family
        optimizer_kernels(np.float64)
        for k in (K.adam_serial, K.sgd_serial, K.rmsprop_serial):
            assert "float64" in [s[0].dtype.name for s in k.signatures]
        print("ok")
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                         env=dict(os.environ, PYTHONPATH=root, NBCONV_QUIET="1"))
    assert out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_kernels_bitwise_wherever_the_arrays_lie(dtype, parallel):
    """The fused updates give the same bits wherever the parameter, gradient and buffers lie
    (back to back, misaligned: tests/helpers.placements), as they must to equal NumPy's."""
    from nbconv.kernels import optim as K
    rng = np.random.default_rng(5)
    n = 1003
    p, g, m = (rng.standard_normal(n).astype(dtype) for _ in range(3))
    v = (np.abs(rng.standard_normal(n)) * 0.01).astype(dtype)
    adam, sgd, rms = ((K.adam, K.sgd, K.rmsprop) if parallel
                      else (K.adam_serial, K.sgd_serial, K.rmsprop_serial))
    c = np.array([0.999, 0.01, 0.1, 0.999, 0.001, 0.05, 1e-8, 0.001], dtype)
    for flags in ([1, 1, 1], [0, 1, 0]):
        f = np.array(flags, np.int64)
        assert_same_bits_wherever(lambda *a: adam(*a, c, f), [p, g, m, v, v * 2], [0, 2, 3, 4])
    cs, fs = np.array([0.01, 0.001, 0.9, 0.9], dtype), np.array([1, 1, 0, 1], np.int64)
    assert_same_bits_wherever(lambda *a: sgd(*a, cs, fs), [p, g, m], [0, 2])
    cr = np.array([0.01, 0.001, 0.99, 0.01, 1e-8, 0.9], dtype)
    fr = np.array([1, 1, 1], np.int64)
    assert_same_bits_wherever(lambda *a: rms(*a, cr, fr), [p, g, v, m * 0.01, m], [0, 2, 3, 4])
