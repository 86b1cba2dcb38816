"""Bulk edits of a context's registries for the runtime layers (private).

Autograd and the optimizers replace many entries at once with values they made
themselves (requires-grad leaves, gradients, updated parameters). Going through
``register_variable`` would detach and re-check every value; these helpers build the
new registries directly, in one mutation of the persistent map.

Reading map:
- :func:`visible_heads` -- the most recent entry of each variable name, in registration order.
- :func:`replace_heads` -- a registry whose most recent entry of each given name is replaced
  (names that are absent are prepended).
- :func:`with_variables` / :func:`with_gradients` -- a context with those registries.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torchlean.runtime._registry import Registry, _entry, _prepend, fresh_entry
from torchlean.runtime.any_tensor import AnyTensor
from torchlean.runtime.context import RuntimeContext

__all__ = [
    "replace_heads",
    "visible_heads",
    "with_gradients",
    "with_variables",
    "wrap",
    "wrap_like",
]


def wrap(value: Any, like: AnyTensor[Any]) -> AnyTensor[Any]:
    """Wrap a fresh ``value`` of ``like``'s backend, recording its current version."""
    backend = like._backend
    return fresh_entry(backend.dims(value), value, backend)


def wrap_like(value: Any, like: AnyTensor[Any]) -> AnyTensor[Any]:
    """Like :func:`wrap` for a value known to have ``like``'s shape (no shape read)."""
    backend = like._backend
    return fresh_entry(like._dims, value, backend)


def visible_heads(registry: Registry) -> list[tuple[str, AnyTensor[Any]]]:
    """The most recent entry of each name, names in first-registered order. Cost: O(n)."""
    return list(registry.visible())


def replace_heads(registry: Registry, values: Iterable[tuple[str, AnyTensor[Any]]]) -> Registry:
    """Replace the most recent entry of each name; prepend the names that are absent.

    Cost: O(m log n) for m values.
    """
    order = registry.order
    added = 0
    with registry.map.mutate() as mutation:
        for name, at in values:
            node = mutation.get(name)
            if node is None:
                mutation[name] = _entry(at, 1, None, 1)
                order = _prepend(order, name)
                added += 1
            elif node.count == 1:
                mutation[name] = _entry(at, 1, node.rest, node.total)
            else:
                mutation[name] = _entry(at, 1, (node, node.count - 1, node.rest), node.total)
        mapping = mutation.finish()
    return Registry(mapping, order, registry.size + added)


def with_variables(
    ctx: RuntimeContext[Any], values: Iterable[tuple[str, AnyTensor[Any]]]
) -> RuntimeContext[Any]:
    """``ctx`` with the most recent variable of each given name replaced (no checks)."""
    return ctx._derive(replace_heads(ctx._v, values), ctx._g, ctx._next_id)


def with_gradients(
    ctx: RuntimeContext[Any], values: Iterable[tuple[str, AnyTensor[Any]]]
) -> RuntimeContext[Any]:
    """``ctx`` with the most recent gradient of each given name replaced or registered."""
    return ctx._derive(ctx._v, replace_heads(ctx._g, values), ctx._next_id)
