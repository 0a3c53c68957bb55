"""Per-epoch learning-rate schedules with PyTorch's semantics (as
``torch.optim.lr_scheduler``); see :mod:`nbconv.optim`."""
import math

from .._checks import check_float, check_int

__all__ = ["LRScheduler", "StepLR", "MultiStepLR", "CosineAnnealingLR"]


class LRScheduler:
    """Base class of the per-epoch schedules (PyTorch semantics): on construction the base
    learning rates are the optimizer's param groups' ``"lr"`` and ``last_epoch`` is 0; each
    :meth:`step` (once per epoch, after that epoch's optimizer steps) increments
    ``last_epoch`` and sets every group's ``"lr"`` from its current one (PyTorch's recursive
    form). An optimizer without param groups is driven through its ``lr`` attribute."""

    _HYPER = ()

    def __init__(self, optimizer):
        if not hasattr(optimizer, "lr"):
            raise TypeError(f"optimizer must have an 'lr' attribute, got "
                            f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lrs = [check_float(lr, "optimizer.lr", 0.0) for lr in self._lrs()]
        self.last_epoch = 0
        self._last_lr = list(self.base_lrs)

    def _groups(self):
        groups = getattr(self.optimizer, "param_groups", None)
        return groups if groups else None

    def _lrs(self):
        groups = self._groups()
        return [g["lr"] for g in groups] if groups else [self.optimizer.lr]

    @property
    def base_lr(self):
        """The first group's base learning rate."""
        return self.base_lrs[0]

    def step(self):
        self.last_epoch += 1
        lrs = [float(self._next_lr(float(lr), base))
               for lr, base in zip(self._lrs(), self.base_lrs)]
        groups = self._groups()
        if groups:
            for g, lr in zip(groups, lrs):
                g["lr"] = lr
        else:
            self.optimizer.lr = lrs[0]
        self._last_lr = lrs

    def _next_lr(self, lr, base_lr):
        raise NotImplementedError

    def get_last_lr(self):
        """The learning rates set by the last step, one per param group (a list, as
        PyTorch)."""
        return list(self._last_lr)

    def state_dict(self):
        """``{"base_lr", "last_epoch", "last_lr", **hyper}``; the learning rates are floats for
        a one-group optimizer (as files written before param groups hold them), else lists."""
        one = len(self.base_lrs) == 1
        return {"base_lr": self.base_lrs[0] if one else list(self.base_lrs),
                "last_epoch": self.last_epoch,
                "last_lr": self._last_lr[0] if one else list(self._last_lr),
                **{k: getattr(self, k) for k in self._HYPER}}

    def _lr_list(self, value, name):
        values = value if isinstance(value, list) else [value]
        if len(values) != len(self.base_lrs):
            raise ValueError(f"{type(self).__name__} state {name!r} holds {len(values)} "
                             f"learning rates, the optimizer has {len(self.base_lrs)} param "
                             f"groups")
        return [check_float(v, name, 0.0) for v in values]

    def load_state_dict(self, state):
        """Restore a :meth:`state_dict`; checked before anything changes."""
        keys = {"base_lr", "last_epoch", "last_lr", *self._HYPER}
        if not isinstance(state, dict) or set(state) != keys:
            raise ValueError(f"{type(self).__name__} state must be a dict with keys "
                             f"{sorted(keys)}, got "
                             f"{sorted(state) if isinstance(state, dict) else state!r}")
        new = dict(base_lrs=self._lr_list(state["base_lr"], "base_lr"),
                   last_epoch=check_int(state["last_epoch"], "last_epoch", 0),
                   _last_lr=self._lr_list(state["last_lr"], "last_lr"),
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

    def _next_lr(self, lr, base_lr):
        return lr * self.gamma if self.last_epoch % self.step_size == 0 else lr


class MultiStepLR(LRScheduler):
    """Multiply the learning rate by ``gamma`` at each epoch of ``milestones`` (a non-decreasing
    sequence of epochs >= 1; a milestone listed twice multiplies twice), as
    ``torch.optim.lr_scheduler.MultiStepLR``: ``lr = base_lr * gamma ** (number of milestones
    <= epoch)``. He et al. 2016's CIFAR schedule is ``MultiStepLR(opt, [E // 2, 3 * E // 4],
    0.1)`` over ``E`` epochs (their 32k and 48k of 64k iterations)."""

    _HYPER = ("milestones", "gamma")

    def __init__(self, optimizer, milestones, gamma=0.1):
        super().__init__(optimizer)
        for k, v in self._validate(dict(milestones=milestones, gamma=gamma)).items():
            setattr(self, k, v)

    def _validate(self, h):
        ms = h["milestones"]
        if isinstance(ms, (str, bytes)) or not hasattr(ms, "__iter__"):
            raise TypeError(f"milestones must be a sequence of epochs, got {ms!r}")
        ms = [check_int(m, "milestones", 1) for m in ms]
        if ms != sorted(ms):
            raise ValueError(f"milestones must be non-decreasing, got {ms}")
        return dict(milestones=ms, gamma=check_float(h["gamma"], "gamma", 0.0))

    def _next_lr(self, lr, base_lr):
        return lr * self.gamma ** self.milestones.count(self.last_epoch)


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

    def _next_lr(self, lr, base_lr):
        e, T, lo = self.last_epoch, self.T_max, self.eta_min
        if (e - 1 - T) % (2 * T) == 0:
            return lr + (base_lr - lo) * (1 - math.cos(math.pi / T)) / 2
        return ((1 + math.cos(math.pi * e / T)) / (1 + math.cos(math.pi * (e - 1) / T))
                * (lr - lo) + lo)
