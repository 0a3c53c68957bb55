"""Optimizers (SGD, Adam, AdamW, RMSprop) with PyTorch's update rules; see :mod:`nbconv.optim`.

Each parameter is updated by one fused Numba loop (:mod:`nbconv.kernels.optim`: one pass over
the parameter, its gradient and buffers, bitwise equal to the NumPy formulation kept here as
``_update`` for arrays that are not C-contiguous), on one thread below ``PARALLEL_ELEMENTS``.
"""
import math

import numpy as np

from .._checks import check_bool, check_float, check_int
from .._config import PARALLEL_ELEMENTS
from ..kernels import optim as K
from ._groups import check_buffers, group_hypers, param_groups

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop"]


def _check_betas(betas):
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    return tuple(check_float(b, f"betas[{i}]", 0.0, 1.0, max_inclusive=False)
                 for i, b in enumerate(betas))


def _flat(a, dtype):
    """``a`` as a flat view, or a 0-length array of ``dtype`` for an unused buffer."""
    return np.empty(0, dtype) if a is None else a.reshape(-1)


class Optimizer:
    """Base class. Subclasses set ``_HYPER`` (hyper-parameter names, validated by
    ``_validate``) and ``_STATE`` (per-parameter buffer names) and implement ``_update``.

    ``params`` (and ``grads``) take any form of :mod:`nbconv.optim._groups`: ``(model.params,
    model.grads)``, a model, ``model.parameters()`` or a list of param-group dicts. Each group
    in :attr:`param_groups` (PyTorch's: ``{"params": [arrays], "lr": ..., ...}``) holds every
    hyper-parameter, the constructor's unless the group sets its own; schedulers set each
    group's ``"lr"``. ``opt.lr`` (and every other hyper-parameter attribute) reads the first
    group's value and sets every group's. :attr:`params` and :attr:`grads` are the flat dicts
    name -> array of all groups (the names a state_dict uses)."""

    _HYPER = ("lr",)
    _STATE = ()

    def __init__(self, params, grads=None, **hyper):
        if isinstance(grads, (int, float)) and not isinstance(grads, bool):
            raise TypeError(f"{type(self).__name__}'s second argument is grads (a dict); pass "
                            f"the learning rate as lr={grads!r}")
        self.defaults = self._validate(hyper)
        self.params, self.grads = {}, {}
        self.param_groups, self._names = [], []
        self._active = None   # the group step() is updating
        for p, g, options in param_groups(params, grads):
            self._add_group(p, g, options)
        self.step_count = 0
        self.state = {k: {} for k in self.params}   # name -> {buffer name: ndarray}
        self._scratch = {}

    def _add_group(self, p, g, options):
        unknown = sorted(set(options) - set(self._HYPER))
        if unknown:
            raise ValueError(f"param group {len(self.param_groups)} sets {unknown}; "
                             f"{type(self).__name__} takes {list(self._HYPER)}")
        clash = sorted(set(p) & set(self.params))
        if clash:
            raise ValueError(f"parameter names {clash} are already in another param group")
        h = self._validate({**self.defaults, **options})
        self.params.update(p)
        self.grads.update(g)
        self.param_groups.append({"params": list(p.values()), **h})
        self._names.append(list(p))

    def add_param_group(self, param_group):
        """Add a group ``{"params": arrays, **options}`` (PyTorch's ``add_param_group``)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        [(p, g, options)] = param_groups([param_group], start=len(self.params))
        self._add_group(p, g, options)
        for k in p:
            self.state[k] = {}

    # hyper-parameters as attributes: the group being stepped, else the first group's
    def __getattr__(self, name):
        if name in type(self)._HYPER and "param_groups" in self.__dict__:
            group = self.__dict__["_active"] or self.__dict__["param_groups"][0]
            return group[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name, value):
        if name in type(self)._HYPER and "param_groups" in self.__dict__:
            for group in self.param_groups:
                group[name] = value
        else:
            object.__setattr__(self, name, value)

    def _validate(self, hyper):
        """Checked hyper-parameters (a dict with exactly ``_HYPER``'s keys)."""
        raise NotImplementedError

    def _hyper(self, group=None):
        group = self.param_groups[0] if group is None else group
        return {name: group[name] for name in self._HYPER}

    def step(self):
        """Update every parameter in place from its gradient (one optimisation step)."""
        for group in self.param_groups:   # hyper-parameters a user or a schedule set
            group.update(self._validate(self._hyper(group)))
        self.step_count += 1
        try:
            for group, names in zip(self.param_groups, self._names):
                self._active = group
                for k in names:
                    p, g, state = self.params[k], self.grads[k], self.state[k]
                    if p.flags.c_contiguous and g.flags.c_contiguous:
                        self._init_state(p, state)
                        if all(a.flags.c_contiguous for a in state.values()):
                            self._fused(p, g, state, p.size >= PARALLEL_ELEMENTS)
                            continue
                    self._update(p, g, state, self._tmp(k, p))
        finally:
            self._active = None

    def _init_state(self, p, state):
        """Create the buffers the next update needs (zeros), as ``_update`` would."""

    def _fused(self, p, g, state, parallel):
        """The update of ``_update`` in one kernel pass (C-contiguous arrays)."""
        raise NotImplementedError

    def _tmp(self, k, p):
        t = self._scratch.get(k)
        if t is None or t.shape != p.shape or t.dtype != p.dtype:
            t = self._scratch[k] = np.empty_like(p)
        return t

    def _update(self, p, g, state, tmp):
        raise NotImplementedError

    def zero_grad(self, set_to_none=True):
        """Set every gradient to zero (in place; ``set_to_none`` is accepted for PyTorch's
        signature: the gradients stay arrays). Not needed between steps: ``backward``
        overwrites the gradients."""
        for g in self.grads.values():
            g[...] = 0

    def _decayed(self, g, p, weight_decay):
        """``g + weight_decay * p`` as a new array (the gradient arrays are never modified)."""
        return g + weight_decay * p if weight_decay != 0 else g

    def _required_state(self):
        """Buffer names every parameter must have after ``step_count`` steps."""
        return set()

    # -- state --------------------------------------------------------------------------------
    def state_dict(self):
        """``{"hyper": {name: value}, "step_count": int, "state": {param: {buffer: array}},
        "param_groups": [{"params": [param names], **hyper}]}``, every array a copy;
        ``"hyper"`` is the first group's (as files written before param groups hold it)."""
        return {"hyper": dict(self._hyper()), "step_count": self.step_count,
                "state": {k: {n: a.copy() for n, a in s.items()} for k, s in self.state.items()},
                "param_groups": [{"params": list(names), **self._hyper(group)}
                                 for group, names in zip(self.param_groups, self._names)]}

    def load_state_dict(self, state):
        """Restore a :meth:`state_dict` (arrays are copied; a state without
        ``"param_groups"``, as written before them, fits a one-group optimizer). Raises
        ``ValueError``/``TypeError`` naming the offending entry, before changing anything."""
        name = type(self).__name__
        keys = {"hyper", "step_count", "state"}
        if not isinstance(state, dict) or not keys <= set(state) <= keys | {"param_groups"}:
            raise ValueError(f"{name} state must be a dict with keys 'hyper', 'step_count', "
                             f"'state' (and 'param_groups'), got "
                             f"{sorted(state) if isinstance(state, dict) else state!r}")
        hypers = group_hypers(self, state, name)
        step_count = check_int(state["step_count"], "step_count", 0)
        buffers = state["state"]
        if not isinstance(buffers, dict) or set(buffers) != set(self.params):
            raise ValueError(f"{name} state 'state' must have one entry per parameter "
                             f"{sorted(self.params)}, got "
                             f"{sorted(buffers) if isinstance(buffers, dict) else buffers!r}")
        saved = [self._hyper(g) for g in self.param_groups], self.step_count
        for group, h in zip(self.param_groups, hypers):   # the required buffers depend on them
            group.update(h)
        self.step_count = step_count
        try:
            for group, names in zip(self.param_groups, self._names):
                self._active = group
                required = self._required_state()
                for k in names:
                    check_buffers(self, name, k, buffers[k], required)
        except Exception:
            for group, h in zip(self.param_groups, saved[0]):
                group.update(h)
            self.step_count = saved[1]
            raise
        finally:
            self._active = None
        self.state = {k: {n: np.array(a, copy=True) for n, a in s.items()}
                      for k, s in buffers.items()}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._hyper().items())
        groups = f", {len(self.param_groups)} param groups" if len(self.param_groups) > 1 else ""
        return f"{type(self).__name__}({args}{groups})"


