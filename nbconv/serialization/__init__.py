"""Weights and state in and out: :func:`save` / :func:`load`, as ``torch.save`` / ``torch.load``.

What can be saved is what a PyTorch user saves: a ``state_dict`` (``{str: ndarray}``) or any
nested dicts (keys ``str`` or ``int``), lists and tuples of ndarrays and plain values
(``None``, bool, int, float, str; NumPy scalars are saved as Python numbers), e.g.
``opt.state_dict()`` or ``{"model": model.state_dict(), "optimizer": opt.state_dict(),
"epoch": 3}``. No format nbconv reads can run code.

:func:`save` picks the format by the path's suffix:

- ``.safetensors``: the safetensors format (:mod:`._safetensors`), safe by design and read by
  ``safetensors.torch.load_file``. A flat state dict is written exactly as the ``safetensors``
  package writes it. A nested object is flattened: each array is a tensor named by its key
  path, keys joined by ``/`` (a ``~`` in a key written ``~0``, a ``/`` written ``~1``: the
  optimizer's ``{"state": {"0.weight": {"exp_avg": a}}}`` gives the tensor
  ``state/0.weight/exp_avg``), and the structure with the plain values is JSON in the header's
  ``__metadata__["nbconv.tree"]``; :func:`load` rebuilds the object from it (other readers see
  the flat tensors).
- ``.pt`` / ``.pth``: PyTorch's zip format (:mod:`._torch_read`, :mod:`._torch_write`),
  written without torch, which ``torch.load(path, weights_only=True)`` reads as the same
  nested object with tensors.
- any other suffix: ``ValueError`` (nothing is guessed; :func:`save_safetensors` and
  :func:`save_torch` write their format under any name).

:func:`load` decides by the file's first bytes, never by its name: a zip archive (``PK\\x03\\x04``)
is an nbconv training checkpoint (:mod:`nbconv.checkpoint`, when it holds ``__meta__`` and
``__checksum__``: its model ``state_dict`` is returned) or a torch ``.pt`` file
(:func:`load_torch`); 8 bytes of header length followed by ``{`` is safetensors
(:func:`load_safetensors`); torch's legacy pre-1.6 format and other pickles are named and
refused. bfloat16 tensors (``.pt`` and safetensors) are widened to float32, exactly; float16
stays float16.

Errors (all ``ValueError``, naming the file and, where there is one, the tensor):
:class:`SafetensorsError`, :class:`TorchFileError` (its subclass :class:`UnsafeFileError` for a
pickle that asks for code), both :class:`FileFormatError`, and
:class:`nbconv.checkpoint.CheckpointError` for a damaged checkpoint. Every writer goes through
:func:`nbconv._io.atomic_write`: a reader sees the old file or the new one, never half of one.
"""
import os

from .. import checkpoint as _checkpoint
from .._io import open_zip
from ._errors import FileFormatError, SafetensorsError, TorchFileError, UnsafeFileError
from ._safetensors import load_safetensors, save_safetensors
from ._torch_read import is_legacy, load_torch
from ._torch_write import save_torch

__all__ = ["save", "load", "load_torch", "save_torch", "load_safetensors", "save_safetensors",
           "FileFormatError", "SafetensorsError", "TorchFileError", "UnsafeFileError"]

_WRITERS = {".safetensors": save_safetensors, ".pt": save_torch, ".pth": save_torch}


def save(obj, path):
    """Write ``obj`` (a ``state_dict``, or nested dicts/lists/tuples of ndarrays and plain
    values, see the module doc) to ``path``, atomically, as ``torch.save(obj, path)`` does:
    ``.safetensors`` in the safetensors format, ``.pt``/``.pth`` in PyTorch's zip format
    (``torch.load(path, weights_only=True)`` reads it). Only arrays and values, not the
    architecture: rebuild the model in code, then ``model.load_state_dict(nbconv.load(path))``.
    Raises ``ValueError`` for another suffix, ``TypeError`` for a value nbconv cannot store
    (both before anything is written)."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in _WRITERS:
        raise ValueError(f"cannot tell the format of {os.fspath(path)!r} from its suffix "
                         f"{suffix!r}: use .safetensors or .pt/.pth, or call "
                         f"nbconv.save_safetensors / nbconv.save_torch, which take any name")
    _WRITERS[suffix](obj, path)


def load(path):
    """What :func:`save` wrote, or a ``torch.save`` zip file (without torch and without running
    its pickle), or the model ``state_dict`` of a training checkpoint (``run/checkpoint.npz``
    of ``scripts/train_cifar.py``: the parameters and buffers of its last epoch; the best
    validation epoch's are ``nbconv.checkpoint.model_state(path, best=True)``, and the
    optimizer, epoch and history come back whole through ``nbconv.Trainer.load`` or
    ``nbconv.checkpoint.read``). Told apart by their first bytes (see the module doc).

    Raises :class:`FileFormatError` (a ``ValueError``) for a file of no known format and the
    formats' own errors for a malformed one, ``FileNotFoundError``/``OSError`` as ``open``."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(32)
    if head[:4] == b"PK\x03\x04":
        with open_zip(path, TorchFileError, "neither a torch .pt file nor an nbconv "
                                            "checkpoint that can be read") as z:
            names = set(z.namelist())
        if {"__meta__.npy", "__checksum__.npy"} <= names:
            return _checkpoint.model_state(path)
        return load_torch(path)
    if len(head) > 8 and head[8:9] == b"{":
        return load_safetensors(path)
    if is_legacy(head):
        return load_torch(path)    # raises, naming the legacy format and what to do
    what = "a Python pickle (refused: loading it could run code)" if head[:1] == b"\x80" \
        else f"of no format nbconv reads (first bytes {head[:8]!r})"
    raise FileFormatError(f"{path} is {what}; nbconv.load reads safetensors files, torch .pt "
                          f"zip files and nbconv checkpoints")
