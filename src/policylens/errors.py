"""Clear errors for unknown names (options, worlds, hooks...): name the closest valid ones."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def check_known(given: Iterable[str], valid: Iterable[str], kind: str) -> None:
    """Raise ValueError for the first of ``given`` not in ``valid``, suggesting close names."""
    valid = list(valid)
    for key in given:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"Unknown {kind} {key!r}.{hint} Valid: {', '.join(valid)}.")
