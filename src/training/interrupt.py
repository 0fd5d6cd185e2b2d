"""SIGTERM and SIGINT while training: finish the step, save a resumable checkpoint, exit with a true line.

A cluster scheduler sends SIGTERM before it preempts a job; Ctrl-C sends SIGINT. Once the training
loop runs, the first of either only sets a flag, which the trainer reads after each optimizer step:
it then saves last.pth mid-epoch (the resume is exact mid-epoch) and raises `Interrupted`. Before
the loop (loading data, building the model), or at a second signal, there is nothing worth
waiting for: the handler raises KeyboardInterrupt at once, as Python does by default, so `finally`
blocks (the output folder's lock) still run. Exit codes follow the shell's 128 + signal number:
130 for SIGINT, 143 for SIGTERM.
"""

import signal
import threading
from pathlib import Path

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """Training stopped by a signal. `exit_code` is 128 + the signal; the message names the saved
    checkpoint, or says that nothing was saved."""

    def __init__(self, signum: int, saved: Path | None = None, step: int | None = None):
        self.signum = signum
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        if saved is None:
            message = f"interrupted by {name} before anything was saved: no checkpoint written by this run"
        else:
            message = f"interrupted by {name}: step {step} saved in {saved}; continue with --resume {saved}"
        super().__init__(message)


class StopSignals:
    """Context manager that turns SIGINT/SIGTERM into a flag while `deferring` is True.

    Installs its handler only in the main thread (Python allows no other); elsewhere it is inert.
    """

    def __init__(self):
        self.signum: int | None = None
        self.deferring = False  # True while the training loop can stop cleanly at the next step
        self._previous = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
        if not (self.deferring and first):
            raise KeyboardInterrupt
