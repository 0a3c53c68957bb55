"""``nbconv.summary(model, input_shape)``: a torchinfo-style table of a model, also as data.

::

    s = nbconv.summary(model, (1, 3, 32, 32))
    print(s)            # the table
    s.rows              # one dict per layer: index, layer, output_shape, params, macs,
                        #   activation_bytes
    s.totals            # params, trainable_params, macs, macs_unknown, param_bytes,
                        #   input_bytes, activation_bytes, total_bytes

Sizes come from each layer's :meth:`~nbconv.layers.Layer.output_shape` and
:meth:`~nbconv.layers.Layer.macs`, computed from the arguments alone: no kernel of a library
layer runs, so a summary is instant and compiles nothing. A layer with sub-layers (a residual
block, a user's own layer) is traced: its ``forward`` runs once on zeros in eval mode, each
sub-layer answering with zeros of the shape it computes (so only the layer's own glue code
runs, e.g. the addition of a skip connection); a leaf layer without ``output_shape`` (a user's
own) is run on zeros. Nothing is changed: running statistics, modes and the values saved for
``backward`` are as before.

Rows: one per leaf layer call, in call order, indexed by its dotted name as in the
``state_dict`` (``"0"``, ``"1.0"``, ``"layer1.0.conv1"``), plus one for a layer with sub-layers
that holds parameters of its own (its own computation is not known: ``"?"``). Counts:

- ``params``: elements of the layer's parameters (buffers such as running statistics are not
  parameters, as in torchinfo); the total is the model's;
- ``macs``: multiply-adds of one forward: ``N * F * OH * OW * (C/groups * KH * KW)`` for
  ``Conv2d``, ``N * in * out`` for ``Linear`` (see :meth:`~nbconv.layers.Layer.macs`), 0 for
  the other library layers (pooling, activation and normalisation arithmetic is not counted),
  ``None`` (printed ``?``) for a user's leaf layer without ``macs``, never a silent 0; the
  total sums the known counts, ``totals["macs_unknown"]`` lists the rows it misses;
- ``activation_bytes``: bytes of the layer's output (``prod(output_shape) * itemsize`` of the
  model's dtype); their total is the memory the forward's outputs take, which training keeps
  about twice of (outputs and their gradients), as torchinfo's "forward/backward pass size"
  counts.

``input_shape`` includes the batch axis (torchinfo's ``input_size``): with an unbatched
``(C, H, W)`` shape the convolutions and pools compute unbatched shapes as PyTorch would, and a
layer that cannot take the shape it receives (``Linear`` after ``Flatten``, a norm layer)
raises ``ValueError`` naming the layer, the shape and the batch axis.
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
                 "?" if r["macs"] is None else f"{r['macs']:,}", _bytes(r["activation_bytes"]))
                for r in self.rows]
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
            f"Total mult-adds: {t['macs']:,} ({t['macs'] / 1e6:.2f} M)" + (
                f", without the unknown (?) count of {', '.join(t['macs_unknown'])}"
                if t["macs_unknown"] else ""),
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
        # the class's forward: the instance's may be a stand-in of the walk
        return tuple(np.shape(type(layer).forward(layer, np.zeros(shape, dtype))))


def _name(prefix, name):
    return f"{prefix}.{name}" if prefix else name


class _Walk:
    """One summary's walk: the rows so far and the model's input shape (for error hints)."""

    def __init__(self, input_shape, dtype):
        self.input_shape, self.dtype, self.rows = input_shape, dtype, []

    def layer(self, layer, prefix, shape):
        """Append the rows of ``layer`` run on ``shape``; return its output shape."""
        if isinstance(layer, Sequential):
            for name, child in layer.named_children():
                shape = self.layer(child, _name(prefix, name), shape)
            return shape
        if any(True for _ in layer.children()):
            return self.traced(layer, prefix, shape)
        try:
            out = _shape_of(layer, shape, self.dtype)
            macs = layer.macs(shape)
        except (ValueError, TypeError) as e:
            hint = ""
            if len(self.input_shape) == 3:
                hint = (f"; input_shape {self.input_shape} has no batch axis? nbconv.summary "
                        f"wants it, e.g. {(1,) + self.input_shape}")
            raise ValueError(f"nbconv.summary: layer {prefix or '-'} "
                             f"({type(layer).__name__}) cannot take input shape {shape}: "
                             f"{e}{hint}") from e
        self.rows.append(dict(index=prefix or "-", layer=type(layer).__name__,
                              output_shape=out,
                              params=int(sum(p.size for p in layer.params.values())),
                              macs=None if macs is None else int(macs),
                              activation_bytes=int(np.prod(out)) * self.dtype.itemsize))
        return out

    def traced(self, layer, prefix, shape):
        """Run ``layer``'s class ``forward`` on zeros; its sub-layers answer through their
        stand-ins (:meth:`stand_in`)."""
        own = int(sum(p.size for p in layer._params.values()))
        row = None
        if own:   # its own computation is not known
            row = dict(index=prefix or "-", layer=type(layer).__name__, output_shape=None,
                       params=own, macs=None, activation_bytes=0)
            self.rows.append(row)
        out = tuple(np.shape(type(layer).forward(layer, np.zeros(shape, self.dtype))))
        if row is not None:
            row["output_shape"] = out
        return out

    def stand_in(self, child, name):
        """A ``forward`` for sub-layer ``child`` (dotted ``name``) that appends its rows and
        returns zeros of its output shape."""
        def forward(x, *args, **kwargs):
            if args or kwargs or not isinstance(x, np.ndarray):
                return type(child).forward(child, x, *args, **kwargs)
            return np.zeros(self.layer(child, name, x.shape), x.dtype)
        return forward


def summary(model, input_shape, dtype=None):
    """Summarise ``model`` (a :class:`~nbconv.layers.Layer`) for inputs of ``input_shape``
    (``(N, C, H, W)`` with the batch, as torchinfo's ``input_size``): per layer its output
    shape, parameters, multiply-adds and activation memory, and the totals (see the module
    doc). ``dtype`` (default: the model's parameters', else float32) sets the bytes per
    element. Returns a :class:`Summary`; ``print`` it for the table."""
    if not isinstance(model, Layer):
        raise TypeError(f"model must be an nbconv Layer, got {type(model).__name__}")
    if not isinstance(input_shape, (tuple, list)) or not input_shape or not all(
            isinstance(v, (int, np.integer)) and v >= 1 for v in input_shape):
        raise ValueError(f"input_shape must be a tuple of positive ints such as (1, 3, 32, 32), "
                         f"got {input_shape!r}")
    params = model.params
    if dtype is None:
        dtype = next((p.dtype for p in params.values()), np.dtype(np.float32))
    dtype = np.dtype(dtype)
    input_shape = tuple(int(v) for v in input_shape)
    walk = _Walk(input_shape, dtype)
    kept = [(m, m.training, m._saved, m._out_shape) for m in model.modules()]
    subs = list(model.named_modules())[1:]
    try:
        model.eval()   # no running statistics change, no dropout draws
        for name, m in subs:
            vars(m)["forward"] = walk.stand_in(m, name)
        walk.layer(model, "", input_shape)
    finally:
        for _, m in subs:
            vars(m).pop("forward", None)
        for m, training, saved, out_shape in kept:
            m.training, m._saved, m._out_shape = training, saved, out_shape
    rows = walk.rows
    n_params = int(sum(p.size for p in params.values()))
    param_bytes = int(sum(p.nbytes for p in params.values()))
    act = sum(r["activation_bytes"] for r in rows)
    inp = int(np.prod(input_shape)) * dtype.itemsize
    totals = dict(params=n_params, trainable_params=n_params,
                  macs=sum(r["macs"] for r in rows if r["macs"] is not None),
                  macs_unknown=[r["index"] for r in rows if r["macs"] is None],
                  param_bytes=param_bytes, input_bytes=inp, activation_bytes=act,
                  total_bytes=inp + act + param_bytes)
    return Summary(type(model).__name__, input_shape, rows, totals)
