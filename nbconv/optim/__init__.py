"""Optimizers and learning-rate schedules with PyTorch's update rules, for NumPy parameters.

An optimizer takes the model's ``params`` and ``grads`` dicts (name -> ndarray, same keys,
shapes and dtypes; e.g. ``Sequential.params`` / ``Sequential.grads``) and updates the
parameter arrays IN PLACE from the current gradients at each :meth:`Optimizer.step`::

    opt = Adam(model.params, model.grads, lr=1e-3)
    sched = CosineAnnealingLR(opt, T_max=epochs)
    for epoch in range(epochs):
        for x, y in batches:
            loss, d = loss_fn(model(x), y); model.backward(d); opt.step()
        sched.step()

The learning rate is ``opt.lr`` (schedules set it). ``state_dict()`` returns plain dicts of
copied arrays and Python scalars (hyper-parameters, step count, per-parameter buffers);
``load_state_dict()`` checks everything (keys, shapes, dtypes, values) before changing
anything, so a resumed run continues exactly. Updates are computed in each parameter's dtype.

Each parameter is updated by one fused Numba loop (:mod:`nbconv.kernels.optim`: one pass over
the parameter, its gradient and buffers, bitwise equal to the NumPy formulation kept here as
``_update`` for arrays that are not C-contiguous), on one thread below ``PARALLEL_ELEMENTS``.

The optimizers live in :mod:`.optimizers`, the schedules in :mod:`.lr_scheduler` (as
``torch.optim.lr_scheduler``); every name is re-exported here.
"""
from .._config import PARALLEL_ELEMENTS  # noqa: F401
from .lr_scheduler import CosineAnnealingLR, LRScheduler, StepLR
from .optimizers import SGD, Adam, AdamW, Optimizer, RMSprop

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "LRScheduler", "StepLR",
           "CosineAnnealingLR"]
