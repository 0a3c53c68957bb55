"""Per-epoch learning-rate schedules with PyTorch's semantics (as
``torch.optim.lr_scheduler``); see :mod:`nbconv.optim`."""
import math

from .._checks import check_float, check_int

__all__ = ["LRScheduler", "StepLR", "CosineAnnealingLR"]


class LRScheduler:
    """Base class of the per-epoch schedules (PyTorch semantics): on construction the base
    learning rate is the optimizer's ``lr`` and ``last_epoch`` is 0; each :meth:`step` (once
    per epoch, after that epoch's optimizer steps) increments ``last_epoch`` and sets
    ``optimizer.lr`` from the current one (PyTorch's recursive form)."""

    _HYPER = ()

    def __init__(self, optimizer):
        if not hasattr(optimizer, "lr"):
            raise TypeError(f"optimizer must have an 'lr' attribute, got "
                            f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = check_float(optimizer.lr, "optimizer.lr", 0.0)
        self.last_epoch = 0
        self._last_lr = self.base_lr

    def step(self):
        self.last_epoch += 1
        lr = float(self._next_lr(float(self.optimizer.lr)))
        self.optimizer.lr = lr
        self._last_lr = lr

    def _next_lr(self, lr):
        raise NotImplementedError

    def get_last_lr(self):
        """``[lr]``: the learning rate set by the last step (a list, as PyTorch)."""
        return [self._last_lr]

    def state_dict(self):
        return {"base_lr": self.base_lr, "last_epoch": self.last_epoch,
                "last_lr": self._last_lr, **{k: getattr(self, k) for k in self._HYPER}}

    def load_state_dict(self, state):
        """Restore a :meth:`state_dict`; checked before anything changes."""
        keys = {"base_lr", "last_epoch", "last_lr", *self._HYPER}
        if not isinstance(state, dict) or set(state) != keys:
            raise ValueError(f"{type(self).__name__} state must be a dict with keys "
                             f"{sorted(keys)}, got "
                             f"{sorted(state) if isinstance(state, dict) else state!r}")
        new = dict(base_lr=check_float(state["base_lr"], "base_lr", 0.0),
                   last_epoch=check_int(state["last_epoch"], "last_epoch", 0),
                   _last_lr=check_float(state["last_lr"], "last_lr", 0.0),
                   **self._validate(state))
        for k, v in new.items():
            setattr(self, k, v)

    def _validate(self, h):
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._HYPER)
        return f"{type(self).__name__}({args}, last_epoch={self.last_epoch})"


class StepLR(LRScheduler):
    """Multiply the learning rate by ``gamma`` every ``step_size`` epochs, as
    ``torch.optim.lr_scheduler.StepLR``: ``lr = base_lr * gamma ** (epoch // step_size)``."""

    _HYPER = ("step_size", "gamma")

    def __init__(self, optimizer, step_size, gamma=0.1):
        super().__init__(optimizer)
        for k, v in self._validate(dict(step_size=step_size, gamma=gamma)).items():
            setattr(self, k, v)

    def _validate(self, h):
        return dict(step_size=check_int(h["step_size"], "step_size", 1),
                    gamma=check_float(h["gamma"], "gamma", 0.0))

    def _next_lr(self, lr):
        return lr * self.gamma if self.last_epoch % self.step_size == 0 else lr


class CosineAnnealingLR(LRScheduler):
    """Cosine annealing as ``torch.optim.lr_scheduler.CosineAnnealingLR``:
    ``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2``, computed with
    PyTorch's recursive form (continues as a cosine wave past ``T_max``)."""

    _HYPER = ("T_max", "eta_min")

    def __init__(self, optimizer, T_max, eta_min=0.0):
        super().__init__(optimizer)
        for k, v in self._validate(dict(T_max=T_max, eta_min=eta_min)).items():
            setattr(self, k, v)

    def _validate(self, h):
        return dict(T_max=check_int(h["T_max"], "T_max", 1),
                    eta_min=check_float(h["eta_min"], "eta_min", 0.0))

    def _next_lr(self, lr):
        e, T, lo = self.last_epoch, self.T_max, self.eta_min
        if (e - 1 - T) % (2 * T) == 0:
            return lr + (self.base_lr - lo) * (1 - math.cos(math.pi / T)) / 2
        return ((1 + math.cos(math.pi * e / T)) / (1 + math.cos(math.pi * (e - 1) / T))
                * (lr - lo) + lo)