class SGD(Optimizer):
    """Stochastic gradient descent as ``torch.optim.SGD``. Per parameter, with ``g`` its
    gradient::

        g = g + weight_decay * p                    (if weight_decay)
        buf = g (first step);  buf = momentum * buf + (1 - dampening) * g   (if momentum)
        g = g + momentum * buf (nesterov)  or  g = buf
        p -= lr * g

    ``nesterov`` needs ``momentum > 0`` and ``dampening == 0``."""

    _HYPER = ("lr", "momentum", "dampening", "weight_decay", "nesterov")
    _STATE = ("momentum_buffer",)

    def __init__(self, params, grads=None, lr=None, momentum=0.0, dampening=0.0,
                 weight_decay=0.0, nesterov=False):
        if lr is None:
            raise TypeError("SGD needs a learning rate: SGD(..., lr=0.1)")
        super().__init__(params, grads, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov)

    def _validate(self, h):
        out = dict(lr=check_float(h["lr"], "lr", 0.0),
                   momentum=check_float(h["momentum"], "momentum", 0.0),
                   dampening=check_float(h["dampening"], "dampening", 0.0),
                   weight_decay=check_float(h["weight_decay"], "weight_decay", 0.0),
                   nesterov=check_bool(h["nesterov"], "nesterov"))
        if out["nesterov"] and (out["momentum"] <= 0 or out["dampening"] != 0):
            raise ValueError(f"nesterov needs momentum > 0 and dampening == 0, got momentum="
                             f"{out['momentum']}, dampening={out['dampening']}")
        return out

    def _required_state(self):
        return {"momentum_buffer"} if self.momentum != 0 and self.step_count > 0 else set()

    def _fused(self, p, g, state, parallel):
        dt = p.dtype.type
        buf = state.get("momentum_buffer")
        first = self.momentum != 0 and buf is None
        if first:
            buf = state["momentum_buffer"] = np.empty_like(p)
        c = np.array([self.lr, self.weight_decay, self.momentum, 1.0 - self.dampening], p.dtype)
        flags = np.array([self.weight_decay != 0, self.momentum != 0, first, self.nesterov],
                         np.int64)
        fn = K.sgd if parallel else K.sgd_serial
        fn(p.reshape(-1), g.reshape(-1), _flat(buf, dt), c, flags)

    def _update(self, p, g, state, tmp):
        g = self._decayed(g, p, self.weight_decay)
        if self.momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = g.copy()
            else:
                buf *= self.momentum
                np.multiply(g, 1.0 - self.dampening, out=tmp)
                buf += tmp
            if self.nesterov:
                np.multiply(buf, self.momentum, out=tmp)
                tmp += g
                g = tmp
            else:
                g = buf
        np.multiply(g, self.lr, out=tmp)
        p -= tmp


