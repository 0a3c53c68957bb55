"""Optimizers (SGD, Adam, AdamW, RMSprop) with PyTorch's update rules; see :mod:`nbconv.optim`.

Each parameter is updated by one fused Numba loop (:mod:`nbconv.kernels.optim`: one pass over
the parameter, its gradient and buffers, bitwise equal to the NumPy formulation kept here as
``_update`` for arrays that are not C-contiguous), on one thread below ``PARALLEL_ELEMENTS``.
"""
import math

import numpy as np

from .._checks import FLOAT_DTYPES, check_bool, check_float, check_int
from .._config import PARALLEL_ELEMENTS
from ..kernels import optim as K

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop"]


def _check_betas(betas):
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    return tuple(check_float(b, f"betas[{i}]", 0.0, 1.0, max_inclusive=False)
                 for i, b in enumerate(betas))


def _check_params(params, grads):
    if not isinstance(params, dict) or not isinstance(grads, dict):
        raise TypeError(f"params and grads must be dicts name -> ndarray, got "
                        f"{type(params).__name__} and {type(grads).__name__}")
    if not params:
        raise ValueError("params is empty: nothing to optimize")
    if set(params) != set(grads):
        raise ValueError(f"params and grads must have the same keys: only in params "
                         f"{sorted(set(params) - set(grads))}, only in grads "
                         f"{sorted(set(grads) - set(params))}")
    for k, p in params.items():
        g = grads[k]
        for what, a in (("params", p), ("grads", g)):
            if not isinstance(a, np.ndarray):
                raise TypeError(f"{what}[{k!r}] must be a numpy.ndarray, got {type(a).__name__}")
            if a.dtype not in FLOAT_DTYPES:
                raise TypeError(f"{what}[{k!r}] must be float32 or float64, got {a.dtype}")
        if g.shape != p.shape or g.dtype != p.dtype:
            raise ValueError(f"grads[{k!r}] {g.shape} {g.dtype} must match params[{k!r}] "
                             f"{p.shape} {p.dtype}")
        if not p.flags.writeable:
            raise ValueError(f"params[{k!r}] is read-only; the optimizer updates it in place")


def _flat(a, dtype):
    """``a`` as a flat view, or a 0-length array of ``dtype`` for an unused buffer."""
    return np.empty(0, dtype) if a is None else a.reshape(-1)


class Optimizer:
    """Base class. Subclasses set ``_HYPER`` (hyper-parameter names, validated by
    ``_validate``) and ``_STATE`` (per-parameter buffer names) and implement ``_update``."""

    _HYPER = ("lr",)
    _STATE = ()

    def __init__(self, params, grads, **hyper):
        _check_params(params, grads)
        self.params, self.grads = params, grads
        for name, value in self._validate(hyper).items():
            setattr(self, name, value)
        self.step_count = 0
        self.state = {k: {} for k in params}   # name -> {buffer name: ndarray}
        self._scratch = {}

    def _validate(self, hyper):
        """Checked hyper-parameters (a dict with exactly ``_HYPER``'s keys)."""
        raise NotImplementedError

    def _hyper(self):
        return {name: getattr(self, name) for name in self._HYPER}

    def step(self):
        """Update every parameter in place from its gradient (one optimisation step)."""
        self.lr = check_float(self.lr, "lr", 0.0)
        self.step_count += 1
        for k, p in self.params.items():
            g, state = self.grads[k], self.state[k]
            if p.flags.c_contiguous and g.flags.c_contiguous:
                self._init_state(p, state)
                if all(a.flags.c_contiguous for a in state.values()):
                    self._fused(p, g, state, p.size >= PARALLEL_ELEMENTS)
                    continue
            self._update(p, g, state, self._tmp(k, p))

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

    def zero_grad(self):
        """Set every gradient to zero (in place)."""
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
        """``{"hyper": {name: value}, "step_count": int, "state": {param: {buffer: array}}}``,
        every array a copy."""
        return {"hyper": dict(self._hyper()), "step_count": self.step_count,
                "state": {k: {n: a.copy() for n, a in s.items()} for k, s in self.state.items()}}

    def load_state_dict(self, state):
        """Restore a :meth:`state_dict` (arrays are copied). Raises ``ValueError``/``TypeError``
        naming the offending entry, before changing anything."""
        name = type(self).__name__
        if not isinstance(state, dict) or set(state) != {"hyper", "step_count", "state"}:
            raise ValueError(f"{name} state must be a dict with keys 'hyper', 'step_count', "
                             f"'state', got {sorted(state) if isinstance(state, dict) else state!r}")
        hyper = state["hyper"]
        if not isinstance(hyper, dict) or set(hyper) != set(self._HYPER):
            raise ValueError(f"{name} state 'hyper' must have keys {list(self._HYPER)}, got "
                             f"{sorted(hyper) if isinstance(hyper, dict) else hyper!r}")
        hyper = self._validate(dict(hyper))
        step_count = check_int(state["step_count"], "step_count", 0)
        buffers = state["state"]
        if not isinstance(buffers, dict) or set(buffers) != set(self.params):
            raise ValueError(f"{name} state 'state' must have one entry per parameter "
                             f"{sorted(self.params)}, got "
                             f"{sorted(buffers) if isinstance(buffers, dict) else buffers!r}")
        saved = self._hyper(), self.step_count
        for k, v in hyper.items():      # the required buffers depend on the hyper-parameters
            setattr(self, k, v)
        self.step_count = step_count
        try:
            required = self._required_state()
            for k, p in self.params.items():
                s = buffers[k]
                if not isinstance(s, dict) or not required <= set(s) <= set(self._STATE):
                    raise ValueError(f"{name} state for {k!r} must hold {sorted(required)} "
                                     f"(allowed {list(self._STATE)}), got "
                                     f"{sorted(s) if isinstance(s, dict) else s!r}")
                for n, a in s.items():
                    if not isinstance(a, np.ndarray) or a.shape != p.shape or a.dtype != p.dtype:
                        raise ValueError(f"{name} state[{k!r}][{n!r}] must be an array "
                                         f"{p.shape} {p.dtype} like the parameter, got "
                                         f"{getattr(a, 'shape', type(a).__name__)} "
                                         f"{getattr(a, 'dtype', '')}")
        except Exception:
            for k, v in saved[0].items():
                setattr(self, k, v)
            self.step_count = saved[1]
            raise
        self.state = {k: {n: np.array(a, copy=True) for n, a in s.items()}
                      for k, s in buffers.items()}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._hyper().items())
        return f"{type(self).__name__}({args})"


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

    def __init__(self, params, grads, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False):
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

    def __init__(self, params, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False):
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

    def __init__(self, params, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False):
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

    def __init__(self, params, grads, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0,
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
