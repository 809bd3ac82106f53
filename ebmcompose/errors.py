"""Exceptions that mean "the input is wrong" (as opposed to a bug in ebmcompose).

Library checks raise :class:`InputError` (a ``ValueError``) with a message that names the
problem and the fix; the CLI reports these as one paragraph and exit status 2, and lets any
other exception through as a bug with its traceback.
"""

__all__ = ["InputError", "InputTypeError"]


class InputError(ValueError):
    """An argument, a file or a configuration the user gave is invalid; the message says how to fix it."""


class InputTypeError(InputError, TypeError):
    """An argument has the wrong type (also a ``TypeError``, as Python's own type checks raise)."""
