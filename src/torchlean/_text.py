"""Small text helpers shared by every layer's messages and views (private).

One home for the things messages need: a value shown shortly, a "did you mean" for
a misspelt name, a byte count a person can read, and text from a file made safe to
print on a terminal.

Reading map:
- :func:`short_repr` -- ``repr(x)``, cut to ``limit`` characters with ``...``.
- :func:`did_you_mean` -- the candidates closest to a name (difflib), nearest first.
- :func:`format_bytes` -- ``512 B``, ``1.5 KiB``, ``3.2 GiB``.
- :func:`printable` -- control characters (ESC, BEL, ...) escaped visibly (``\\x1b``).
- :func:`unmatched_patterns` -- the globs that match none of some names, as message text.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Iterable

__all__ = ["did_you_mean", "format_bytes", "printable", "short_repr", "unmatched_patterns"]


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


# C0 controls (TAB and newline too: a name is one line), DEL, C1 controls, and the
# characters that reorder or hide text on a terminal (bidi overrides and isolates,
# zero-width marks, line and paragraph separators), plus lone surrogates.
_UNPRINTABLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff\ud800-\udfff]"
)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with every character that would act on a terminal instead of showing
    (ESC, BEL, other control characters, bidi overrides, lone surrogates) written as a
    visible escape (``\\x1b`` for ESC, ``\\u202e`` for a right-to-left override). Text
    without them comes
    back as it is. Names read from a file go through this before they reach a
    terminal. Cost: O(len(text))."""
    return _UNPRINTABLE.sub(_escape, text) if _UNPRINTABLE.search(text) else text


def unmatched_patterns(patterns: Iterable[str], names: Iterable[str]) -> str | None:
    """The patterns (names or :func:`fnmatch.fnmatchcase` globs) that match none of
    ``names``, as the start of a message (``"`a*` matches"``, ``"`a`, `b` match"``), or
    ``None`` when each matches some name. Cost: O(patterns x names)."""
    pool = list(names)
    unused = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in pool)]
    if not unused:
        return None
    listed = ", ".join(f"`{p}`" for p in unused)
    return f"{listed} match{'es' if len(unused) == 1 else ''}"
