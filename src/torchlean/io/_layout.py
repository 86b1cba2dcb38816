"""The torchlean key layout shared by the safetensors and ``.npz`` formats (private).

A context is stored as a flat mapping of keys to tensors plus a small JSON object, the
*layout*. The most recent variable of each name is stored under its own name (so any
reader sees a usable ``state_dict``); every other entry under the reserved prefix
:data:`PREFIX`: ``__torchlean__/v/<i>`` for a shadowed variable entry at list position
``i``, ``__torchlean__/g/<j>`` for the gradient entry at position ``j``. Entries that
hold one and the same tensor share one key. The layout object holds ``version``,
``next_id``, ``dtype`` (the pinned dtype or null) and both registries as ``[name, key]``
pairs, most recent first (docs/io.md shows one); and, only when the context has them,
``buffers`` (names) and ``aliases`` (``[alias, name]`` pairs of tied weights): optional
fields of version 1, which older readers ignore.

Reading map:
- :func:`plan` -- a context as keys to tensors and the registries' ``[name, key]`` pairs.
- :func:`layout_object` -- the layout JSON object of a planned context.
- :func:`check_layout` -- a layout read back, checked against the file's keys.
- :func:`apply_roles` -- the buffers and aliases of a layout, on the context read.
- :data:`PREFIX`, :data:`LAYOUT_VERSION`.
"""

from __future__ import annotations

import json
import reprlib
from collections.abc import Callable, Iterator
from typing import Any, Final

from torchlean.errors import BackendError, FormatError, ShapeMismatchError, TorchLeanError
from torchlean.io._common import numpy_dtype
from torchlean.runtime.context import RuntimeContext, with_roles

__all__ = [
    "LAYOUT_VERSION",
    "PREFIX",
    "apply_roles",
    "check_layout",
    "layout_object",
    "plan",
    "template_entries",
]

PREFIX: Final = "__torchlean__/"
LAYOUT_VERSION: Final = 1


def plan(ctx: RuntimeContext[Any]) -> tuple[dict[str, Any], list[list[str]], list[list[str]]]:
    """Assign a key to each entry: key -> tensor, and both registries as ``[name, key]``
    pairs (Lean's list order). One tensor shared by several entries gets one key.
    Cost: O(n)."""
    keys: dict[int, str] = {}
    tensors: dict[str, Any] = {}
    variables: list[list[str]] = []
    gradients: list[list[str]] = []
    entries = ctx.var_registry
    seen: set[str] = set()
    # First pass: the visible entry of each name gets its own name as key.
    for name, at in entries:
        if name in seen:
            continue
        seen.add(name)
        if not name.startswith(PREFIX) and name != "__metadata__" and id(at) not in keys:
            keys[id(at)] = name
            tensors[name] = at
    for i, (name, at) in enumerate(entries):
        key = keys.get(id(at))
        if key is None:
            key = keys[id(at)] = f"{PREFIX}v/{i}"
            tensors[key] = at
        variables.append([name, key])
    for j, (name, at) in enumerate(ctx.gradients):
        key = keys.get(id(at))
        if key is None:
            key = keys[id(at)] = f"{PREFIX}g/{j}"
            tensors[key] = at
        gradients.append([name, key])
    return tensors, variables, gradients


def layout_object(
    ctx: RuntimeContext[Any], variables: list[list[str]], gradients: list[list[str]]
) -> dict[str, Any]:
    """The layout JSON object of ``ctx`` planned as ``variables`` and ``gradients``."""
    out: dict[str, Any] = {
        "version": LAYOUT_VERSION,
        "next_id": ctx.next_id,
        "dtype": ctx.dtype,
        "variables": variables,
        "gradients": gradients,
    }
    # optional fields: a reader that predates them ignores them, and a file without
    # them loads with no buffers and no aliases
    buffers = ctx.buffers()
    if buffers:
        out["buffers"] = buffers
    aliases = ctx.aliases()
    if aliases:
        out["aliases"] = [[a, c] for a, c in aliases.items()]
    return out


def apply_roles(
    where: str, ctx: RuntimeContext[Any], layout: dict[str, Any] | None
) -> RuntimeContext[Any]:
    """``ctx`` with the buffers and aliases a layout object names (none when it has
    neither field, as files written before them). A malformed field raises FormatError.
    Cost: O(b + a)."""
    if layout is None or ("buffers" not in layout and "aliases" not in layout):
        return ctx
    buffers = layout.get("buffers", [])
    if not isinstance(buffers, list) or not all(isinstance(n, str) for n in buffers):
        raise FormatError(f"{where}: the torchlean layout's `buffers` is not a list of names")
    aliases = layout.get("aliases", [])
    if not isinstance(aliases, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(n, str) for n in p) for p in aliases
    ):
        raise FormatError(
            f"{where}: the torchlean layout's `aliases` is not a list of [alias, name] pairs"
        )
    try:
        return with_roles(ctx, buffers=buffers, aliases={a: c for a, c in aliases})
    except (KeyError, ValueError) as e:
        raise FormatError(f"{where}: the torchlean layout's roles: {e}") from None


