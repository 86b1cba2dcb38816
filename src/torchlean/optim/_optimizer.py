"""The optimizers: ``init(ctx) -> state`` and ``step(ctx, state) -> (ctx', state')``.

Reading map:
- :class:`Optimizer` -- ``init``, ``step`` (validates, then dispatches per array library).
- :func:`sgd`, :func:`adam`, :func:`adamw` -- constructors with ``torch.optim``'s defaults.
- :class:`Hyper` -- the hyperparameters (frozen, hashable: a static argument of ``jax.jit``).
- ``_torch_update`` -- torch's fused kernels (``torch._fused_adam(w)_``, ``torch._fused_sgd_``).
- ``_array_update`` -- the same formulas on numpy or ``jax.numpy`` (jitted once for jax).

The state is a :class:`RuntimeContext` whose variables are ``count`` (steps taken, for
schedules) and, per parameter ``p``, ``step/p`` (float32, torch's per-parameter counter)
and the moments: ``momentum_buffer/p`` (SGD with momentum), ``exp_avg/p``,
``exp_avg_sq/p`` and ``max_exp_avg_sq/p`` (Adam, AdamW, amsgrad). It saves and loads
with :mod:`torchlean.io` like any context.

Donation (``step(..., donate=True)``, the default): the step takes the buffers of ``ctx``
and ``state`` over and updates them in place, as torch.optim does; both contexts are
donated (any later use raises :class:`~torchlean.errors.DonatedContextError`) and any
other context sharing a buffer (the context gradients were computed from) detects the
write and raises :class:`~torchlean.errors.InPlaceModificationError` when read.
``donate=False`` updates copies and leaves every context as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from torchlean.errors import (
    BackendError,
    DTypeMismatchError,
    ShapeMismatchError,
    TorchLeanError,
    UnknownNameError,
)
from torchlean.runtime.any_tensor import AnyTensor
from torchlean.runtime.context import RuntimeContext, require_context
from torchlean.runtime.context import donate as donate_context

__all__ = ["Hyper", "Optimizer", "adam", "adamw", "sgd"]

Kind = Literal["sgd", "adam", "adamw"]
LR = float | Callable[[Any], Any]
_FLOAT_KINDS = ("float", "bfloat")


@dataclass(frozen=True)
class Hyper:
    """An optimizer's hyperparameters, named as in ``torch.optim``."""

    kind: Kind
    lr: LR
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    amsgrad: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("sgd", "adam", "adamw"):
            raise ValueError(f"optimizer kind must be sgd, adam or adamw, got {self.kind!r}")

    @property
    def slots(self) -> tuple[str, ...]:
        """The per-parameter moment slots the state holds, besides ``step``."""
        if self.kind == "sgd":
            return ("momentum_buffer",) if self.momentum != 0 else ()
        return (
            ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
            if self.amsgrad
            else (
                "exp_avg",
                "exp_avg_sq",
            )
        )


