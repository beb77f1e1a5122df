"""Interrupts that never lose results: a Ctrl-C or SIGTERM during training finishes the step, writes a checkpoint and
then raises KeyboardInterrupt (StopRequest); elsewhere (preflight, evaluation, the suite's process waiting on its
cells) the signals raise KeyboardInterrupt at once (interrupt_on), so runs are closed as KILLED and resumable."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class StopRequest:
    """SIGINT/SIGTERM during training only set a flag; the loop finishes its step, writes a checkpoint and then
    raises KeyboardInterrupt, so an interrupted cell resumes exactly where it stopped. Installed only in the main
    thread (where Python delivers signals); the previous handlers come back on exit.

    Once a process has been asked to stop (`stopping`, for the whole process), another SIGTERM is the same request
    (the suite's process forwards one to its cell's worker, which a Ctrl-C may have reached already); only another
    SIGINT, a second Ctrl-C, stops at once without the checkpoint."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    stopping = False

    def __init__(self):
        self.requested: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested is not None or StopRequest.stopping:
            if signum == signal.SIGINT:  # a second Ctrl-C: stop now, without the checkpoint
                raise KeyboardInterrupt
            return
        self.requested = signum
        StopRequest.stopping = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _interrupt(signum, frame) -> None:
    """Outside training: the first SIGINT or SIGTERM raises KeyboardInterrupt; a SIGTERM after that is the same
    request (StopRequest.stopping), another SIGINT interrupts again."""
    if StopRequest.stopping and signum == signal.SIGTERM:
        return
    StopRequest.stopping = True
    raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")


@contextmanager
def interrupt_on(*signals: signal.Signals):
    """These signals raise KeyboardInterrupt, as Ctrl-C does, with a repeated SIGTERM taken as the same request;
    inside training, StopRequest takes over. Signals reach the main thread only: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _interrupt) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        StopRequest.stopping = False  # a later run in this process starts afresh
