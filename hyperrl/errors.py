"""One exception type for every user-facing error.

The command-line entry points catch :class:`HyperrlError`, print its message as one
line (``error: ...``) and exit with status 2, so bad input never shows a traceback.
"""

from __future__ import annotations


def one_line(text: object, limit: int | None = None) -> str:
    """``text`` with its lines joined by spaces (an error message is one line), cut to ``limit``."""
    s = " ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return s if limit is None or len(s) <= limit else s[: limit - 3] + "..."


class HyperrlError(Exception):
    """A user-facing error: bad family, parameter value, config key, run dir or checkpoint."""


class FamilyError(HyperrlError):
    """An unknown family, a malformed family YAML, or a parameter value outside its bounds."""