class Optimizer:
    """A functional optimizer over contexts: :meth:`init` and :meth:`step`."""

    def __init__(self, hyper: Hyper) -> None:
        if not isinstance(hyper, Hyper):
            raise TypeError(
                f"Optimizer expects a Hyper (use sgd, adam or adamw), got {type(hyper).__name__}"
            )
        self.hyper = hyper
        self._jitted: dict[bool, Any] = {}
        # the state's entry names of each parameter name: ("step/p", "exp_avg/p", ...)
        self._keys: dict[str, tuple[str, ...]] = {}

    def __repr__(self) -> str:
        h = self.hyper
        lr = h.lr if not callable(h.lr) else getattr(h.lr, "__name__", "schedule")
        if h.kind == "sgd":
            extra = (
                f"momentum={h.momentum}, dampening={h.dampening}, nesterov={h.nesterov}, "
                f"weight_decay={h.weight_decay}"
            )
        else:
            extra = (
                f"betas=({h.beta1}, {h.beta2}), eps={h.eps}, weight_decay={h.weight_decay}, "
                f"amsgrad={h.amsgrad}"
            )
        return f"{h.kind}(lr={lr}, {extra})"

    def lr_at(self, count: Any) -> Any:
        """The learning rate of the step that follows ``count`` steps."""
        lr = self.hyper.lr
        return lr(count) if callable(lr) else lr

    # ------------------------------------------------------------------ init

    def init(self, ctx: RuntimeContext[Any]) -> RuntimeContext[Any]:
        """A fresh state for every floating-point variable of ``ctx`` (its most recent entry).

        Moments are zeros shaped like their variable, on its device and of its array
        library; ``step/p`` is a float32 zero; ``count`` is an integer zero. Lean
        counterpart: none. Cost: O(total elements) to allocate the moments.
        """
        require_context(ctx, "optimizer init")
        items: list[tuple[str, Any]] = []
        count: Any = None
        for name, at in ctx.latest_variables():
            if not at.dtype.startswith(_FLOAT_KINDS):
                continue
            t = at.t
            zeros, scalar = _zeros_like(at.backend, t)
            if count is None:
                count = _count_zero(at.backend, t)
            items.append((f"step/{name}", scalar))
            items.extend((f"{slot}/{name}", zeros()) for slot in self.hyper.slots)
        if count is None:
            import numpy as np

            count = np.zeros((), np.int64)
        return RuntimeContext.empty().register_variables([("count", count), *items])

    # ------------------------------------------------------------------ step

    def step(
        self, ctx: RuntimeContext[Any], state: RuntimeContext[Any], *, donate: bool = True
    ) -> tuple[RuntimeContext[Any], RuntimeContext[Any]]:
        """Update every variable of ``ctx`` that has a gradient; return the new context
        and the new state.

        Reads the most recent gradient of each name; a gradient whose shape, dtype or
        array library differs from its variable's, one without a variable, or one
        without optimizer state is an error raised before anything is updated (every
        problem in one message). The gradients stay in the new context (call
        ``clear_gradients`` or use :func:`torchlean.autograd.value_and_grad`, which
        replaces them). ``donate=True`` (default) updates the buffers in place and
        donates ``ctx`` and ``state``; ``donate=False`` leaves both as they were.
        Lean counterpart: none. Cost: O(total elements) in one fused kernel per
        (device, dtype) on torch, one jitted call on jax.
        """
        require_context(ctx, "optimizer step")
        require_context(state, "optimizer step", "state")
        if not isinstance(donate, bool):
            raise TypeError(f"optimizer step: donate must be a bool, got {donate!r}")
        if ctx is state:
            raise TorchLeanError("optimizer step: ctx and state must be different contexts")
        h = self.hyper
        names, params, grads, slots, steps = self._gather(ctx, state)
        count_at = state.variable_entry("count")
        if count_at is None:
            raise UnknownNameError(
                "optimizer step: the state has no `count`; build it with init(ctx)"
            )
        count = count_at.t
        backend = params[0].backend if params else count_at.backend
        mixed = {p.backend: n for n, p in zip(names, params, strict=True)}
        if len(mixed) > 1:
            where = ", ".join(f"{b} (e.g. `{n}`)" for b, n in mixed.items())
            raise BackendError(
                f"optimizer step: the variables with gradients mix array libraries: {where};"
                " nothing was updated"
            )
        if backend == "torch":
            if donate:
                _refuse_aliases(names, params)
            lr = self.lr_at(int(count.item())) if callable(h.lr) else h.lr
            new_p, new_s, new_steps, new_count = _torch_update(
                h,
                float(lr),
                [a.t for a in params],
                [a.t for a in grads],
                {k: [a.t for a in v] for k, v in slots.items()},
                [a.t for a in steps],
                count,
                donate,
            )
        elif backend == "jax":
            fn = self._jitted.get(donate)
            if fn is None:
                fn = self._jitted[donate] = _jit_array_update(h, donate)
            new_p, new_s, new_steps, new_count = fn(
                [a.t for a in params],
                [a.t for a in grads],
                {k: [a.t for a in v] for k, v in slots.items()},
                [a.t for a in steps],
                count,
            )
        else:
            import numpy as np

            new_p, new_s, new_steps, new_count = _array_update(
                np,
                h,
                [a.t for a in params],
                [a.t for a in grads],
                {k: [a.t for a in v] for k, v in slots.items()},
                [a.t for a in steps],
                count,
            )
            new_p = [_readonly(x) for x in new_p]
            new_s = {k: [_readonly(x) for x in v] for k, v in new_s.items()}
            new_steps = [_readonly(x) for x in new_steps]
            new_count = _readonly(new_count)
        new_ctx = ctx.with_variables(list(zip(names, new_p, strict=True)), adopt=True)
        keys = self._keys
        updated: list[tuple[str, Any]] = [("count", new_count)]
        updated += [(keys[n][0], s) for n, s in zip(names, new_steps, strict=True)]
        for slot, values in new_s.items():
            i = h.slots.index(slot) + 1
            updated += [(keys[n][i], x) for n, x in zip(names, values, strict=True)]
        new_state = state.with_variables(updated, adopt=True)
        if donate:
            donate_context(ctx, to=f"{h.kind}.step")
            donate_context(state, to=f"{h.kind}.step")
        return new_ctx, new_state

    def _gather(
        self, ctx: RuntimeContext[Any], state: RuntimeContext[Any]
    ) -> tuple[
        list[str],
        list[AnyTensor[Any]],
        list[AnyTensor[Any]],
        dict[str, list[AnyTensor[Any]]],
        list[AnyTensor[Any]],
    ]:
        """Pair each gradient with its variable and state; collect every problem first."""
        problems: list[tuple[type[TorchLeanError], str]] = []
        names: list[str] = []
        params: list[AnyTensor[Any]] = []
        grads: list[AnyTensor[Any]] = []
        slots: dict[str, list[AnyTensor[Any]]] = {k: [] for k in self.hyper.slots}
        steps: list[AnyTensor[Any]] = []
        for name, g in ctx.latest_gradients():
            p = ctx.variable_entry(name)
            if p is None:
                problems.append(
                    (UnknownNameError, f"gradient `{name}` has no variable of that name")
                )
                continue
            if g.dims != p.dims:
                problems.append(
                    (
                        ShapeMismatchError,
                        f"gradient `{name}` has shape {g.dims} but variable `{name}`"
                        f" has shape {p.dims}",
                    )
                )
                continue
            same_dtype = g.dtype == p.dtype
            if g.library is not p.library or not same_dtype:
                problems.append(
                    (
                        DTypeMismatchError,
                        f"gradient `{name}` is {g.backend} {g.dtype} but variable `{name}`"
                        f" is {p.backend} {p.dtype}",
                    )
                )
                continue
            keys = self._keys.get(name)
            if keys is None:
                keys = self._keys[name] = tuple(
                    f"{slot}/{name}" for slot in ("step", *self.hyper.slots)
                )
            step = state.variable_entry(keys[0])
            entries = [state.variable_entry(key) for key in keys[1:]]
            if step is None or any(e is None for e in entries):
                problems.append(
                    (
                        UnknownNameError,
                        f"variable `{name}` has no optimizer state; build the state with"
                        " init(ctx) from a context that has this variable",
                    )
                )
                continue
            bad = [e for e in entries if e is not None and e.dims != p.dims]
            if bad:
                problems.append(
                    (
                        ShapeMismatchError,
                        f"optimizer state of `{name}` has shape {bad[0].dims} but variable"
                        f" `{name}` has shape {p.dims}",
                    )
                )
                continue
            names.append(name)
            params.append(p)
            grads.append(g)
            steps.append(step)
            for slot, e in zip(self.hyper.slots, entries, strict=True):
                assert e is not None
                slots[slot].append(e)
        if problems:
            kind = problems[0][0]
            if len(problems) == 1:
                text = problems[0][1]
            else:
                text = f"{len(problems)} problems:\n" + "\n".join(f"- {m}" for _, m in problems)
            raise kind(f"optimizer step: {text}; nothing was updated")
        return names, params, grads, slots, steps


