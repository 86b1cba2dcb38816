"""The seed's operations as functions with the context first, as in Lean.

``register_variable(ctx, name, value)`` is ``ctx.register_variable(name, value)``, and so
on for every definition of ``NN.Runtime.Context``. Each function checks that its first
argument is a context (a clear ``TypeError``, not an ``AttributeError``), then calls the
method; the docstrings say the same as the methods'.

Reading map: :func:`empty_context`, :func:`register_variable`, :func:`get_variable`,
:func:`set_variable`, :func:`register_gradient`, :func:`get_gradient`,
:func:`set_gradient`, :func:`clear_gradients`, :func:`has_variable`,
:func:`variable_names`, :func:`gradient_names`, :func:`context_size`,
:func:`gradient_count`, :func:`is_valid_context`, :func:`context_to_string`.
"""

from __future__ import annotations

from typing import Any

from torchlean.runtime.any_tensor import ArrayT
from torchlean.runtime.context import RuntimeContext, require_context
from torchlean.spec.shape import ShapeLike

__all__ = [
    "clear_gradients",
    "context_size",
    "context_to_string",
    "empty_context",
    "get_gradient",
    "get_variable",
    "gradient_count",
    "gradient_names",
    "has_variable",
    "is_valid_context",
    "register_gradient",
    "register_variable",
    "set_gradient",
    "set_variable",
    "variable_names",
]


def empty_context(*, dtype: object = None) -> RuntimeContext[Any]:
    """An empty context. Mirrors ``Runtime.emptyContext``; ``dtype`` pins the element type."""
    return RuntimeContext.empty(dtype=dtype)


def register_variable(
    ctx: RuntimeContext[ArrayT], name: str, value: ArrayT
) -> RuntimeContext[ArrayT]:
    """Put ``(name, value)`` in front of the variables and add 1 to ``next_id``.

    Mirrors ``Runtime.registerVariable``. An older variable of the same name stays,
    shadowed. Cost: O(log n) (plus a copy of a numpy array).
    """
    if type(ctx) is not RuntimeContext:
        require_context(ctx, "register_variable")
    return ctx.register_variable(name, value)


def get_variable(ctx: RuntimeContext[ArrayT], name: str, shape: ShapeLike) -> ArrayT | None:
    """The first variable named ``name`` if its shape is ``shape``, else ``None``.

    Mirrors ``Runtime.getVariable``: an older, shadowed entry of that name is never
    returned, even when its shape matches. Cost: O(log n).
    """
    if type(ctx) is not RuntimeContext:
        require_context(ctx, "get_variable")
    return ctx.get_variable(name, shape)


def set_variable(ctx: RuntimeContext[ArrayT], name: str, value: ArrayT) -> RuntimeContext[ArrayT]:
    """Give every variable named ``name`` the value ``value`` (shadowed ones too).

    Mirrors ``Runtime.setVariable``: the order is kept, the shape may change, and
    nothing changes when the name is absent. Cost: O(log n).
    """
    if type(ctx) is not RuntimeContext:
        require_context(ctx, "set_variable")
    return ctx.set_variable(name, value)


def register_gradient(
    ctx: RuntimeContext[ArrayT], name: str, grad: ArrayT
) -> RuntimeContext[ArrayT]:
    """Put ``(name, grad)`` in front of the gradients; ``next_id`` is unchanged.

    Mirrors ``Runtime.registerGradient``. To add into an existing gradient, use
    :meth:`accumulate_gradient`. Cost: O(log n).
    """
    if type(ctx) is not RuntimeContext:
        require_context(ctx, "register_gradient")
    return ctx.register_gradient(name, grad)


def get_gradient(ctx: RuntimeContext[ArrayT], name: str, shape: ShapeLike) -> ArrayT | None:
    """The first gradient named ``name`` if its shape is ``shape``, else ``None``.

    Mirrors ``Runtime.getGradient``. Cost: O(log n).
    """
    if type(ctx) is not RuntimeContext:
        require_context(ctx, "get_gradient")
    return ctx.get_gradient(name, shape)


def set_gradient(ctx: RuntimeContext[ArrayT], name: str, grad: ArrayT) -> RuntimeContext[ArrayT]:
    """Give every gradient named ``name`` the value ``grad``. Mirrors
    ``Runtime.setGradient`` (nothing changes when the name is absent). Cost: O(log n).
    """
    if type(ctx) is not RuntimeContext:
        require_context(ctx, "set_gradient")
    return ctx.set_gradient(name, grad)


def clear_gradients(ctx: RuntimeContext[ArrayT]) -> RuntimeContext[ArrayT]:
    """Remove every gradient entry (PyTorch's ``optimizer.zero_grad()``). Mirrors
    ``Runtime.clearGradients``. Cost: O(1).
    """
    if type(ctx) is not RuntimeContext:
        require_context(ctx, "clear_gradients")
    return ctx.clear_gradients()


def has_variable(ctx: RuntimeContext[Any], name: str) -> bool:
    """True iff a variable named ``name`` exists. Mirrors ``Runtime.hasVariable``.

    Cost: O(log n).
    """
    if type(ctx) is not RuntimeContext:
        require_context(ctx, "has_variable")
    return ctx.has_variable(name)


def variable_names(ctx: RuntimeContext[Any]) -> list[str]:
    """Every variable's name, most recent first, shadowed entries included.

    Mirrors ``Runtime.variableNames``. Cost: O(n).
    """
    if type(ctx) is not RuntimeContext:
        require_context(ctx, "variable_names")
    return ctx.variable_names()


def gradient_names(ctx: RuntimeContext[Any]) -> list[str]:
    """Every gradient's name, most recent first. Mirrors ``Runtime.gradientNames``.

    Cost: O(n).
    """
    if type(ctx) is not RuntimeContext:
        require_context(ctx, "gradient_names")
    return ctx.gradient_names()


def context_size(ctx: RuntimeContext[Any]) -> int:
    """The number of variable entries (shadowed ones included). Mirrors
    ``Runtime.contextSize``.
    """
    if type(ctx) is not RuntimeContext:
        require_context(ctx, "context_size")
    return ctx.context_size()


def gradient_count(ctx: RuntimeContext[Any]) -> int:
    """The number of gradient entries. Mirrors ``Runtime.gradientCount``."""
    if type(ctx) is not RuntimeContext:
        require_context(ctx, "gradient_count")
    return ctx.gradient_count()


def is_valid_context(ctx: RuntimeContext[Any]) -> bool:
    """True iff every gradient's name is the name of some variable (names only).

    Mirrors ``Runtime.isValidContext``. Cost: O(m log n) for m gradient entries.
    """
    if type(ctx) is not RuntimeContext:
        require_context(ctx, "is_valid_context")
    return ctx.is_valid_context()


def context_to_string(ctx: RuntimeContext[Any]) -> str:
    """``Context(vars: [w: 3.000000, ...], grads: [...])``, the text Lean prints.

    Mirrors ``Runtime.contextToString`` (for debugging: it prints whole tensors); each
    scalar as Lean's ``toString`` prints it (see :mod:`torchlean.runtime.printing`).
    Cost: O(total elements).
    """
    if type(ctx) is not RuntimeContext:
        require_context(ctx, "context_to_string")
    return ctx.context_to_string()
