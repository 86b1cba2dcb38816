"""Small text helpers shared by every layer's messages and views (private).

One home for three things messages need: a value shown shortly, a "did you mean" for
a misspelt name, and a byte count a person can read.

Reading map:
- :func:`short_repr` -- ``repr(x)``, cut to ``limit`` characters with ``...``.
- :func:`did_you_mean` -- the candidates closest to a name (difflib), nearest first.
- :func:`format_bytes` -- ``512 B``, ``1.5 KiB``, ``3.2 GiB``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["did_you_mean", "format_bytes", "short_repr"]


def short_repr(x: object, limit: int = 60) -> str:
    """``repr(x)``, or its first ``limit - 3`` characters followed by ``...`` when it is
    longer than ``limit``. Cost: O(len(repr(x)))."""
    text = repr(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def did_you_mean(
    name: str, candidates: Iterable[str], *, n: int = 3, cutoff: float = 0.6
) -> list[str]:
    """At most ``n`` of ``candidates`` close to ``name`` (difflib's ratio at least
    ``cutoff``), nearest first; ``[]`` when none is close. Cost: O(len(candidates))
    comparisons."""
    return difflib.get_close_matches(name, list(candidates), n=n, cutoff=cutoff)


def format_bytes(n: int | None) -> str:
    """``512 B``, ``1.5 KiB``, ``3.2 GiB`` (binary units up to TiB); ``?`` for None."""
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
