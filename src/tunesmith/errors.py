"""Errors a user can cause. The CLI turns these into one clear message and exit code 1 (or 2)."""


class UserError(Exception):
    """A problem the user can fix (bad path, bad row, bad option).

    The message must say where (file, line, key) and what to do. The CLI prints it without a
    traceback and exits with `exit_code`.
    """

    exit_code = 1


class UsageError(UserError):
    """Bad command-line usage or recipe key (exit code 2)."""

    exit_code = 2


class DataError(UserError):
    """Unusable training data under `on_error: fail`."""


class DiskFullError(UserError):
    """The disk (or quota) filled up while writing; the message says how much was needed and what is free."""
