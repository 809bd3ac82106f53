"""Errors of the command line that are the user's to fix (reported without a traceback).

:func:`ebmcompose.cli.main` reports :class:`UsageError` (and the library's
:class:`ebmcompose.InputError`) as one paragraph with exit status 2; every other exception is a
bug and keeps its traceback (exit status 1).
"""

from __future__ import annotations

__all__ = ["UsageError", "ParserError", "OutputError"]


class UsageError(Exception):
    """A mistake in the command line or its inputs; the message says what to do instead."""


class ParserError(UsageError):
    """A bad option or value found by argparse; ``prog`` names the (sub)command."""

    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog = prog


class OutputError(UsageError):
    """``--out`` cannot hold this command's outputs (a file, an unwritable or impossible path)."""
