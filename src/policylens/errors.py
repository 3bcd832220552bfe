"""Clear errors for unknown names (options, worlds, hooks...): name the closest valid ones."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def unknown_message(kind: str, name: str, valid: Iterable[str]) -> str:
    """One sentence naming an unknown ``name``, the closest valid names, and all of them."""
    valid = [str(v) for v in valid]
    close = difflib.get_close_matches(str(name), valid, n=3, cutoff=0.4)
    if not close:  # names sharing the last dotted part, e.g. "hook_out" in another block
        tail = str(name).rsplit(".", 1)[-1]
        close = [v for v in valid if v.rsplit(".", 1)[-1] == tail][:3]
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    shown = ", ".join(valid[:40]) + (" ..." if len(valid) > 40 else "")
    return f"Unknown {kind} {name!r}.{hint} Available: {shown}."


def check_known(given: Iterable[str], valid: Iterable[str], kind: str) -> None:
    """Raise ValueError for the first of ``given`` not in ``valid``, suggesting close names."""
    valid = list(valid)
    for key in given:
        if key not in valid:
            raise ValueError(unknown_message(kind, key, valid))
