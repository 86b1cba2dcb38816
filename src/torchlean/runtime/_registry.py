"""A persistent registry with the exact semantics of a Lean association list.

TorchLean keeps each registry as ``List (String × AnyTensor α)``: new entries go in
front, a lookup takes the first entry of a name, an update rewrites every entry of a
name in place in the list. Walking a list costs O(n) per operation; this module keeps
the same observable list in a form where every operation the runtime needs costs
O(log n), and where a new registry shares almost all of its structure with the old one.

Representation (all of it immutable):
- ``order``: the names of all entries, most recent first, as a cons list
  ``(name, rest)`` ending in ``None``. Prepending is O(1) and shares the tail.
- ``map``: an :class:`immutables.Map` (a C hash array mapped trie) from each name to a
  :class:`_Name`: the values of that name's entries, most recent first, run-length
  encoded as ``head`` repeated ``count`` times followed by ``rest`` runs. A lookup reads
  ``head``; "set every entry of a name" collapses the runs into one, so it is O(log n)
  whatever the number k of entries of that name.
- ``size``: the number of entries.

The i-th entry of the Lean list is the i-th name of ``order`` paired with the next
unused value in that name's runs; :meth:`Registry.entries` walks both in O(n).

Reading map:
- :class:`Registry` -- ``push``, ``head``, ``set_all``, ``replace_head``, ``entries``,
  ``names``, ``size``, ``EMPTY``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

import immutables

from torchlean.runtime.any_tensor import AnyTensor

__all__ = ["EMPTY", "Name", "Registry", "Runs"]

#: Older runs of a name's values: ``(value, count, older)`` or ``None``.
Runs = tuple[AnyTensor[Any], int, "Runs"] | None
#: The names of all entries, most recent first: ``(name, older)`` or ``None``.
Order = tuple[str, "Order"] | None


class Name:
    """The values of every entry of one name, most recent first, run-length encoded."""

    __slots__ = ("count", "head", "rest", "total")

    def __init__(self, head: AnyTensor[Any], count: int, rest: Runs, total: int) -> None:
        self.head = head
        self.count = count
        self.rest = rest
        self.total = total

    def values(self) -> Iterator[AnyTensor[Any]]:
        """Every entry's value, most recent first. Cost: O(k)."""
        for _ in range(self.count):
            yield self.head
        runs = self.rest
        while runs is not None:
            value, count, runs = runs
            for _ in range(count):
                yield value


class Registry:
    """An immutable registry of ``(name, AnyTensor)`` entries, most recent first."""

    __slots__ = ("map", "order", "size")

    def __init__(self, mapping: immutables.Map[str, Name], order: Order, size: int) -> None:
        self.map = mapping
        self.order = order
        self.size = size

    def push(self, name: str, value: AnyTensor[Any]) -> Registry:
        """Prepend an entry (Lean's ``(name, value) :: registry``). Cost: O(log n)."""
        node = self.map.get(name)
        if node is None:
            new = Name(value, 1, None, 1)
        else:
            new = Name(value, 1, (node.head, node.count, node.rest), node.total + 1)
        return Registry(self.map.set(name, new), (name, self.order), self.size + 1)

    def push_many(self, items: list[tuple[str, AnyTensor[Any]]]) -> Registry:
        """Prepend entries in order (the last item ends up in front). Cost: O(m log n)."""
        order = self.order
        with self.map.mutate() as mutation:
            for name, value in items:
                node = mutation.get(name)
                if node is None:
                    mutation[name] = Name(value, 1, None, 1)
                else:
                    mutation[name] = Name(
                        value, 1, (node.head, node.count, node.rest), node.total + 1
                    )
                order = (name, order)
            mapping = mutation.finish()
        return Registry(mapping, order, self.size + len(items))

    def head(self, name: str) -> AnyTensor[Any] | None:
        """The value of the first entry named ``name``, or ``None``. Cost: O(log n)."""
        node = self.map.get(name)
        return None if node is None else node.head

    def set_all(self, name: str, value: AnyTensor[Any]) -> Registry:
        """Give every entry named ``name`` the value ``value``, keeping the order.

        Returns ``self`` when the name is absent (Lean's list map changes nothing).
        Cost: O(log n), whatever the number of entries of that name.
        """
        node = self.map.get(name)
        if node is None:
            return self
        new = Name(value, node.total, None, node.total)
        return Registry(self.map.set(name, new), self.order, self.size)

    def replace_head(self, name: str, value: AnyTensor[Any]) -> Registry:
        """Give only the first entry named ``name`` the value ``value``. Cost: O(log n)."""
        node = self.map.get(name)
        if node is None:
            return self.push(name, value)
        if node.count == 1:
            new = Name(value, 1, node.rest, node.total)
        else:
            new = Name(value, 1, (node.head, node.count - 1, node.rest), node.total)
        return Registry(self.map.set(name, new), self.order, self.size)

    def names(self) -> Iterator[str]:
        """Every entry's name, most recent first (duplicates included). Cost: O(n)."""
        order = self.order
        while order is not None:
            name, order = order
            yield name

    def entries(self) -> Iterator[tuple[str, AnyTensor[Any]]]:
        """Every entry as ``(name, value)``, most recent first. Cost: O(n)."""
        cursors: dict[str, list[Any]] = {}
        mapping = self.map
        order = self.order
        while order is not None:
            name, order = order
            cursor = cursors.get(name)
            if cursor is None:
                node = mapping[name]
                if node.total == 1:
                    yield name, node.head
                    continue
                cursor = cursors[name] = [node.head, node.count, node.rest]
            value = cursor[0]
            yield name, value
            cursor[1] -= 1
            if cursor[1] == 0 and cursor[2] is not None:
                cursor[0], cursor[1], cursor[2] = cursor[2]

    def visible(self) -> Iterator[tuple[str, AnyTensor[Any]]]:
        """The first entry of each name, names in the order they first appeared.

        Cost: O(n).
        """
        names = list(self.names())
        names.reverse()
        mapping = self.map
        for name in dict.fromkeys(names):
            yield name, mapping[name].head

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
