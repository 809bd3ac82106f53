"""Exceptions that mean "the input is wrong" (as opposed to a bug in ebmcompose).

Library checks raise :class:`InputError` (a ``ValueError``) with a message that names the
problem and the fix; the CLI reports these as one paragraph and exit status 2, and lets any
other exception through as a bug with its traceback.
"""

__all__ = ["InputError", "InputTypeError", "DetachedEnergyError"]


class InputError(ValueError):
    """An argument, a file or a configuration the user gave is invalid; the message says how to fix it."""


class InputTypeError(InputError, TypeError):
    """An argument has the wrong type (also a ``TypeError``, as Python's own type checks raise)."""


class DetachedEnergyError(InputError):
    """An energy changes with ``x`` but autograd cannot see it, so its gradient would be a silent zero.

    Raised when the output of an energy does not require grad although ``x`` does and the
    energy is not constant in ``x``: it was computed outside autograd (``.detach()``,
    ``.numpy()``/``.item()``, ``torch.no_grad()``, another library).
    """
