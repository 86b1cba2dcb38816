"""What a context knows about its variables besides their values: buffers and aliases.

A *buffer* is state that is not a parameter (BatchNorm's running statistics, a step
counter): it never gets a gradient and no optimizer touches it. An *alias* is a second
name of a variable (a tied weight: GPT-2's ``lm_head.weight`` is ``transformer.wte.weight``):
the context holds the tensor once, under its canonical name, and knows the alias.

Both are names, not entries: they survive every operation (``with_variables``,
``set_variable``, a pytree flatten/unflatten, pickle, save and load in the torchlean
layout) because the context carries one :class:`Roles` record and every derived context
shares it.

Reading map:
- :class:`Roles` -- the record: ``buffers`` (a frozenset of names) and ``aliases``
  (``(alias, canonical)`` pairs, sorted); hashable (part of a pytree's static layout).
- :func:`marked` -- ``roles`` with more (or fewer) buffers, by name or glob pattern.
- :func:`tied` -- ``roles`` with one more alias.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

__all__ = ["Roles", "marked", "tied"]


class Roles(NamedTuple):
    """The buffers and aliases of a context (names only)."""

    buffers: frozenset[str] = frozenset()
    #: ``(alias, canonical)`` pairs, sorted by alias.
    aliases: tuple[tuple[str, str], ...] = ()
    #: the structure of the pytree the context was read from (``from_pytree``), or None;
    #: kept in memory only (not saved to files)
    tree: Any = None

    @property
    def alias_map(self) -> dict[str, str]:
        """``{alias: canonical}``."""
        return dict(self.aliases)

    def to_json(self) -> dict[str, Any]:
        """``{"buffers": [...], "aliases": [[alias, canonical], ...]}`` (sorted)."""
        return {"buffers": sorted(self.buffers), "aliases": [list(p) for p in self.aliases]}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Roles:
        """The inverse of :meth:`to_json` (the fields may be absent)."""
        buffers = frozenset(str(n) for n in raw.get("buffers", ()))
        aliases = tuple(sorted((str(a), str(c)) for a, c in raw.get("aliases", ())))
        return cls(buffers, aliases)


def marked(
    roles: Roles | None, names: Iterable[str], patterns: Iterable[str], *, buffers: bool
) -> Roles | None:
    """``roles`` with every name of ``names`` that matches one of ``patterns`` (names or
    ``fnmatch`` globs) marked as a buffer (``buffers=True``) or as a parameter again."""
    pats = tuple(patterns)
    hits = {n for n in names if any(fnmatch.fnmatchcase(n, p) for p in pats)}
    base = roles or Roles()
    new = base.buffers | hits if buffers else base.buffers - hits
    out = base._replace(buffers=frozenset(new))
    return None if out == Roles() else out


def tied(roles: Roles | None, alias: str, canonical: str) -> Roles:
    """``roles`` with ``alias`` naming ``canonical`` (replacing an older alias of that name)."""
    base = roles or Roles()
    table = base.alias_map
    table[alias] = canonical
    return base._replace(aliases=tuple(sorted(table.items())))
