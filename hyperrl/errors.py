"""One exception type for every user-facing error.

The command-line entry points catch :class:`HyperrlError`, print its message as one
line (``error: ...``) and exit with status 2, so bad input never shows a traceback.
"""

from __future__ import annotations


class HyperrlError(Exception):
    """A user-facing error: bad family, parameter value, config key, run dir or checkpoint."""


class FamilyError(HyperrlError):
    """An unknown family, a malformed family YAML, or a parameter value outside its bounds."""
