"""Ctrl-C held back while a training step changes the run's state.

Python raises ``KeyboardInterrupt`` at whatever line is running when Ctrl-C
arrives. Inside a step that may be after the optimizer has updated the
weights (or a batch-norm layer its running statistics, or dropout has drawn
from the RNG) and before the trainer has counted the step: the checkpoint
written on Ctrl-C then holds a half-taken step, and the resumed run takes it
again. Holding the signal until the step is done makes every interrupt land
between steps, where the checkpoint is exact; the wait is one step.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Run the block with SIGINT held; deliver it (once) when the block has finished.

    Outside the main thread (where Python cannot install handlers and SIGINT is
    not delivered anyway), or when the handler was not installed from Python,
    the block runs as it is. A block that raises drops a held Ctrl-C: it is
    failing already.
    """
    previous = signal.getsignal(signal.SIGINT) if _main_thread() else None
    if previous is None:
        yield
        return
    held: list[object] = []
    signal.signal(signal.SIGINT, lambda signum, frame: held.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        _deliver(previous, held[0])


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _deliver(handler: object, frame: object) -> None:
    """What ``handler`` would have done with the SIGINT it did not get."""
    if handler is signal.default_int_handler:
        raise KeyboardInterrupt
    if callable(handler):
        handler(signal.SIGINT, frame)
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signal.SIGINT)  # the default action, now that it is back
