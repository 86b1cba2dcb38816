"""The update maths, once per optimizer, and the :class:`Rule` the backends run.

Each optimizer is two functions: its maths for one parameter over an array namespace
``xp`` (numpy or ``jax.numpy``: out of place, the formulas of ``torch.optim``), and its
in-place form with torch's fused kernels (``torch._fused_sgd_``, ``torch._fused_adam_``,
``torch._fused_adamw_``), which ``torch.optim`` itself runs. How each form runs on its
library (jitted, in place, donated) is the backend's business
(:meth:`~torchlean.runtime.backends.Backend.updater`).

Reading map:
- :func:`sgd_maths` / :func:`sgd_in_place` -- SGD with momentum, dampening, Nesterov.
- :func:`adam_maths` / :func:`adam_in_place` -- Adam and AdamW, with amsgrad.
- :func:`sgd_scalars` / :func:`adam_scalars` -- the per-parameter scalars (bias
  corrections), computed once per update over a vector of the step counters.
- :class:`Rule` -- a :class:`Hyper` with its maths (a backends ``UpdateRule``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from torchlean.optim._hyper import LR, Hyper, Kind
from torchlean.runtime.backends._update import Update, Updated

__all__ = [
    "Rule",
    "adam_in_place",
    "adam_maths",
    "adam_scalars",
    "sgd_in_place",
    "sgd_maths",
    "sgd_scalars",
]

#: ``maths(xp, hyper, lr, t, p, g, slots) -> (new p, new slots)`` for one parameter;
#: ``t`` is that parameter's item of what the optimizer's :data:`Scalars` gave.
Maths = Callable[[Any, Hyper, Any, Any, Any, Any, dict[str, Any]], tuple[Any, dict[str, Any]]]
#: ``scalars(xp, hyper, lr, t, dtype) -> per-parameter scalars`` of counters ``t`` (a
#: vector, one per parameter of ``dtype``): computed once per update, not per parameter,
#: so that a jitted update has no per-parameter scalar kernels.
Scalars = Callable[[Any, Hyper, Any, Any, Any], tuple[Any, ...]]
#: ``in_place(torch, hyper, lr, update)``: the fused kernels on one (device, dtype) group.
InPlace = Callable[[Any, Hyper, float, Update], None]


def sgd_maths(
    xp: Any, h: Hyper, lr: Any, t: Any, p: Any, g: Any, slots: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """One SGD step of parameter ``p`` (``t``: ``(its step number,)``), as
    ``torch.optim.SGD``."""
    if h.weight_decay != 0:
        g = g + h.weight_decay * p
    if h.momentum == 0:
        return p - lr * g, {}
    buf = slots["momentum_buffer"]
    # torch.optim.SGD starts a parameter's momentum buffer at its first gradient.
    buf = xp.where(t[0] == 1, g, h.momentum * buf + (1 - h.dampening) * g)
    g = g + h.momentum * buf if h.nesterov else buf
    return p - lr * g, {"momentum_buffer": buf}


def adam_maths(
    xp: Any, h: Hyper, lr: Any, t: Any, p: Any, g: Any, slots: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """One Adam (AdamW: decoupled weight decay) step, as ``torch.optim.Adam(W)``; ``t`` is
    ``(lr / bias correction 1, 1 / sqrt(bias correction 2))`` (:func:`adam_scalars`)."""
    if h.kind == "adamw":
        p = p * (1 - lr * h.weight_decay)
    elif h.weight_decay != 0:
        g = g + h.weight_decay * p
    m = slots["exp_avg"]
    m = m + (g - m) * (1 - h.beta1)
    v = slots["exp_avg_sq"] * h.beta2 + (1 - h.beta2) * g * g
    new = {"exp_avg": m, "exp_avg_sq": v}
    step_size, bc2_rsqrt = t
    if h.amsgrad:
        v = new["max_exp_avg_sq"] = xp.maximum(slots["max_exp_avg_sq"], v)
    # XLA turns torch's division by sqrt(bc2) into this product anyway
    denom = xp.sqrt(v) * bc2_rsqrt + h.eps
    return p - step_size * (m / denom), new


def sgd_scalars(xp: Any, h: Hyper, lr: Any, t: Any, dtype: Any) -> tuple[Any, ...]:
    """SGD's per-parameter scalar: the step number itself."""
    return (t,)


def adam_scalars(xp: Any, h: Hyper, lr: Any, t: Any, dtype: Any) -> tuple[Any, ...]:
    """Adam's per-parameter scalars in ``dtype``: torch's step size ``lr / (1 - beta1**t)``
    and ``1 / sqrt(1 - beta2**t)``."""
    t = t.astype(dtype)
    bc1 = 1 - xp.asarray(h.beta1, dtype) ** t
    bc2 = 1 - xp.asarray(h.beta2, dtype) ** t
    return lr / bc1, 1 / xp.sqrt(bc2)


