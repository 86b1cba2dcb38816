"""How a context prints as text: ``Runtime.contextToString`` and ``Spec.pretty``.

Reading map:
- :func:`context_to_string` -- ``Context(vars: [...], grads: [...])``, every value in full.
- :func:`pretty_tensor` -- one tensor, nested as ``Spec.pretty`` nests it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from torchlean.runtime.backends import read_checked
from torchlean.runtime.dtypes import render_array

if TYPE_CHECKING:
    from torchlean.runtime.any_tensor import AnyTensor
    from torchlean.runtime.context import RuntimeContext

__all__ = ["context_to_string", "pretty_tensor"]


def context_to_string(ctx: RuntimeContext[Any]) -> str:
    """``Context(vars: [w: 3.0, ...], grads: [...])``. Mirrors ``Runtime.contextToString``.

    Cost: O(total elements).
    """
    vars_text = ", ".join(
        f"{n}: {pretty_tensor(at, f'variable `{n}`')}" for n, at in ctx.var_registry
    )
    grads_text = ", ".join(
        f"{n}: {pretty_tensor(at, f'gradient `{n}`')}" for n, at in ctx.gradients
    )
    return f"Context(vars: [{vars_text}], grads: [{grads_text}])"


def pretty_tensor(at: AnyTensor[Any], what: str) -> str:
    """The values of ``at``, nested per dimension as ``[a, b]``; ``what`` names the
    entry if it was written in place. Cost: O(size)."""
    t = read_checked(at, what)
    backend = at.library
    array = backend.data(t)
    if array is None:  # a meta tensor, a tracer, an opaque pytree leaf
        return backend.stand_in(t)
    array = render_array(array)

    def go(a: np.ndarray[Any, Any]) -> str:
        if a.ndim == 0:
            return str(a[()])
        return "[" + ", ".join(go(a[i]) for i in range(a.shape[0])) + "]"

    return go(array)
