"""Optimizers the PyTorch way (issue 19): ``SGD(model.parameters(), lr=...)``, a model,
``named_parameters()``, param groups with their own lr/weight_decay (against torch.optim),
schedules acting on every group, state_dicts that cover the groups (and still load the
one-group form of older files), and the gradient rule: ``backward`` overwrites."""
import copy

import numpy as np
import pytest
import torch

import nbconv
from nbconv import optim
from nbconv.layers import Conv2d, Flatten, Linear, ReLU, Sequential, SoftmaxCrossEntropy


def model(seed=0, dtype=np.float64):
    return Sequential(Conv2d(2, 3, 3, seed=seed, dtype=dtype), ReLU(), Flatten(),
                      Linear(3 * 4 * 4, 4, seed=seed + 1, dtype=dtype))


def torch_twin(m):
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(48, 4)).double()
    net.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()})
    return net


X = np.random.default_rng(0).standard_normal((5, 2, 6, 6))
Y = np.array([0, 1, 2, 3, 1])


def train(m, opt, steps=4, sched=None):
    for _ in range(steps):
        _, d = SoftmaxCrossEntropy()(m(X), Y)
        m.backward(d)
        opt.step()
        if sched is not None:
            sched.step()


def train_torch(net, opt, steps=4, sched=None):
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(torch.from_numpy(X)), torch.from_numpy(Y)).backward()
        opt.step()
        if sched is not None:
            sched.step()


def assert_same(m, net):
    for k, v in net.state_dict().items():
        np.testing.assert_allclose(m.state_dict()[k], v.numpy(), rtol=1e-10, atol=1e-13,
                                   err_msg=k)


@pytest.mark.parametrize("form", ["parameters", "model", "named", "dicts"])
def test_every_form_trains_as_torch(form):
    m = model()
    net = torch_twin(m)
    arg = {"parameters": lambda: (m.parameters(),), "model": lambda: (m,),
           "named": lambda: (m.named_parameters(),), "dicts": lambda: (m.params, m.grads)}[form]
    opt = optim.SGD(*arg(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    names = {"parameters": ["0", "1", "2", "3"]}.get(form, ["0.weight", "0.bias", "3.weight",
                                                          "3.bias"])
    assert list(opt.params) == names and len(opt.param_groups) == 1
    assert all(opt.params[k] is p for k, p in zip(names, m.parameters()))
    assert all(opt.grads[k] is g for k, g in zip(names, m.grads.values()))
    train(m, opt)
    train_torch(net, torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3))
    assert_same(m, net)


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop"])
def test_param_groups_with_their_own_lr_and_weight_decay_as_torch(name):
    m = model()
    net = torch_twin(m)
    kw = {"SGD": dict(lr=0.1, momentum=0.9)}.get(name, dict(lr=0.01))
    decay = [p for n, p in m.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in m.named_parameters() if n.endswith("bias")]
    opt = getattr(optim, name)([{"params": decay, "weight_decay": 0.05},
                                {"params": no_decay, "lr": kw["lr"] / 2}], **kw)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, opt.defaults["weight_decay"]]
    assert opt.param_groups[1]["lr"] == kw["lr"] / 2 and opt.param_groups[0]["params"][0] is \
        decay[0]
    tdecay = [p for n, p in net.named_parameters() if n.endswith("weight")]
    tno = [p for n, p in net.named_parameters() if n.endswith("bias")]
    topt = getattr(torch.optim, name)([{"params": tdecay, "weight_decay": 0.05},
                                       {"params": tno, "lr": kw["lr"] / 2}], **kw)
    sched = optim.StepLR(opt, step_size=2, gamma=0.5)
    tsched = torch.optim.lr_scheduler.StepLR(topt, step_size=2, gamma=0.5)
    train(m, opt, 5, sched)
    train_torch(net, topt, 5, tsched)
    assert_same(m, net)
    assert sched.get_last_lr() == pytest.approx(tsched.get_last_lr(), rel=1e-15)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx(
        [g["lr"] for g in topt.param_groups], rel=1e-15)