class Adam(Optimizer):
    """Adam as ``torch.optim.Adam`` (``decoupled=False``) and ``AdamW`` (``True``). At step
    ``t`` (from 1), per parameter with gradient ``g``::

        p *= 1 - lr * weight_decay                  (AdamW)
        g = g + weight_decay * p                    (Adam, if weight_decay)
        m += (1 - beta1) * (g - m);  v = beta2 * v + (1 - beta2) * g * g
        vmax = max(vmax, v)                         (amsgrad; then v is vmax below)
        p -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    ``m``, ``v`` (and ``vmax``) start at zero; ``betas`` in ``[0, 1)``."""

    _HYPER = ("lr", "betas", "eps", "weight_decay", "amsgrad")
    _STATE = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    _decoupled = False

    def __init__(self, params, grads=None, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=0.0, amsgrad=False):
        super().__init__(params, grads, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad)

    def _validate(self, h):
        return dict(lr=check_float(h["lr"], "lr", 0.0), betas=_check_betas(h["betas"]),
                    eps=check_float(h["eps"], "eps", 0.0),
                    weight_decay=check_float(h["weight_decay"], "weight_decay", 0.0),
                    amsgrad=check_bool(h["amsgrad"], "amsgrad"))

    def _required_state(self):
        if self.step_count == 0:
            return set()
        return {"exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if self.amsgrad else set())

    def _init_state(self, p, state):
        if not state:
            state["exp_avg"], state["exp_avg_sq"] = np.zeros_like(p), np.zeros_like(p)
        if self.amsgrad and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = np.zeros_like(p)

    def _fused(self, p, g, state, parallel):
        b1, b2 = self.betas
        t = self.step_count
        c = np.array([1.0 - self.lr * self.weight_decay, self.weight_decay, 1.0 - b1, b2, 1.0 - b2,
                      math.sqrt(1.0 - b2 ** t), self.eps, self.lr / (1.0 - b1 ** t)], p.dtype)
        flags = np.array([self._decoupled, self.weight_decay != 0, self.amsgrad], np.int64)
        vmax = state["max_exp_avg_sq"] if self.amsgrad else None
        fn = K.adam if parallel else K.adam_serial
        fn(p.reshape(-1), g.reshape(-1), state["exp_avg"].reshape(-1),
           state["exp_avg_sq"].reshape(-1), _flat(vmax, p.dtype.type), c, flags)

    def _update(self, p, g, state, tmp):
        b1, b2 = self.betas
        t = self.step_count
        if not state:
            state["exp_avg"], state["exp_avg_sq"] = np.zeros_like(p), np.zeros_like(p)
        if self.amsgrad and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = np.zeros_like(p)
        if self.weight_decay != 0:
            if self._decoupled:
                p *= 1.0 - self.lr * self.weight_decay
            else:
                g = self._decayed(g, p, self.weight_decay)
        m, v = state["exp_avg"], state["exp_avg_sq"]
        np.subtract(g, m, out=tmp)
        tmp *= 1.0 - b1
        m += tmp
        v *= b2
        np.multiply(g, 1.0 - b2, out=tmp)
        tmp *= g
        v += tmp
        if self.amsgrad:
            v = np.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
        step_size = self.lr / (1.0 - b1 ** t)
        np.sqrt(v, out=tmp)
        tmp /= math.sqrt(1.0 - b2 ** t)
        tmp += self.eps
        np.divide(m, tmp, out=tmp)
        tmp *= step_size
        p -= tmp


class AdamW(Adam):
    """Adam with decoupled weight decay, as ``torch.optim.AdamW``: each step first does
    ``p *= 1 - lr * weight_decay``, then the Adam update without decay (see :class:`Adam`)."""

    _decoupled = True

    def __init__(self, params, grads=None, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=1e-2, amsgrad=False):
        super().__init__(params, grads, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad)


class RMSprop(Optimizer):
    """RMSprop as ``torch.optim.RMSprop``. Per parameter with gradient ``g``::

        g = g + weight_decay * p                    (if weight_decay)
        v = alpha * v + (1 - alpha) * g * g
        a += (1 - alpha) * (g - a);  avg = sqrt(v - a * a) + eps    (centered)
        avg = sqrt(v) + eps                         (otherwise)
        buf = momentum * buf + g / avg;  p -= lr * buf               (momentum > 0)
        p -= lr * g / avg                           (otherwise)

    ``v``, ``a`` and ``buf`` start at zero; ``alpha`` in ``[0, 1]``."""

    _HYPER = ("lr", "alpha", "eps", "weight_decay", "momentum", "centered")
    _STATE = ("square_avg", "grad_avg", "momentum_buffer")

    def __init__(self, params, grads=None, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0,
                 momentum=0.0, centered=False):
        super().__init__(params, grads, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                         momentum=momentum, centered=centered)

    def _validate(self, h):
        return dict(lr=check_float(h["lr"], "lr", 0.0),
                    alpha=check_float(h["alpha"], "alpha", 0.0, 1.0),
                    eps=check_float(h["eps"], "eps", 0.0),
                    weight_decay=check_float(h["weight_decay"], "weight_decay", 0.0),
                    momentum=check_float(h["momentum"], "momentum", 0.0),
                    centered=check_bool(h["centered"], "centered"))

    def _required_state(self):
        if self.step_count == 0:
            return set()
        return ({"square_avg"} | ({"grad_avg"} if self.centered else set())
                | ({"momentum_buffer"} if self.momentum > 0 else set()))

    def _init_state(self, p, state):
        for n in self._required_state():
            if n not in state:
                state[n] = np.zeros_like(p)

    def _fused(self, p, g, state, parallel):
        dt = p.dtype.type
        c = np.array([self.lr, self.weight_decay, self.alpha, 1.0 - self.alpha, self.eps,
                      self.momentum], p.dtype)
        flags = np.array([self.weight_decay != 0, self.centered, self.momentum > 0], np.int64)
        fn = K.rmsprop if parallel else K.rmsprop_serial
        fn(p.reshape(-1), g.reshape(-1), state["square_avg"].reshape(-1),
           _flat(state.get("grad_avg") if self.centered else None, dt),
           _flat(state.get("momentum_buffer") if self.momentum > 0 else None, dt), c, flags)

    def _update(self, p, g, state, tmp):
        for n in self._required_state():
            if n not in state:
                state[n] = np.zeros_like(p)
        g = self._decayed(g, p, self.weight_decay)
        v = state["square_avg"]
        v *= self.alpha
        np.multiply(g, 1.0 - self.alpha, out=tmp)
        tmp *= g
        v += tmp
        if self.centered:
            a = state["grad_avg"]
            np.subtract(g, a, out=tmp)
            tmp *= 1.0 - self.alpha
            a += tmp
            np.multiply(a, a, out=tmp)
            np.subtract(v, tmp, out=tmp)
            np.sqrt(tmp, out=tmp)
        else:
            np.sqrt(v, out=tmp)
        tmp += self.eps
        np.divide(g, tmp, out=tmp)
        if self.momentum > 0:
            buf = state["momentum_buffer"]
            buf *= self.momentum
            buf += tmp
            np.multiply(buf, self.lr, out=tmp)
        else:
            tmp *= self.lr
        p -= tmp
