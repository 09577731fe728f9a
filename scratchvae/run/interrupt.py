"""Graceful Ctrl-C and SIGTERM: the first asks the loop to stop at the next step boundary
(it then saves a resumable checkpoint); a second exits at once. Checkpoint writes are atomic,
so an immediate exit never leaves a half-written file in place.
"""

import contextlib
import os
import signal
import sys


class StopRequest:
    """Truthy once SIGINT or SIGTERM arrived; installs its handlers only inside `with`.
    announce=False keeps it silent (the other ranks of an MPI job, where rank 0 speaks for all)."""

    def __init__(self, announce=True):
        self.announce = announce
        self.signal_name = None
        self.signum = None
        self._previous = {}

    def __bool__(self):
        return self.signal_name is not None

    @property
    def exit_code(self):
        """The shell's convention for death by a signal: 128 + its number (130 for Ctrl-C)."""
        return 128 + (self.signum or signal.SIGINT)

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.signal_name is not None:
            if self.announce:
                sys.stderr.write(f"\n{name} again: exiting now (the last saved checkpoint is intact)\n")
                sys.stderr.flush()
            os._exit(128 + signum)
        self.signal_name, self.signum = name, signum
        if self.announce:
            sys.stderr.write(f"\n{name}: finishing this step and saving a checkpoint "
                             f"(press Ctrl-C again to quit at once)\n")
            sys.stderr.flush()

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        return False


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Outside the training loop, SIGTERM unwinds like Ctrl-C (KeyboardInterrupt), so the `finally`
    blocks that remove half-built files (the image cache's temporary array) still run."""
    def handle(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
