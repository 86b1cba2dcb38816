"""Global-norm gradient clipping over a context: :func:`clip_gradients`.

Reading map:
- :func:`clip_gradients` -- ``torch.nn.utils.clip_grad_norm_`` for the gradients of a
  context; the arithmetic is the array library's
  (:meth:`~torchlean.runtime.backends.Backend.clip_by_global_norm`).

``fit(clip=)`` calls it before every step; an optimizer's ``clip=`` option applies the
same scaling to the gradients it reads (the context keeps them as they were).
"""

from __future__ import annotations

from typing import Any

from torchlean.errors import BackendError
from torchlean.runtime.context import RuntimeContext, require_context

__all__ = ["clip_gradients"]


def clip_gradients(ctx: RuntimeContext[Any], max_norm: float) -> tuple[RuntimeContext[Any], Any]:
    """``(ctx', norm)``: ``ctx`` with its gradients (the most recent of each name) scaled
    so that their global 2-norm is at most ``max_norm``, and that norm before clipping.

    The numbers of ``torch.nn.utils.clip_grad_norm_`` (factor
    ``max_norm / (norm + 1e-6)``, clamped at 1, applied even when it is 1). The
    variables are unchanged. Lean counterpart: none. Cost: O(total gradient elements).
    """
    require_context(ctx, "clip_gradients")
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)) or max_norm <= 0:
        raise ValueError(f"clip_gradients: max_norm must be a number > 0, got {max_norm!r}")
    entries = ctx.latest_gradients()
    if not entries:
        return ctx, 0.0
    libraries = {at.library for _, at in entries}
    if len(libraries) > 1:
        raise BackendError(
            "clip_gradients: the gradients mix array libraries "
            f"({', '.join(sorted(lib.name for lib in libraries))}); clip one library's at a time"
        )
    (library,) = libraries
    clipped, norm = library.clip_by_global_norm([at.t for _, at in entries], float(max_norm))
    names = [name for name, _ in entries]
    return ctx.with_gradients(list(zip(names, clipped, strict=True)), adopt=True), norm
