"""Errors that mean "the user asked for something we cannot do".

The CLI prints a `UserError` as one clear line and exits with status 2; anything else is a bug
and keeps its traceback.
"""


class UserError(ValueError):
    """A mistake in the user's input (a path, a flag, a file): shown without a traceback.

    A `ValueError`, so that `except ValueError` around a call catches a bad argument whether
    ldmkit or a library under it refused it."""
