"""Gradient mode: whether a layer's ``forward`` keeps what its ``backward`` needs.

::

    with nbconv.no_grad():          # inference: every forward keeps nothing for backward
        logits = model(x)           # holds only the live activations (and the weights)

    @nbconv.no_grad()               # or as a decorator
    def predict(model, x): ...

As ``torch.no_grad``, the mode is **thread-local** (a thread that trains is not affected by
another one predicting) and nests (``enable_grad()`` inside turns it back on); new threads
start with gradients enabled. ``inference_mode`` is the same context here (nbconv has no
tensors whose version it could track).

Under ``no_grad`` each layer's ``forward`` records that it saved nothing (the one place is
:meth:`nbconv.layers.Layer.save_for_backward`): the values of an earlier forward are dropped
too, and ``backward`` raises ``RuntimeError`` saying the forward ran under ``no_grad``. Results
are the same as with gradients enabled (the same kernels run), BatchNorm2d's running
statistics still update in train mode and Dropout still draws its mask in train mode, as in
PyTorch. ``model.eval()`` alone still saves (PyTorch's semantics: eval changes what a layer
computes, ``no_grad`` what it keeps).
"""
import functools
import threading

__all__ = ["no_grad", "enable_grad", "set_grad_enabled", "is_grad_enabled", "inference_mode"]

_state = threading.local()


class _NotSaved:
    """What a layer holds instead of its saved values after a forward under ``no_grad``."""

    def __repr__(self):
        return "NOT_SAVED"


NOT_SAVED = _NotSaved()


def is_grad_enabled():
    """True unless the calling thread is inside :class:`no_grad` (or after
    ``set_grad_enabled(False)``)."""
    return getattr(_state, "enabled", True)


def _set(mode):
    _state.enabled = bool(mode)


class _GradMode:
    """A context manager (and decorator) that sets the calling thread's mode and restores the
    previous one on exit."""

    _mode = True

    def __enter__(self):
        self._prev = is_grad_enabled()
        _set(self._mode)
        return self

    def __exit__(self, *exc):
        _set(self._prev)
        return False

    def __call__(self, func):
        """As a decorator: ``func`` runs in this mode (a fresh context per call, so the
        decorated function is re-entrant and thread-safe)."""
        if not callable(func):
            raise TypeError(f"{type(self).__name__}() decorates a callable, got "
                            f"{type(func).__name__}")
        mode = self._mode

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with _Mode(mode):
                return func(*args, **kwargs)
        return wrapper

    def __repr__(self):
        return f"{type(self).__name__}()"


class _Mode(_GradMode):
    def __init__(self, mode):
        self._mode = mode


class no_grad(_GradMode):  # noqa: N801  (torch's name)
    """Context manager / decorator: forwards inside keep nothing for backward (see the
    module's doc)."""

    _mode = False


class enable_grad(_GradMode):  # noqa: N801
    """Context manager / decorator: gradients enabled again (inside a :class:`no_grad`)."""

    _mode = True


class inference_mode(_GradMode):  # noqa: N801
    """``inference_mode(mode=True)``: :class:`no_grad` when ``mode`` is True (as
    ``torch.inference_mode``; nbconv keeps no tensor versions, so the two are the same)."""

    def __init__(self, mode=True):
        if not isinstance(mode, bool):
            raise TypeError(f"inference_mode(mode) takes a bool, got {type(mode).__name__}")
        self._mode = not mode

    def __repr__(self):
        return f"inference_mode(mode={not self._mode})"


class set_grad_enabled(_GradMode):  # noqa: N801
    """``set_grad_enabled(mode)``: sets the calling thread's mode at once (as a function
    call); as a context manager it restores the mode from before the call on exit, as a
    decorator it leaves the mode alone until the function runs (torch's semantics)."""

    def __init__(self, mode):
        if not isinstance(mode, bool):
            raise TypeError(f"set_grad_enabled(mode) takes a bool, got {type(mode).__name__}")
        self._mode, self._prev = mode, is_grad_enabled()
        _set(mode)

    def __enter__(self):
        return self   # set by __init__; __exit__ restores the mode from before it

    def __call__(self, func):
        _set(self._prev)   # a decorator: the mode applies when the function runs
        return super().__call__(func)

    def __repr__(self):
        return f"set_grad_enabled(mode={self._mode})"
