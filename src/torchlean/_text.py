"""Small text helpers the messages and views share: one home for each.

Reading map:
- :func:`short_repr` -- ``repr(x)`` cut to a length an error message can quote.
- :func:`did_you_mean` -- the "did you mean `a` or `b`?" hint for a misspelt name.
- :func:`format_bytes` -- a byte count for people: ``512 B``, ``1.5 KiB``, ``3.2 GiB``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["did_you_mean", "format_bytes", "short_repr"]


def short_repr(x: object, limit: int = 60) -> str:
    """``repr(x)``, cut to ``limit`` characters (the last three being ``...``)."""
    text = repr(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def did_you_mean(
    name: str, candidates: Iterable[str], *, n: int = 3, cutoff: float = 0.6
) -> str | None:
    """The hint ``did you mean `a` or `b`?`` for ``name``, or ``None`` when no candidate
    is close.

    The close candidates are :func:`difflib.get_close_matches`' (at most ``n``, similarity
    at least ``cutoff``); when it finds none, the candidates that differ from ``name``
    only by a ``module.``-style prefix (``w`` and ``fc.w``), the commonest near miss.
    Cost: O(len(candidates) * len(name)).
    """
    names = list(candidates)
    close = difflib.get_close_matches(name, names, n=n, cutoff=cutoff)
    if not close:
        close = [c for c in names if c.endswith("." + name) or name.endswith("." + c)][:n]
    if not close:
        return None
    return "did you mean " + " or ".join(f"`{c}`" for c in close) + "?"


def format_bytes(n: int) -> str:
    """``512 B``, ``1.5 KiB``, ``3.2 GiB``: binary units, one decimal, up to TiB."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