def test_group_state_dict_round_trip_and_checks():
    m = model()
    opt = optim.Adam([{"params": m[0].parameters()}, {"params": m[3], "lr": 0.1}], lr=0.01)
    sched = optim.CosineAnnealingLR(opt, T_max=6)
    train(m, opt, 2, sched)
    state, sstate = opt.state_dict(), sched.state_dict()
    assert [g["params"] for g in state["param_groups"]] == [["0", "1"], ["2", "3"]]
    assert state["hyper"] == {k: v for k, v in state["param_groups"][0].items()
                              if k != "params"}
    assert sstate["base_lr"] == [0.01, 0.1] and len(sstate["last_lr"]) == 2
    m2 = copy.deepcopy(m)
    opt2 = optim.Adam([{"params": m2[0].parameters()}, {"params": m2[3], "lr": 0.5}], lr=0.5)
    sched2 = optim.CosineAnnealingLR(opt2, T_max=6)
    opt2.load_state_dict(state)
    sched2.load_state_dict(sstate)
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
    train(m, opt, 2, sched)
    train(m2, opt2, 2, sched2)
    for k, v in m.state_dict().items():   # resumed bit for bit
        np.testing.assert_array_equal(m2.state_dict()[k], v)
    bad = copy.deepcopy(state)
    bad["param_groups"][1]["params"] = ["3", "2"]
    with pytest.raises(ValueError, match="param group 1 holds parameters"):
        opt2.load_state_dict(bad)
    bad = copy.deepcopy(state)
    bad["param_groups"][0]["lr"] = -1.0
    with pytest.raises(ValueError, match="lr"):
        opt2.load_state_dict(bad)
    one = {k: v for k, v in state.items() if k != "param_groups"}   # a one-group file
    with pytest.raises(ValueError, match="2 param groups"):
        opt2.load_state_dict(one)
    with pytest.raises(ValueError, match="2 param groups"):
        sched2.load_state_dict({**sstate, "base_lr": 0.1})
    single = optim.Adam(model().params, model().grads, lr=0.01)
    old = {k: v for k, v in single.state_dict().items() if k != "param_groups"}
    single.load_state_dict(old)   # files written before param groups still load
    assert repr(opt).startswith("Adam(lr=") and repr(opt).endswith(", 2 param groups)")


def test_lr_attribute_reads_the_first_group_and_sets_all():
    m = model()
    opt = optim.SGD([{"params": m[0].parameters()}, {"params": m[3].parameters(), "lr": 1.0}],
                    lr=0.1)
    assert opt.lr == 0.1
    opt.lr = 0.3
    assert [g["lr"] for g in opt.param_groups] == [0.3, 0.3]
    opt.param_groups[1]["lr"] = -1.0   # checked at the next step, naming it
    with pytest.raises(ValueError, match="lr"):
        opt.step()
    opt.param_groups[1]["lr"] = 0.2
    extra = Linear(2, 2, seed=0)
    opt.add_param_group({"params": extra.parameters(), "momentum": 0.5})
    assert list(opt.params)[-2:] == ["4", "5"] and opt.param_groups[2]["momentum"] == 0.5
    opt.step()


def test_bad_forms_are_refused_clearly():
    m = model()
    with pytest.raises(TypeError, match="not an array that a layer's parameters"):
        optim.SGD([np.zeros(3)], lr=0.1)
    with pytest.raises(TypeError, match="lr="):
        optim.SGD(m.parameters(), 0.1)
    with pytest.raises(TypeError, match="SGD needs a learning rate"):
        optim.SGD(m.parameters())
    with pytest.raises(TypeError, match="grads dict"):
        optim.SGD(m.params, lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        p = list(m.parameters())
        optim.SGD([{"params": p[:2]}, {"params": p[1:]}], lr=0.1)
    with pytest.raises(ValueError, match="sets \\['gamma'\\]"):
        optim.SGD([{"params": m.parameters(), "gamma": 0.1}], lr=0.1)
    with pytest.raises(ValueError, match="no 'params'"):
        optim.SGD([{"lr": 0.1}], lr=0.1)
    with pytest.raises(TypeError, match="mixes"):
        optim.SGD([{"params": m.parameters()}, m.params["0.weight"]], lr=0.1)
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match="params must be"):
        optim.SGD(3, lr=0.1)


def test_backward_overwrites_gradients_and_zero_grad_zeroes():
    """nbconv's rule (README): each backward REPLACES the gradients (PyTorch adds to .grad),
    so a training step needs no zero_grad; two backward calls leave the second one's."""
    m = model()
    x1, x2 = X[:2], X[2:4]
    _, d1 = SoftmaxCrossEntropy()(m(x1), Y[:2])
    m.backward(d1)
    g1 = {k: g.copy() for k, g in m.grads.items()}
    _, d2 = SoftmaxCrossEntropy()(m(x2), Y[2:4])
    m.backward(d2)
    g2 = {k: g.copy() for k, g in m.grads.items()}
    fresh = model()
    _, d = SoftmaxCrossEntropy()(fresh(x2), Y[2:4])
    fresh.backward(d)
    for k in g2:
        np.testing.assert_array_equal(g2[k], fresh.grads[k])   # not g1 + g2
        assert not np.allclose(g2[k], g1[k] + g2[k])
    opt = optim.SGD(m.parameters(), lr=0.1)
    opt.zero_grad()
    assert all(not g.any() for g in m.grads.values())
    m.backward(d2)
    m.zero_grad()
    assert all(not g.any() for g in m.grads.values())


def test_parameters_after_to_are_the_new_arrays():
    m = model(dtype=np.float32)
    m.double()
    opt = optim.SGD(m.parameters(), lr=0.1)   # built after .to(), as PyTorch advises
    assert all(p.dtype == np.float64 for p in opt.params.values())
    assert all(g is m.grads[k] for g, k in zip(opt.grads.values(), m.grads))
    assert nbconv.layers.grad_of(np.zeros(2)) is None
