"""Exception types of vptq's public API."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from outside the program: a file or directory that is missing, corrupt or of the
    wrong kind, a text too short, a config name or value that does not exist or does not fit, a
    required asset that is not installed. The message names what was wrong and what was expected.

    A subclass of :class:`ValueError`, so ``except ValueError`` still catches it; the command line
    reports it in one line, whereas any other exception (a bug) keeps its traceback.
    """
