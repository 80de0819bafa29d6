"""The one error type users see.

Every mistake a user can make (a malformed space, an impossible architecture, a table for other hardware, a missing
study) raises :class:`HilonasError` with one line naming the field, the bad value and the fix. The CLI prints that line
and exits with status 2; anything else escaping is a bug in hilonas.
"""
from __future__ import annotations


class HilonasError(ValueError):
    """A user-facing error: ``str(err)`` is one line naming the field, the value and the fix."""


class ConfigError(HilonasError):
    """An architecture config or a search space that cannot be built."""
