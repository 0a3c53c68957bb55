"""Optimizers and learning-rate schedules with PyTorch's update rules, for NumPy parameters.

An optimizer updates the parameter arrays IN PLACE from the current gradients (the arrays a
layer's ``backward`` fills) at each :meth:`Optimizer.step`. It takes the parameters in any of
these forms (:mod:`._groups`)::

    opt = Adam(model.params, model.grads, lr=1e-3)    # the two flat dicts name -> ndarray
    opt = Adam(model, lr=1e-3)                          # a model: the same, dotted names
    opt = Adam(model.parameters(), lr=1e-3)             # PyTorch's: arrays (or named pairs)
    opt = SGD([{"params": decay, "weight_decay": 5e-4},  # PyTorch's param groups
               {"params": no_decay}], lr=0.1, momentum=0.9)

For the PyTorch forms, each array's gradient is the one its layer registered when
``parameters()``/``named_parameters()`` handed the array out (:func:`nbconv.layers.grad_of`).
Then::

    sched = CosineAnnealingLR(opt, T_max=epochs)
    for epoch in range(epochs):
        for x, y in batches:
            loss, d = loss_fn(model(x), y); model.backward(d); opt.step()
        sched.step()

No ``zero_grad`` is needed: ``backward`` overwrites the gradients (PyTorch adds to ``.grad``).
``opt.param_groups`` are PyTorch's (``{"params": [...], "lr": ..., ...}``; schedules set each
group's ``"lr"``); ``opt.lr`` reads the first group's and sets every group's. ``state_dict()``
returns plain dicts of copied arrays and Python scalars (hyper-parameters per group, step count,
per-parameter buffers); ``load_state_dict()`` checks everything (keys, shapes, dtypes, values)
before changing anything, so a resumed run continues exactly. Updates are computed in each
parameter's dtype.

Each parameter is updated by one fused Numba loop (:mod:`nbconv.kernels.optim`: one pass over
the parameter, its gradient and buffers, bitwise equal to the NumPy formulation kept here as
``_update`` for arrays that are not C-contiguous), on one thread below ``PARALLEL_ELEMENTS``.

The optimizers live in :mod:`.optimizers`, the schedules in :mod:`.lr_scheduler` (as
``torch.optim.lr_scheduler``); every name is re-exported here.
"""
from .._config import PARALLEL_ELEMENTS  # noqa: F401
from .lr_scheduler import CosineAnnealingLR, LRScheduler, MultiStepLR, StepLR
from .optimizers import SGD, Adam, AdamW, Optimizer, RMSprop

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "LRScheduler", "StepLR",
           "MultiStepLR", "CosineAnnealingLR"]
