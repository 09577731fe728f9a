"""Errors that are the user's to fix: the CLI prints their one-line message and exits with 2."""


class UserError(Exception):
    """Bad input or environment; str() is one line naming the problem and what to do."""


class TrainingDiverged(Exception):
    """A non-finite loss or gradient; the message names the epoch, the step and the likely cause."""


def run_command(run, args, errors=()):
    """The exit code of a command's `run(args)`: a UserError (or one of `errors`) is printed as one
    line on stderr and gives 2, Ctrl-C gives 130 with a line saying nothing was written; the
    commands write through atomic files, so an interrupted one leaves nothing half-made."""
    import sys
    try:
        return run(args)
    except (UserError, *errors) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; nothing was written", file=sys.stderr)
        return 130
