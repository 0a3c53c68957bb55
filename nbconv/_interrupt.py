"""Stopping a training run cleanly: the exception :meth:`nbconv.train.Trainer.fit` raises after
a stop request, and the SIGINT handler behind :meth:`nbconv.train.Trainer.stop_on_sigint`."""
import contextlib
import signal

__all__ = ["TrainingInterrupted", "sigint_requests_stop", "position"]


def position(epochs_done, batch=0, batches=None):
    """Where a run stands, numbered as the progress bar numbers it (epochs from 1):
    ``"end of epoch 5"`` after 5 whole epochs (``"start"`` before any), ``"epoch 6, batch
    22/40"`` inside the 6th epoch with 22 of its ``batches`` done (``"epoch 6, batch 22"``
    when ``batches`` is not given)."""
    if not batch:
        return f"end of epoch {epochs_done}" if epochs_done else "start"
    return f"epoch {epochs_done + 1}, batch {batch}" + (f"/{batches}" if batches else "")


class TrainingInterrupted(Exception):
    """Raised by :meth:`Trainer.fit` when a stop was requested (:meth:`Trainer.request_stop`,
    or Ctrl-C under :meth:`Trainer.stop_on_sigint`): the current batch was finished and, if
    ``fit`` was given a checkpoint path, a checkpoint of this point written (``.checkpoint``,
    else ``None``); ``.epoch`` (whole epochs done) and ``.batch`` (batches done in the next
    one, 0 at an epoch's end) say where training stopped (see :func:`position`)."""

    def __init__(self, epoch, batch, checkpoint):
        self.epoch, self.batch, self.checkpoint = epoch, batch, checkpoint
        super().__init__(f"training stopped at {position(epoch, batch)}")


@contextlib.contextmanager
def sigint_requests_stop(stop, message=None):
    """Within this block, the first Ctrl-C (SIGINT) sets the ``threading.Event`` ``stop``
    (printing ``message``, if given), a second one raises ``KeyboardInterrupt`` at once; the
    previous handler is restored on exit. Main thread only."""
    def handler(signum, frame):
        if stop.is_set():
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        stop.set()
        if message:
            print(f"\n{message}", flush=True)

    old = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
