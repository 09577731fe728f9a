"""Errors that are the user's to fix: the CLI prints their one-line message and exits with 2."""


class UserError(Exception):
    """Bad input or environment; str() is one line naming the problem and what to do."""


class TrainingDiverged(Exception):
    """A non-finite loss or gradient; the message names the epoch, the step and the likely cause."""
