"""What an optimizer is given, as named parameter groups, and the checks of a state_dict's
groups and buffers.

The forms (each parameter's gradient is the array ``backward`` fills):

- ``(params, grads)``: two dicts name -> ndarray with the same keys (``model.params,
  model.grads``); one group;
- a model (an nbconv ``Layer``): its ``params``/``grads`` under their dotted names; one group;
- PyTorch's: an iterable of parameter arrays (``model.parameters()``), of ``(name, array)``
  pairs (``model.named_parameters()``), or of param-group dicts ``{"params": ..., "lr": ...}``
  whose ``"params"`` is any of those (or a layer, taken as its ``parameters()``). Each
  array's gradient is found with :func:`nbconv.layers.grad_of` (so the arrays must come from
  ``parameters()`` or ``named_parameters()`` of a layer); unnamed arrays are named by their
  position, ``"0"``, ``"1"``, ... as PyTorch's optimizer state_dict numbers them.
"""
import numpy as np

from .._checks import FLOAT_DTYPES
from ..layers import Layer, grad_of


def check_params(params, grads, where="params"):
    """Both dicts name -> float ndarray, same keys, each gradient shaped and typed like its
    parameter, parameters writeable."""
    if not isinstance(params, dict) or not isinstance(grads, dict):
        raise TypeError(f"params and grads must be dicts name -> ndarray, got "
                        f"{type(params).__name__} and {type(grads).__name__}")
    if not params:
        raise ValueError(f"{where} is empty: nothing to optimize")
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


def param_groups(params, grads=None, start=0):
    """``[(params dict, grads dict, group options dict), ...]`` from any of the module doc's
    forms; unnamed arrays are named ``str(start)``, ``str(start + 1)``, ... ."""
    if grads is not None:
        if not isinstance(params, dict) or not isinstance(grads, dict):
            raise TypeError(f"params and grads must be dicts name -> ndarray, got "
                            f"{type(params).__name__} and {type(grads).__name__} (grads is "
                            f"taken with a params dict only; give a model or "
                            f"model.parameters() alone and the gradients are found)")
        check_params(params, grads)
        return [(dict(params), dict(grads), {})]
    if isinstance(params, dict):
        raise TypeError("a params dict needs its grads dict: Optimizer(model.params, "
                        "model.grads, ...), or give the model itself")
    if isinstance(params, Layer):   # one group under the model's dotted names
        check_params(params.params, params.grads)
        return [(dict(params.params), dict(params.grads), {})]
    groups = _as_groups(params)
    out, seen, counter = [], {}, start
    for gi, group in enumerate(groups):
        p, g, counter = _group_arrays(group["params"], gi, counter)
        for k, a in p.items():
            if id(a) in seen:
                raise ValueError(f"parameter {k!r} appears in more than one parameter group "
                                 f"(groups {seen[id(a)]} and {gi})")
            seen[id(a)] = gi
        check_params(p, g, f"param group {gi}")
        out.append((p, g, {k: v for k, v in group.items() if k != "params"}))
    return out


def _as_groups(params):
    if isinstance(params, (str, bytes, np.ndarray)) or not hasattr(params, "__iter__"):
        raise TypeError(f"params must be a model, (params, grads) dicts, or an iterable of "
                        f"parameter arrays or param-group dicts, got {type(params).__name__}")
    items = list(params)
    if not items:
        raise ValueError("params is empty: nothing to optimize")
    dicts = [isinstance(i, dict) for i in items]
    if any(dicts) and not all(dicts):
        raise TypeError("params mixes param-group dicts with arrays: give one or the other")
    if not all(dicts):
        return [{"params": items}]
    for gi, group in enumerate(items):
        if "params" not in group:
            raise ValueError(f"param group {gi} has no 'params' entry, got keys {sorted(group)}")
    return items


def _group_arrays(plist, gi, counter):
    """``(params, grads, counter)`` of one group's ``"params"`` entry."""
    if isinstance(plist, Layer):
        plist = list(plist.parameters())
    elif isinstance(plist, np.ndarray):
        plist = [plist]
    p, g = {}, {}
    for j, item in enumerate(plist):
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            name, arr = item
        else:
            name, arr = str(counter), item
        counter += 1
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"param group {gi}: parameter {j} must be a numpy.ndarray, got "
                            f"{type(arr).__name__}")
        grad = grad_of(arr)
        if grad is None:
            raise TypeError(f"param group {gi}: parameter {j} {arr.shape} is not an array "
                            f"that a layer's parameters() or named_parameters() handed out, "
                            f"so its gradient is unknown; pass model.parameters(), the model, "
                            f"or (params, grads) dicts")
        if name in p:
            raise ValueError(f"param group {gi}: two parameters are named {name!r}")
        p[name], g[name] = arr, grad
    return p, g, counter


def group_hypers(opt, state, name):
    """The validated hyper-parameters of each of ``opt``'s groups from a state_dict
    ``state`` (its ``"param_groups"``, or its ``"hyper"`` for a one-group optimizer when the
    state predates param groups)."""
    hyper = state["hyper"]
    if not isinstance(hyper, dict) or set(hyper) != set(opt._HYPER):
        raise ValueError(f"{name} state 'hyper' must have keys {list(opt._HYPER)}, got "
                         f"{sorted(hyper) if isinstance(hyper, dict) else hyper!r}")
    hyper = opt._validate(dict(hyper))
    groups = state.get("param_groups")
    if groups is None:
        if len(opt.param_groups) != 1:
            raise ValueError(f"{name} state has one group's hyper-parameters, the optimizer "
                             f"{len(opt.param_groups)} param groups")
        return [hyper]
    if not isinstance(groups, list) or len(groups) != len(opt.param_groups):
        raise ValueError(f"{name} state 'param_groups' must be a list of "
                         f"{len(opt.param_groups)} groups, got {groups!r:.200}")
    out = []
    for i, (group, names) in enumerate(zip(groups, opt._names)):
        if not isinstance(group, dict) or set(group) != {"params", *opt._HYPER}:
            raise ValueError(f"{name} state param group {i} must have keys "
                             f"{['params', *opt._HYPER]}, got "
                             f"{sorted(group) if isinstance(group, dict) else group!r}")
        if list(group["params"]) != names:
            raise ValueError(f"{name} state param group {i} holds parameters "
                             f"{list(group['params'])!r:.200}, the optimizer's group "
                             f"{names!r:.200}")
        out.append(opt._validate({k: group[k] for k in opt._HYPER}))
    return out


def check_buffers(opt, name, k, s, required):
    """Parameter ``k``'s buffers ``s`` from a state_dict: the ``required`` names at least,
    only ``opt._STATE`` names, each an array shaped and typed like the parameter."""
    p = opt.params[k]
    if not isinstance(s, dict) or not required <= set(s) <= set(opt._STATE):
        raise ValueError(f"{name} state for {k!r} must hold {sorted(required)} "
                         f"(allowed {list(opt._STATE)}), got "
                         f"{sorted(s) if isinstance(s, dict) else s!r}")
    for n, a in s.items():
        if not isinstance(a, np.ndarray) or a.shape != p.shape or a.dtype != p.dtype:
            raise ValueError(f"{name} state[{k!r}][{n!r}] must be an array {p.shape} "
                             f"{p.dtype} like the parameter, got "
                             f"{getattr(a, 'shape', type(a).__name__)} "
                             f"{getattr(a, 'dtype', '')}")
