"""Stopping a training run cleanly: the exception :meth:`nbconv.train.Trainer.fit` raises after
a stop request, and the SIGINT handler behind :meth:`nbconv.train.Trainer.stop_on_sigint`."""
import contextlib
import signal

__all__ = ["TrainingInterrupted", "sigint_requests_stop"]


class TrainingInterrupted(Exception):
    """Raised by :meth:`Trainer.fit` when a stop was requested (:meth:`Trainer.request_stop`,
    or Ctrl-C under :meth:`Trainer.stop_on_sigint`): the current batch was finished and, if
    ``fit`` was given a checkpoint path, a checkpoint of this point written (``.checkpoint``,
    else ``None``); ``.epoch`` and ``.batch`` say where training stopped."""

    def __init__(self, epoch, batch, checkpoint):
        self.epoch, self.batch, self.checkpoint = epoch, batch, checkpoint
        super().__init__(f"training stopped in epoch {epoch + 1} after batch {batch}")


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