def check_layout(
    where: str, text: str | bytes, keys: list[str]
) -> tuple[list[tuple[str, str]], list[tuple[str, str]], int, str | None, dict[str, Any]]:
    """The layout JSON ``text`` checked against the file's tensor ``keys``: the
    registries as ``(name, key)`` pairs, ``next_id``, the pinned dtype, and the whole
    layout object. Anything wrong raises FormatError. Cost: O(len(text))."""
    try:
        layout = json.loads(text)
    except (ValueError, RecursionError) as e:
        why = "nested too deeply" if isinstance(e, RecursionError) else e
        raise FormatError(f"{where}: the torchlean metadata is not valid JSON: {why}") from None
    if not isinstance(layout, dict):
        raise FormatError(f"{where}: the torchlean metadata is not a JSON object")
    version = layout.get("version")
    if version != LAYOUT_VERSION or type(version) is not int:
        raise FormatError(
            f"{where}: torchlean layout version {version!r} is not supported"
            f" (this torchlean reads version {LAYOUT_VERSION})"
        )
    next_id = layout.get("next_id")
    if type(next_id) is not int or next_id < 0:
        raise FormatError(f"{where}: next_id must be a non-negative int, got {next_id!r}")
    pin = layout.get("dtype")
    if pin is not None:
        try:
            known_pin = isinstance(pin, str) and numpy_dtype(pin).name == pin
        except (TypeError, BackendError):
            known_pin = False
        if not known_pin:
            raise FormatError(
                f"{where}: the pinned dtype must be a dtype name or null, got {pin!r}"
            )
    known = set(keys)
    used: set[str] = set()

    def registry(field: str) -> list[tuple[str, str]]:
        items = layout.get(field)
        if not isinstance(items, list):
            raise FormatError(f"{where}: the torchlean metadata has no `{field}` list")
        out = []
        for i, item in enumerate(items):
            if (
                not isinstance(item, list)
                or len(item) != 2
                or not all(isinstance(s, str) for s in item)
            ):
                raise FormatError(
                    f"{where}: {field}[{i}] must be a [name, key] pair of strings,"
                    f" got {reprlib.repr(item)}"
                )
            name, key = item
            if key not in known:
                raise FormatError(
                    f"{where}: {field}[{i}] (`{name}`) refers to tensor `{key}`,"
                    " which is not in the file"
                )
            used.add(key)
            out.append((name, key))
        return out

    variables = registry("variables")
    gradients = registry("gradients")
    stray = [k for k in keys if k not in used]
    if stray:
        raise FormatError(
            f"{where}: the torchlean metadata does not mention tensor"
            f" {', '.join(f'`{k}`' for k in stray[:5])}"
        )
    return variables, gradients, next_id, pin, layout


def template_entries(
    where: str,
    like: RuntimeContext[Any],
    registries: tuple[list[tuple[str, str]], list[tuple[str, str]]],
    shape_of: Callable[[str], tuple[int, ...]],
) -> Iterator[tuple[str, str, str, Any]]:
    """For the folder formats' ``load(like=)``: ``(registry, name, key, template entry)``
    for each key of ``registries`` (variables, gradients; each key once), the entry of
    ``like`` of that name (a gradient's falls back to the variable's), its shape checked
    against ``shape_of(key)``. Every name ``like`` lacks is listed in one error, raised
    after the walk. Cost: O(entries log n)."""
    missing: list[str] = []
    seen: set[str] = set()
    for registry, pairs in zip(("variable", "gradient"), registries, strict=True):
        for name, key in pairs:
            if key in seen:
                continue
            seen.add(key)
            at = like.gradient_entry(name) if registry == "gradient" else None
            at = at or like.variable_entry(name)
            if at is None:
                missing.append(f"{registry} `{name}`")
                continue
            shape = shape_of(key)
            if at.dims != shape:
                raise ShapeMismatchError(
                    f"{where}: {registry} `{name}` has shape {shape} but the template's"
                    f" has shape {at.dims}"
                )
            yield registry, name, key, at
    if missing:
        raise TorchLeanError(
            f"{where}: the template has no entry for {', '.join(missing)}; give like= a"
            " context with every name the folder holds"
        )