# ---------------------------------------------------------------------- constructors


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _number(value: object, name: str) -> None:
    """A hyperparameter must be a real number (not a bool, not a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")


def _check_lr(lr: LR) -> None:
    if not callable(lr):
        _number(lr, "lr")
        _check(lr >= 0.0, f"invalid learning rate: {lr!r}")


def sgd(
    lr: LR = 1e-3,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
) -> Optimizer:
    """Stochastic gradient descent, as ``torch.optim.SGD`` (same arguments and defaults)."""
    _check_lr(lr)
    for value, name in ((momentum, "momentum"), (dampening, "dampening")):
        _number(value, name)
    _number(weight_decay, "weight_decay")
    _check(momentum >= 0.0, f"invalid momentum value: {momentum}")
    _check(weight_decay >= 0.0, f"invalid weight_decay value: {weight_decay}")
    _check(
        not nesterov or (momentum > 0 and dampening == 0),
        "nesterov momentum requires a momentum and zero dampening",
    )
    return Optimizer(
        Hyper("sgd", lr, momentum, dampening, nesterov, weight_decay, 0.0, 0.0, 0.0, False)
    )


def _adam_checks(lr: LR, betas: tuple[float, float], eps: float, weight_decay: float) -> None:
    _check_lr(lr)
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"betas must be a pair of numbers (beta1, beta2), got {betas!r}")
    _number(betas[0], "betas[0]")
    _number(betas[1], "betas[1]")
    _number(eps, "eps")
    _number(weight_decay, "weight_decay")
    _check(eps >= 0.0, f"invalid epsilon value: {eps}")
    _check(0.0 <= betas[0] < 1.0, f"invalid beta parameter at index 0: {betas[0]}")
    _check(0.0 <= betas[1] < 1.0, f"invalid beta parameter at index 1: {betas[1]}")
    _check(weight_decay >= 0.0, f"invalid weight_decay value: {weight_decay}")


def adam(
    lr: LR = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
) -> Optimizer:
    """Adam, as ``torch.optim.Adam`` (L2 weight decay added to the gradient)."""
    _adam_checks(lr, betas, eps, weight_decay)
    return Optimizer(
        Hyper("adam", lr, 0.0, 0.0, False, weight_decay, betas[0], betas[1], eps, amsgrad)
    )


def adamw(
    lr: LR = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    amsgrad: bool = False,
) -> Optimizer:
    """AdamW, as ``torch.optim.AdamW`` (decoupled weight decay, default 1e-2)."""
    _adam_checks(lr, betas, eps, weight_decay)
    return Optimizer(
        Hyper("adamw", lr, 0.0, 0.0, False, weight_decay, betas[0], betas[1], eps, amsgrad)
    )


# ---------------------------------------------------------------------- backends


def _zeros_like(backend: str, t: Any) -> tuple[Callable[[], Any], Any]:
    if backend == "torch":
        import torch

        return (lambda: torch.zeros_like(t)), torch.zeros((), dtype=torch.float32, device=t.device)
    if backend == "jax":
        import jax.numpy as jnp

        return (lambda: jnp.zeros_like(t)), jnp.zeros((), jnp.float32)
    import numpy as np

    return (lambda: np.zeros_like(t)), np.zeros((), np.float32)


def _count_zero(backend: str, t: Any) -> Any:
    if backend == "torch":
        import torch

        return torch.zeros((), dtype=torch.int64, device=t.device)
    if backend == "jax":
        import jax.numpy as jnp

        return jnp.zeros((), jnp.int32)
    import numpy as np

    return np.zeros((), np.int64)


def _refuse_aliases(names: list[str], params: list[AnyTensor[Any]]) -> None:
    """Refuse to update one buffer twice in place (a tensor registered under two names)."""
    seen: dict[int, str] = {}
    for name, at in zip(names, params, strict=True):
        t = at.unchecked
        if t.numel() == 0:
            continue
        key = t.untyped_storage().data_ptr()
        other = seen.setdefault(key, name)
        if other is not name:
            raise TorchLeanError(
                f"optimizer step: variables `{other}` and `{name}` share one buffer, which an"
                " in-place step would update twice; register a copy (tensor.clone()) or"
                " pass donate=False; nothing was updated"
            )


def _readonly(x: Any) -> Any:
    import numpy as np

    from torchlean.runtime.backends import NUMPY

    return NUMPY.adopt(np.asarray(x))


def _torch_update(
    h: Hyper,
    lr: float,
    params: list[Any],
    grads: list[Any],
    slots: dict[str, list[Any]],
    steps: list[Any],
    count: Any,
    donate: bool,
) -> tuple[list[Any], dict[str, list[Any]], list[Any], Any]:
    import torch

    if donate:
        count.add_(1)
    else:
        params = [p.clone() for p in params]
        slots = {k: [t.clone() for t in v] for k, v in slots.items()}
        steps = [s.clone() for s in steps]
        count = count + 1
    grads = [g if g.is_contiguous() else g.contiguous() for g in grads]
    groups: dict[tuple[Any, Any], list[int]] = {}
    for i, p in enumerate(params):
        groups.setdefault((p.device, p.dtype), []).append(i)
    with torch.no_grad():
        for indices in groups.values():

            def pick(xs: list[Any], ix: list[int] = indices) -> list[Any]:
                return xs if len(ix) == len(xs) else [xs[i] for i in ix]

            g_steps = pick(steps)
            torch._foreach_add_(g_steps, 1)
            if h.kind == "sgd":
                _torch_sgd(h, lr, pick(params), pick(grads), slots, g_steps, pick)
                continue
            fused = torch._fused_adamw_ if h.kind == "adamw" else torch._fused_adam_
            fused(
                pick(params),
                pick(grads),
                pick(slots["exp_avg"]),
                pick(slots["exp_avg_sq"]),
                pick(slots["max_exp_avg_sq"]) if h.amsgrad else [],
                g_steps,
                lr=lr,
                beta1=h.beta1,
                beta2=h.beta2,
                weight_decay=h.weight_decay,
                eps=h.eps,
                amsgrad=h.amsgrad,
                maximize=False,
            )
    # The fused kernels write through data pointers without bumping version counters;
    # bump them so every other context that shares a buffer sees the write.
    torch._C._increment_version(params)
    for values in slots.values():
        torch._C._increment_version(values)
    return params, slots, steps, count


def _torch_sgd(
    h: Hyper,
    lr: float,
    params: list[Any],
    grads: list[Any],
    slots: dict[str, list[Any]],
    steps: list[Any],
    pick: Callable[[list[Any]], list[Any]],
) -> None:
    import torch

    def run(ix: list[int], first: bool) -> None:
        bufs = [] if h.momentum == 0 else [pick(slots["momentum_buffer"])[i] for i in ix]
        torch._fused_sgd_(
            [params[i] for i in ix],
            [grads[i] for i in ix],
            bufs,
            weight_decay=h.weight_decay,
            momentum=h.momentum,
            lr=lr,
            dampening=h.dampening,
            nesterov=h.nesterov,
            maximize=False,
            is_first_step=first,
        )

    everyone = list(range(len(params)))
    if h.momentum == 0:
        run(everyone, False)
        return
    # torch.optim.SGD starts a parameter's momentum buffer at its first gradient.
    firsts = torch.stack(steps).eq(1).tolist()
    for first in (True, False):
        ix = [i for i in everyone if firsts[i] is first]
        if ix:
            run(ix, first)


def _array_update(
    xp: Any,
    h: Hyper,
    params: list[Any],
    grads: list[Any],
    slots: dict[str, list[Any]],
    steps: list[Any],
    count: Any,
) -> tuple[list[Any], dict[str, list[Any]], list[Any], Any]:
    """The torch.optim formulas on numpy or jax.numpy arrays, out of place."""
    lr_value = h.lr(count) if callable(h.lr) else h.lr
    new_p: list[Any] = []
    new_s: dict[str, list[Any]] = {k: [] for k in slots}
    new_steps: list[Any] = []
    for i, (p, g) in enumerate(zip(params, grads, strict=True)):
        t = steps[i] + 1
        new_steps.append(t)
        lr = xp.asarray(lr_value, dtype=p.dtype)
        if h.kind == "sgd":
            if h.weight_decay != 0:
                g = g + h.weight_decay * p
            if h.momentum != 0:
                buf = slots["momentum_buffer"][i]
                buf = xp.where(t == 1, g, h.momentum * buf + (1 - h.dampening) * g)
                new_s["momentum_buffer"].append(buf)
                g = g + h.momentum * buf if h.nesterov else buf
            new_p.append(p - lr * g)
            continue
        if h.kind == "adamw":
            p = p * (1 - lr * h.weight_decay)
        elif h.weight_decay != 0:
            g = g + h.weight_decay * p
        m = slots["exp_avg"][i]
        m = m + (g - m) * (1 - h.beta1)
        v = slots["exp_avg_sq"][i] * h.beta2 + (1 - h.beta2) * g * g
        new_s["exp_avg"].append(m)
        new_s["exp_avg_sq"].append(v)
        bc1 = 1 - xp.asarray(h.beta1, p.dtype) ** t.astype(p.dtype)
        bc2 = 1 - xp.asarray(h.beta2, p.dtype) ** t.astype(p.dtype)
        if h.amsgrad:
            v = xp.maximum(slots["max_exp_avg_sq"][i], v)
            new_s["max_exp_avg_sq"].append(v)
        denom = xp.sqrt(v) / xp.sqrt(bc2) + h.eps
        new_p.append(p - (lr / bc1) * (m / denom))
    return new_p, new_s, new_steps, count + 1


def _jit_array_update(h: Hyper, donate: bool) -> Any:
    import jax
    import jax.numpy as jnp

    def update(
        params: list[Any],
        grads: list[Any],
        slots: dict[str, list[Any]],
        steps: list[Any],
        count: Any,
    ) -> Any:
        return _array_update(jnp, h, params, grads, slots, steps, count)

    return jax.jit(update, donate_argnums=(0, 2, 3, 4) if donate else ())