def sgd_in_place(torch: Any, h: Hyper, lr: float, u: Update) -> None:
    """``torch._fused_sgd_`` on one group (first steps apart, as torch.optim.SGD).

    On the CPU, bfloat16 and float16 groups run the kernel on float32 copies, written
    back rounded (the kernel's own arithmetic, which computes in float32): torch's CPU
    kernel for those dtypes (torch 2.13) leaves every element of a parameter's leading
    multiple of 16 unchanged, so a parameter of 16 elements or more would not train
    (``torch.optim.SGD(fused=True)`` shows it; its default path does not run that kernel)."""
    if (
        u.params
        and u.params[0].device.type == "cpu"
        and u.params[0].dtype
        in (
            torch.float16,
            torch.bfloat16,
        )
    ):
        wide = Update(
            [p.float() for p in u.params],
            [g.float() for g in u.grads],
            {k: [x.float() for x in v] for k, v in u.slots.items()},
            u.steps,
            u.count,
        )
        sgd_in_place(torch, h, lr, wide)
        torch._foreach_copy_(u.params, wide.params)
        for k, values in u.slots.items():
            if values:
                torch._foreach_copy_(values, wide.slots[k])
        return

    def run(ix: list[int], first: bool) -> None:
        bufs = [] if h.momentum == 0 else [u.slots["momentum_buffer"][i] for i in ix]
        torch._fused_sgd_(
            [u.params[i] for i in ix],
            [u.grads[i] for i in ix],
            bufs,
            weight_decay=h.weight_decay,
            momentum=h.momentum,
            lr=lr,
            dampening=h.dampening,
            nesterov=h.nesterov,
            maximize=False,
            is_first_step=first,
        )

    everyone = list(range(len(u.params)))
    if h.momentum == 0:
        run(everyone, False)
        return
    # torch.optim.SGD starts a parameter's momentum buffer at its first gradient.
    firsts = torch.stack(u.steps).eq(1).tolist()
    for first in (True, False):
        ix = [i for i in everyone if firsts[i] is first]
        if ix:
            run(ix, first)


def adam_in_place(torch: Any, h: Hyper, lr: float, u: Update) -> None:
    """``torch._fused_adam_`` (``_fused_adamw_`` for AdamW) on one group."""
    fused = torch._fused_adamw_ if h.kind == "adamw" else torch._fused_adam_
    fused(
        u.params,
        u.grads,
        u.slots["exp_avg"],
        u.slots["exp_avg_sq"],
        u.slots["max_exp_avg_sq"] if h.amsgrad else [],
        u.steps,
        lr=lr,
        beta1=h.beta1,
        beta2=h.beta2,
        weight_decay=h.weight_decay,
        eps=h.eps,
        amsgrad=h.amsgrad,
        maximize=False,
    )


#: Each optimizer's two forms.
MATHS: Final[dict[Kind, tuple[Maths, InPlace, Scalars]]] = {
    "sgd": (sgd_maths, sgd_in_place, sgd_scalars),
    "adam": (adam_maths, adam_in_place, adam_scalars),
    "adamw": (adam_maths, adam_in_place, adam_scalars),
}


@dataclass(frozen=True)
class Rule:
    """An optimizer's hyperparameters with its maths: what a backend's ``updater`` runs."""

    hyper: Hyper

    @property
    def lr(self) -> LR:
        """The learning rate, or a schedule ``lr(count)``."""
        return self.hyper.lr

    def arrays(self, xp: Any, u: Update) -> Updated:
        """The update of every parameter with ``xp``, out of place; ``count`` + 1.

        The per-parameter scalars (bias corrections) are computed over one vector of the
        step counters per dtype, so a jitted update runs one small kernel for them, not
        three per parameter; with one shared counter (``u.steps`` of one array) they are
        computed once, and a jitted AdamW step compiles to the kernels of
        ``optax.adamw``."""
        h = self.hyper
        maths, _, scalars = MATHS[h.kind]
        lr_value = h.lr(u.count) if callable(h.lr) else h.lr
        # one counter shared by every parameter: its scalars once, no per-parameter ones
        shared = len(u.steps) == 1
        if shared:
            steps = [u.steps[0] + 1]
            counters = steps[0]
        else:
            steps = [s + 1 for s in u.steps]
            counters = xp.stack(u.steps) + 1 if steps else None
        # Each parameter's maths runs in float32 at least (bfloat16 and float16
        # parameters, gradients and moments are widened, and the results rounded once),
        # as torch's fused kernels compute: in bfloat16, 0.999 rounds to 1.0 (Adam's
        # 1 - beta2**t would be 0 and the parameter would never move) and AdamW's
        # p * (1 - lr * weight_decay) rounds back to p.
        wide = {p.dtype: xp.promote_types(p.dtype, xp.float32) for p in u.params}
        per_dtype: dict[Any, tuple[Any, ...]] = {}
        if steps:
            for dtype, w in wide.items():
                per_dtype[dtype] = scalars(xp, h, xp.asarray(lr_value, dtype=w), counters, w)
        params: list[Any] = []
        slots: dict[str, list[Any]] = {k: [] for k in u.slots}
        for i, (p, g) in enumerate(zip(u.params, u.grads, strict=True)):
            t = per_dtype[p.dtype] if shared else tuple(x[i] for x in per_dtype[p.dtype])
            w = wide[p.dtype]
            lr = xp.asarray(lr_value, dtype=w)
            old = {k: v[i] for k, v in u.slots.items()}
            if w == p.dtype:
                new_p, new_slots = maths(xp, h, lr, t, p, g, old)
            else:
                widened = {k: v.astype(w) for k, v in old.items()}
                new_p, new_slots = maths(xp, h, lr, t, p.astype(w), g.astype(w), widened)
                new_p = new_p.astype(p.dtype)
                new_slots = {k: v.astype(old[k].dtype) for k, v in new_slots.items()}
            params.append(new_p)
            for k, value in new_slots.items():
                slots[k].append(value)
        return Updated(params, slots, steps, u.count + 1)

    def in_place(self, lib: Any, lr: float, u: Update) -> None:
        """The fused kernels of ``lib`` (torch) on one (device, dtype) group, in place."""
        MATHS[self.hyper.kind][1](lib, self.hyper, lr, u)
