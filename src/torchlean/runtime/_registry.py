"""A persistent registry with the exact semantics of a Lean association list.

TorchLean keeps each registry as ``List (String × AnyTensor α)``: new entries go in
front, a lookup takes the first entry of a name, an update rewrites every entry of a
name in place in the list. Walking a list costs O(n) per operation; this module keeps
the same observable list in a form where every operation the runtime needs costs
O(log n), and where a new registry shares almost all of its structure with the old one.

Representation (all of it immutable once published):
- ``order``: the names of all entries, most recent first, as a cons list of chunks
  ``(names, older)`` ending in ``None``, where ``names`` is a tuple of at most
  :data:`CHUNK` names. Prepending copies at most one chunk and shares the rest; a chunk
  holds only strings, so Python's cycle collector stops tracking it, which keeps
  collections cheap in registries of millions of entries.
- ``map``: an :class:`immutables.Map` (a C hash array mapped trie) from each name to an
  :class:`Entry`: the first entry's tensor (an ``AnyTensor``) that also carries the values
  of the name's older entries, run-length encoded: the entry's own value repeated
  ``count`` times, then ``rest`` runs ``(value, count, older)``. A lookup reads the entry
  itself; "set every entry of a name" collapses the runs into one, so it is O(log n)
  whatever the number k of entries of that name.
- ``size``: the number of entries.

The i-th entry of the Lean list is the i-th name of ``order`` paired with the next unused
value in that name's runs; :meth:`Registry.entries` walks both in O(n).

Reading map:
- :class:`~torchlean.runtime.any_tensor.Entry` -- the ``AnyTensor`` stored for a name,
  with its runs (built in :mod:`torchlean.runtime.any_tensor`).
- :class:`Registry` -- ``push``, ``push_many``, ``head``, ``set_all``, ``replace_heads``,
  ``entries``, ``names``, ``visible``, ``size``; :data:`EMPTY`.
- :class:`DonatedRegistry` -- stands in for the registries of a donated context.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Final

import immutables

from torchlean.runtime.any_tensor import AnyTensor, Entry, restamp

__all__ = ["CHUNK", "EMPTY", "DonatedRegistry", "Registry"]

#: The names of all entries, most recent first, in chunks: ``(names, older)`` or ``None``.
Order = tuple[tuple[str, ...], "Order"] | None

#: The most names one chunk of ``order`` holds.
CHUNK: Final = 32

_new = object.__new__


def _prepend(order: Order, name: str) -> Order:
    if order is not None and len(order[0]) < CHUNK:
        return ((name, *order[0]), order[1])
    return ((name,), order)


class Registry:
    """An immutable registry of ``(name, AnyTensor)`` entries, most recent first."""

    __slots__ = ("map", "order", "size")

    def __init__(self, mapping: immutables.Map[str, Entry], order: Order, size: int) -> None:
        self.map = mapping
        self.order = order
        self.size = size

    def push(self, name: str, value: AnyTensor[Any]) -> Registry:
        """Prepend an entry (Lean's ``(name, value) :: registry``). Cost: O(log n)."""
        node = self.map.get(name)
        if node is None:
            new = restamp(value, 1, None, 1)
        else:
            new = restamp(value, 1, (node, node.count, node.rest), node.total + 1)
        return Registry(self.map.set(name, new), _prepend(self.order, name), self.size + 1)

    def push_many(self, items: Iterable[tuple[str, AnyTensor[Any]]]) -> Registry:
        """Prepend entries in order (the last item ends up in front). Cost: O(m log n)."""
        order = self.order
        size = self.size
        with self.map.mutate() as mutation:
            for name, value in items:
                node = mutation.get(name)
                if node is None:
                    mutation[name] = restamp(value, 1, None, 1)
                else:
                    mutation[name] = restamp(
                        value, 1, (node, node.count, node.rest), node.total + 1
                    )
                order = _prepend(order, name)
                size += 1
            mapping = mutation.finish()
        return Registry(mapping, order, size)

    def head(self, name: str) -> Entry | None:
        """The first entry named ``name``, or ``None``. Cost: O(log n)."""
        return self.map.get(name)

    def set_all(self, name: str, value: AnyTensor[Any]) -> Registry:
        """Give every entry named ``name`` the value ``value``, keeping the order.

        Returns ``self`` when the name is absent (Lean's list map changes nothing).
        Cost: O(log n), whatever the number of entries of that name.
        """
        node = self.map.get(name)
        if node is None:
            return self
        new = restamp(value, node.total, None, node.total)
        registry: Registry = _new(Registry)
        registry.map = self.map.set(name, new)
        registry.order = self.order
        registry.size = self.size
        return registry

    def replace_heads(self, values: Iterable[tuple[str, AnyTensor[Any]]]) -> Registry:
        """Give the first entry of each name its new value; prepend absent names.

        Older entries of a name keep their values. Cost: O(m log n) for m values.
        """
        order = self.order
        added = 0
        with self.map.mutate() as mutation:
            for name, at in values:
                node = mutation.get(name)
                if node is None:
                    mutation[name] = restamp(at, 1, None, 1)
                    order = _prepend(order, name)
                    added += 1
                elif node.count == 1:
                    mutation[name] = restamp(at, 1, node.rest, node.total)
                else:
                    mutation[name] = restamp(at, 1, (node, node.count - 1, node.rest), node.total)
            mapping = mutation.finish()
        return Registry(mapping, order, self.size + added)

    def names(self) -> Iterator[str]:
        """Every entry's name, most recent first (duplicates included). Cost: O(n)."""
        order = self.order
        while order is not None:
            chunk, order = order
            yield from chunk

    def entries(self) -> Iterator[tuple[str, AnyTensor[Any]]]:
        """Every entry as ``(name, value)``, most recent first. Cost: O(n)."""
        cursors: dict[str, list[Any]] = {}
        mapping = self.map
        for name in self.names():
            cursor = cursors.get(name)
            if cursor is None:
                node = mapping[name]
                if node.total == 1:
                    yield name, node
                    continue
                cursor = cursors[name] = [node, node.count, node.rest]
            yield name, cursor[0]
            cursor[1] -= 1
            if cursor[1] == 0 and cursor[2] is not None:
                cursor[0], cursor[1], cursor[2] = cursor[2]

    def visible(self) -> Iterator[tuple[str, Entry]]:
        """The first entry of each name, names in the order they first appeared.

        Cost: O(n).
        """
        names = list(self.names())
        names.reverse()
        mapping = self.map
        for name in dict.fromkeys(names):
            yield name, mapping[name]

    def __len__(self) -> int:
        return self.size


EMPTY: Final = Registry(immutables.Map(), None, 0)


class DonatedRegistry:
    """Stands in for the registries of a context that was donated (handed over).

    Any use of it raises :class:`~torchlean.errors.DonatedContextError`. Swapping a
    donated context's registries for this object costs nothing on the hot paths of
    contexts that were never donated.
    """

    __slots__ = ("_why",)

    def __init__(self, why: str) -> None:
        self._why = why

    def __getattr__(self, attribute: str) -> Any:
        from torchlean.errors import DonatedContextError

        raise DonatedContextError(self._why)
