"""Graceful Ctrl-C and SIGTERM: the first asks the loop to stop at the next step boundary
(it then saves a resumable checkpoint); a second exits at once. Checkpoint writes are atomic,
so an immediate exit never leaves a half-written file in place.
"""

import os
import signal
import sys


class StopRequest:
    def __init__(self):
        self.signal_name = None
        self._previous = {}

    def __bool__(self):
        return self.signal_name is not None

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.signal_name is not None:
            sys.stderr.write(f"\n{name} again: exiting now (the last saved checkpoint is intact)\n")
            sys.stderr.flush()
            os._exit(130)
        self.signal_name = name
        sys.stderr.write(f"\n{name}: finishing this step and saving a checkpoint (press Ctrl-C again to quit now)\n")
        sys.stderr.flush()

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False
