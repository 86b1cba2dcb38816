"""Nested parameter trees in and out of a context: haiku/linen dicts, flax nnx ``State``,
equinox modules, any jax pytree.

``from_pytree(tree)`` registers every array leaf under the dotted form of its key path
(``{"dense": {"kernel": w}}`` -> ``dense.kernel``; list items by index; attributes by
name); ``to_pytree(ctx)`` puts the variables back in that structure. The structure (the
jax treedef and every non-array leaf: an equinox module's activation function, an int)
is kept in the context's roles, so it survives every operation that keeps roles; a
context that lost it (read from a file) rebuilds nested dicts from the dotted names.

Reading map:
- :func:`from_pytree` -- a context of a tree's array leaves.
- :func:`to_pytree` -- the tree back (``like=`` another tree of that structure).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from torchlean.errors import TorchLeanError
from torchlean.runtime.context import RuntimeContext, require_context, with_roles

__all__ = ["TreeShape", "from_pytree", "to_pytree"]


class TreeShape(NamedTuple):
    """A tree's structure: its treedef, and per leaf its variable name (arrays) or the
    leaf itself (anything else)."""

    treedef: Any
    leaves: tuple[tuple[bool, Any], ...]

    def __hash__(self) -> int:
        return hash(self.treedef)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, TreeShape)
            and self.treedef == other.treedef
            and all(
                a[0] == b[0] and (a[1] == b[1] if a[0] else a[1] is b[1])
                for a, b in zip(self.leaves, other.leaves, strict=True)
            )
        )


def _is_array(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, type)


def _flatten(tree: Any, where: str) -> tuple[list[tuple[Any, Any]], Any]:
    """``jax.tree_util.tree_flatten_with_path(tree)``, its refusal made a clear error."""
    import jax.tree_util as jtu

    try:
        return jtu.tree_flatten_with_path(tree)
    except (TypeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise TorchLeanError(
            f"{where}: jax cannot flatten this tree ({first}); a dict's keys must be"
            " sortable (all strings, or all ints), as jax.tree_util requires"
        ) from e


def from_pytree(tree: Any, *, dtype: object = None) -> RuntimeContext[Any]:
    """A context with one variable per array leaf of ``tree`` (a jax pytree), named by
    its key path with dots (``encoder.layers.0.kernel``), in the tree's leaf order.

    Non-array leaves (an equinox module's functions, ints, ``None`` is no leaf) are kept
    with the structure for :func:`to_pytree`. Cost: O(n log n) for n leaves.
    """
    import jax.tree_util as jtu

    pairs, treedef = _flatten(tree, "from_pytree")
    items: list[tuple[str, Any]] = []
    leaves: list[tuple[bool, Any]] = []
    first: dict[str, Any] = {}
    for path, leaf in pairs:
        if _is_array(leaf):
            name = jtu.keystr(path, simple=True, separator=".")
            if name in first:
                raise TorchLeanError(
                    f"from_pytree: the leaves at {jtu.keystr(first[name])} and"
                    f" {jtu.keystr(path)} both have the dotted name `{name}`; rename one"
                    " of the keys (a key with a dot in it reads as a nested path)"
                )
            first[name] = path
            items.append((name, leaf))
            leaves.append((True, name))
        else:
            leaves.append((False, leaf))
    ctx = RuntimeContext.empty(dtype=dtype).register_variables(items)
    return with_roles(ctx, tree=TreeShape(treedef, tuple(leaves)))


def to_pytree(ctx: RuntimeContext[Any], like: Any = None) -> Any:
    """The variables of ``ctx`` in the structure :func:`from_pytree` read (or that of
    ``like``, a tree whose array leaves have the context's dotted names); without either,
    nested dicts split at the dots. Cost: O(n)."""
    require_context(ctx, "to_pytree")
    import jax.tree_util as jtu

    values = ctx.state_dict()
    shape = ctx.tree_shape() if like is None else None
    if like is not None:
        pairs, treedef = _flatten(like, "to_pytree")
        out = []
        for path, leaf in pairs:
            if _is_array(leaf):
                name = jtu.keystr(path, simple=True, separator=".")
                if name not in values:
                    raise TorchLeanError(
                        f"to_pytree: the tree `like` has leaf {jtu.keystr(path)} (variable"
                        f" `{name}`), which the context lacks"
                    )
                out.append(values[name])
            else:
                out.append(leaf)
        return jtu.tree_unflatten(treedef, out)
    if isinstance(shape, TreeShape):
        missing = [n for is_array, n in shape.leaves if is_array and n not in values]
        if missing:
            raise TorchLeanError(
                f"to_pytree: the tree has leaf `{missing[0]}`, which the context lacks"
            )
        out = [values[n] if is_array else n for is_array, n in shape.leaves]
        return jtu.tree_unflatten(shape.treedef, out)
    nested: dict[str, Any] = {}
    for name, value in values.items():
        node = nested
        *parents, last = name.split(".")
        for depth, part in enumerate(parents):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise _split_clash(".".join(parents[: depth + 1]), name)
            node = child
        if last in node:
            raise _split_clash(name, next(n for n in values if n.startswith(name + ".")))
        node[last] = value
    return nested


def _split_clash(leaf: str, deeper: str) -> TorchLeanError:
    return TorchLeanError(
        f"to_pytree: the context has variables `{leaf}` and `{deeper}`, so `{leaf}` would be"
        " both an array and a dict of nested dicts split at the dots; pass like= a tree"
        " with this structure, or rename one"
    )
