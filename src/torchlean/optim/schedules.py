"""Learning-rate schedules: callables from the step count (0 for the first step) to a rate.

Every optimizer of :mod:`torchlean.optim` accepts ``lr`` as a number or as one of these
(or any callable ``step -> float``). They work on Python ints and, for use under
``jax.jit``, on traced jax integers.

Reading map:
- :func:`constant` -- the same rate at every step.
- :func:`linear_warmup` -- from ``init`` to ``peak`` over ``warmup_steps``, then ``after``.
- :func:`cosine_decay` -- from ``peak`` to ``final`` along half a cosine over ``decay_steps``.
- :func:`warmup_cosine` -- linear warm-up followed by cosine decay (the GPT recipe).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torchlean.runtime.backends import NUMPY, backend_of

__all__ = ["Schedule", "constant", "cosine_decay", "linear_warmup", "warmup_cosine"]

Schedule = Callable[[Any], Any]


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float))


def _xp(x: Any) -> Any:
    """The array namespace of ``x`` (``jax.numpy`` for a traced count; numpy otherwise)."""
    try:
        backend = backend_of(x)
    except TypeError:
        backend = NUMPY
    return backend.array_namespace()


def _minimum(x: Any, bound: float) -> Any:
    return min(x, bound) if _is_number(x) else _xp(x).minimum(x, bound)


def _where(condition: Any, a: Any, b: Any) -> Any:
    if _is_number(condition) or isinstance(condition, bool):
        return a if condition else b
    return _xp(condition).where(condition, a, b)


def _cos(x: Any) -> Any:
    return math.cos(x) if _is_number(x) else _xp(x).cos(x)


def _check_steps(what: str, steps: int) -> None:
    if not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"{what} must be a positive int, got {steps!r}")


def constant(value: float) -> Schedule:
    """``step -> value``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"constant: value must be a number, got {type(value).__name__} {value!r}")

    def schedule(step: Any) -> Any:
        return value

    return schedule


def linear_warmup(
    peak: float, warmup_steps: int, *, init: float = 0.0, after: Schedule | None = None
) -> Schedule:
    """``init + (peak - init) * step / warmup_steps`` for ``step < warmup_steps``; then
    ``after(step - warmup_steps)``, or ``peak`` when ``after`` is None."""
    _check_steps("warmup_steps", warmup_steps)

    def schedule(step: Any) -> Any:
        warm = init + (peak - init) * _minimum(step, warmup_steps) / warmup_steps
        rest = peak if after is None else after(step - warmup_steps)
        return _where(step < warmup_steps, warm, rest)

    return schedule


def cosine_decay(peak: float, decay_steps: int, *, final: float = 0.0) -> Schedule:
    """``final + (peak - final) * (1 + cos(pi * min(step, decay_steps) / decay_steps)) / 2``."""
    _check_steps("decay_steps", decay_steps)

    def schedule(step: Any) -> Any:
        progress = _minimum(step, decay_steps) / decay_steps
        return final + (peak - final) * 0.5 * (1.0 + _cos(math.pi * progress))

    return schedule


def warmup_cosine(
    peak: float, warmup_steps: int, total_steps: int, *, init: float = 0.0, final: float = 0.0
) -> Schedule:
    """Linear warm-up from ``init`` to ``peak``, then cosine decay to ``final`` at
    ``total_steps``."""
    if total_steps <= warmup_steps:
        raise ValueError(
            f"total_steps ({total_steps}) must be larger than warmup_steps ({warmup_steps})"
        )
    return linear_warmup(
        peak,
        warmup_steps,
        init=init,
        after=cosine_decay(peak, total_steps - warmup_steps, final=final),
    )
