"""``nbconv.summary(model, input_shape)``: a torchinfo-style table of a model, also as data.

::

    s = nbconv.summary(model, (1, 3, 32, 32))
    print(s)            # the table
    s.rows              # one dict per layer: index, layer, output_shape, params, macs,
                        #   activation_bytes
    s.totals            # params, trainable_params, macs, param_bytes, input_bytes,
                        #   activation_bytes, total_bytes

Sizes come from each layer's :meth:`~nbconv.layers.Layer.output_shape` and
:meth:`~nbconv.layers.Layer.macs`, computed from the arguments alone: no kernel runs, so a
summary is instant and compiles nothing. A layer without ``output_shape`` (a user's own
subclass) is run once on zeros of its input shape instead, in eval mode (no running statistics
change), and its saved state is cleared afterwards.

Counts, per layer and summed over ``Sequential`` containers (whose layers get rows of their
own, indexed as in the ``state_dict``: ``"0"``, ``"1.0"``, ...):

- ``params``: elements of the layer's parameters (buffers such as running statistics are not
  parameters, as in torchinfo);
- ``macs``: multiply-adds of one forward: ``N * F * OH * OW * (C/groups * KH * KW)`` for
  ``Conv2d``, ``N * in * out`` for ``Linear`` (see :meth:`~nbconv.layers.Layer.macs`), 0 for
  the other layers (pooling, activation and normalisation arithmetic is not counted);
- ``activation_bytes``: bytes of the layer's output (``prod(output_shape) * itemsize`` of the
  model's dtype); their total is the memory the forward's outputs take, which training keeps
  about twice of (outputs and their gradients), as torchinfo's "forward/backward pass size"
  counts.
"""
import numpy as np

from .layers import Layer, Sequential

__all__ = ["summary", "Summary"]


class Summary:
    """What :func:`summary` returns: ``rows`` (list of dicts), ``totals`` (dict), ``model_name``
    and ``input_shape``; ``str()`` (and ``repr()``) is the table."""

    def __init__(self, model_name, input_shape, rows, totals):
        self.model_name, self.input_shape = model_name, tuple(input_shape)
        self.rows, self.totals = rows, totals

    def __str__(self):
        head = ("Layer (index)", "Output shape", "Params", "Mult-adds", "Activations")
        body = [(f"{r['layer']} ({r['index']})", str(r["output_shape"]), f"{r['params']:,}",
                 f"{r['macs']:,}", _bytes(r["activation_bytes"])) for r in self.rows]
        widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h)
                  for i, h in enumerate(head)]

        def line(cells):
            return "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i])
                             for i, c in enumerate(cells))
        rule = "=" * len(line(head))
        t = self.totals
        out = [rule, f"{self.model_name}, input {self.input_shape}", rule, line(head),
               "-" * len(rule)] + [line(b) for b in body] + [
            rule,
            f"Total params: {t['params']:,} (trainable {t['trainable_params']:,})",
            f"Total mult-adds: {t['macs']:,} ({t['macs'] / 1e6:.2f} M)",
            rule,
            f"Input size: {_bytes(t['input_bytes'])}",
            f"Activations (forward outputs): {_bytes(t['activation_bytes'])}",
            f"Params size: {_bytes(t['param_bytes'])}",
            f"Estimated total (input + activations + params): {_bytes(t['total_bytes'])}",
            rule]
        return "\n".join(out)

    __repr__ = __str__


def _bytes(n):
    return f"{n / 2 ** 20:.2f} MiB" if n >= 2 ** 20 else f"{n / 2 ** 10:.2f} KiB"


def _shape_of(layer, shape, dtype):
    """``layer.output_shape(shape)``, or the shape of a forward on zeros when it has none."""
    try:
        return tuple(int(v) for v in layer.output_shape(shape))
    except NotImplementedError:
        was = layer.training
        layer.eval()
        try:
            out = layer(np.zeros(shape, dtype)).shape
        finally:
            layer.train(was)
            layer._saved = None
        return tuple(out)


def _walk(layer, prefix, shape, dtype, rows):
    """Append the rows of ``layer`` (its leaves' for a Sequential); return its output shape."""
    if isinstance(layer, Sequential):
        for i, child in enumerate(layer.layers):
            shape = _walk(child, f"{prefix}{i}" if not prefix else f"{prefix}.{i}", shape, dtype,
                          rows)
        return shape
    out = _shape_of(layer, shape, dtype)
    rows.append(dict(index=prefix or "-", layer=type(layer).__name__, output_shape=out,
                     params=int(sum(p.size for p in layer.params.values())),
                     macs=int(layer.macs(shape)),
                     activation_bytes=int(np.prod(out)) * dtype.itemsize))
    return out


def summary(model, input_shape, dtype=None):
    """Summarise ``model`` (a :class:`~nbconv.layers.Layer`, usually a ``Sequential``) for
    inputs of ``input_shape`` (``(N, C, H, W)`` with the batch, as torchinfo's
    ``input_size``): per layer its output shape, parameters, multiply-adds and activation
    memory, and the totals (see the module doc). ``dtype`` (default: the model's parameters',
    else float32) sets the bytes per element. Returns a :class:`Summary`; ``print`` it for the
    table."""
    if not isinstance(model, Layer):
        raise TypeError(f"model must be an nbconv Layer, got {type(model).__name__}")
    if not isinstance(input_shape, (tuple, list)) or not input_shape or not all(
            isinstance(v, (int, np.integer)) and v >= 1 for v in input_shape):
        raise ValueError(f"input_shape must be a tuple of positive ints such as (1, 3, 32, 32), "
                         f"got {input_shape!r}")
    if dtype is None:
        dtype = next((p.dtype for p in model.params.values()), np.dtype(np.float32))
    dtype = np.dtype(dtype)
    input_shape = tuple(int(v) for v in input_shape)
    rows = []
    _walk(model, "", input_shape, dtype, rows)
    params = int(sum(p.size for p in model.params.values()))
    param_bytes = int(sum(p.nbytes for p in model.params.values()))
    act = sum(r["activation_bytes"] for r in rows)
    inp = int(np.prod(input_shape)) * dtype.itemsize
    totals = dict(params=params, trainable_params=params, macs=sum(r["macs"] for r in rows),
                  param_bytes=param_bytes, input_bytes=inp, activation_bytes=act,
                  total_bytes=inp + act + param_bytes)
    return Summary(type(model).__name__, input_shape, rows, totals)
