"""Errors that stop the process because of something the operator must fix."""

from __future__ import annotations


class SetupError(RuntimeError):
    """A mistake in the set-up (a rejected token, a file that cannot be opened): the CLI shows
    its message as one line and exits 1, never a traceback. The message says what to fix and
    never holds a secret."""
