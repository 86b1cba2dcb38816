"""The cached pairing plan of an optimizer step: pair once per layout, then run.

Pairing each gradient with its variable and optimizer state, with every check and
every problem in one message, is per-tensor Python work (:meth:`Optimizer._gather`).
A training loop hands the step the same layout every time, so the pairing is done once
and remembered as a :class:`Plan`: the gradient names, the state keys, and what the
checks saw (dims, array libraries, dtypes and, for a library whose values can be laid
out over processes or devices, every placement). A later step reads the registries with
C-level loops (:mod:`torchlean.runtime._bulk`), compares what it reads with the plan
(whole lists at once) and, when everything agrees, hands the arrays to the backend's
:meth:`~torchlean.runtime.backends.Backend.planned_updater` and replaces the entries
with the trusted batch edit. Anything that differs (a name, a shape, a dtype, a library,
a tensor written in place, new parameter tensors under donation) falls back to the
pairing path, which explains every problem, and a new plan is made from it.

Placements are part of the key by construction: a plan of a library that overrides
:meth:`Backend.placement` (DTensor, sharded jax arrays) records the placement of every
parameter, gradient and state entry and compares them at every step (all but the
arrays the previous step read or wrote, whose layout is known: :meth:`Plan._placed`),
so a gradient laid out differently from its variable (a DTensor ``Partial``, a jax
array resharded) always reaches the pairing path's ``placement-mismatch`` refusal; it
is never updated through a hidden redistribution. (A DTensor layout has no plan today:
its state mixes a plain ``count`` with DTensor entries, which :meth:`Plan.build`
declines; the placements are compared whatever that rule becomes.)

Reading map:
- :class:`Plans` -- what an :class:`~torchlean.optim.Optimizer` keeps: a few recent
  plans and the planned updaters; :meth:`Plans.step` is the step's fast path.
- :class:`Plan` -- one layout: :meth:`Plan.build` (after the pairing path's checks),
  :meth:`Plan.run` (``None`` when the contexts do not fit it).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torchlean.runtime import _bulk
from torchlean.runtime.backends import Backend
from torchlean.runtime.backends._update import Update, Updated, UpdateRule
from torchlean.runtime.context import (
    RuntimeContext,
    claim,
    overlaps_caller_memory,
    owned_by_caller,
)

if TYPE_CHECKING:
    from torchlean.optim._optimizer import Optimizer, _Pair

__all__ = ["Plan", "Plans"]

_DTYPE = operator.attrgetter("dtype")
#: How many layouts an optimizer remembers (e.g. two models trained side by side).
_KEEP = 4

Context = RuntimeContext[Any]


class Plan:
    """The pairing of one layout of gradients, variables and optimizer state."""

    __slots__ = (
        "aliasing",
        "checked",
        "dims",
        "dtypes",
        "gradient_names",
        "keys",
        "last",
        "libraries",
        "library",
        "names",
        "placements",
        "settled",
        "sizes",
        "slots",
        "state_dims",
        "state_libraries",
        "state_placements",
        "state_size",
        "steps",
    )

    def __init__(self) -> None:
        self.names: list[str] = []
        self.gradient_names: list[str] = []  # the list object latest_names last gave
        self.keys: list[str] = []  # step keys, then each slot's keys, then "count"
        self.slots: tuple[str, ...] = ()
        self.dims: list[tuple[int, ...]] = []
        self.state_dims: list[tuple[int, ...]] = []
        self.libraries: list[int] = []
        self.state_libraries: list[int] = []
        self.dtypes: list[Any] = []
        #: the placement of each parameter (and so of its gradient) and of each state
        #: entry, for a library that lays values out over processes or devices; None
        #: for one whose values all live in one place (nothing to compare)
        self.placements: list[str | None] | None = None
        self.state_placements: list[str | None] | None = None
        #: whether the update was seen to give results of the plan's placements from
        #: arguments of the plan's placements (then what it writes is not read again)
        self.settled = False
        self.library: Backend | None = None
        #: how many step counters the update takes: one per parameter, or 1 (shared)
        self.steps = 0
        #: the state's entry count with a shared counter (an added ``step/p`` changes
        #: which counter a parameter reads: the pairing path then pairs again)
        self.state_size: int | None = None
        self.aliasing = True  # whether donation needs the alias check
        #: the parameters the donation alias check passed for (held, as torch.optim holds them)
        self.checked: list[Any] | None = None
        #: the entry counts of the contexts the check passed for: a new entry (a shadowed
        #: one holding a parameter's buffer, say) makes the pairing path check again
        self.sizes: tuple[int, int, int] | None = None
        #: what the last step read of the gradients and wrote of the parameters and
        #: state (the next step, handed the contexts it returned, only checks versions)
        self.last: tuple[Any, Any, Any] = _NOTHING

    @classmethod
    def build(cls, opt: Optimizer, ctx: Context, state: Context, *, donate: bool) -> Plan | None:
        """The plan of this layout, after the pairing path's checks (which raise every
        problem at once); ``None`` for a layout the plan does not cover."""
        from torchlean.optim._optimizer import SHARED_STEP, _one_library

        pairs = opt._gather(ctx, state)
        count = state.variable_entry("count")
        if count is None or not pairs:
            return None
        library = _one_library(pairs, count)
        if opt._split(library, pairs, state):
            return None  # the pairing path gives counters of their own first
        if donate and _needs_copies(opt, library, pairs, count, ctx, state):
            return None  # the pairing path updates the shared buffers as copies
        plan = cls()
        plan.names = [p.name for p in pairs]
        plan.slots = opt.hyper.slots
        keys = [opt._keys[n] for n in plan.names]
        if pairs[0].shared:
            plan.keys = [SHARED_STEP]
            plan.state_size = state.context_size()
        else:
            plan.keys = [k[0] for k in keys]
        plan.steps = len(plan.keys)
        for i in range(len(plan.slots)):
            plan.keys += [k[i + 1] for k in keys]
        plan.keys.append("count")
        params = _bulk.heads(ctx, plan.names)
        grads = _bulk.heads(ctx, plan.names, gradients=True)
        entries = _bulk.heads(state, plan.keys)
        if params is None or grads is None or entries is None:
            return None  # written in place: the pairing path says which
        if len(set(entries.libraries)) != 1 or _bulk.library(entries.libraries[0]) is not library:
            return None
        plan.library = library
        plan.dims, plan.libraries = params.dims, params.libraries
        plan.state_dims, plan.state_libraries = entries.dims, entries.libraries
        plan.dtypes = list(map(_DTYPE, params.tensors))
        if placed(library):  # the pairing path checked them: gradients as parameters
            plan.placements = library.placements(params.tensors)
            plan.state_placements = library.placements(entries.tensors)
        # a library whose buffers are never written in place (jax) has no aliases to check
        plan.aliasing = any(library.buffer_range(t) is not None for t in params.tensors)
        if donate:
            plan.checked = params.tensors
            plan.sizes = _sizes(ctx, state)
        return plan

    def run(
        self,
        ctx: Context,
        state: Context,
        donate: bool,
        updater: Callable[[Update], Updated],
        where: str,
    ) -> tuple[Context, Context] | None:
        """The step, when ``ctx`` and ``state`` have this plan's layout; else ``None``."""
        names = self.names
        listed = _bulk.latest_names(ctx, gradients=True)
        if listed is not self.gradient_names:
            if listed != names:
                return None
            self.gradient_names = listed
        last = self.last
        grads = _bulk.heads(ctx, names, gradients=True, last=last[0])
        params = _bulk.heads(ctx, names, last=last[1])
        entries = _bulk.heads(state, self.keys, last=last[2])
        if grads is None or params is None or entries is None:
            return None
        # what this plan wrote (or read and checked) last time, unchanged: known to fit
        if (params is not last[1] or entries is not last[2]) and not (
            params.dims == self.dims
            and entries.dims == self.state_dims
            and params.libraries == self.libraries
            and entries.libraries == self.state_libraries
            and list(map(_DTYPE, params.tensors)) == self.dtypes
        ):
            return None
        if grads is not last[0] and not (
            grads.dims == self.dims
            and grads.libraries == self.libraries
            and list(map(_DTYPE, grads.tensors)) == self.dtypes
        ):
            return None
        if self.placements is not None and not self._placed(grads, params, entries, last):
            return None  # laid out otherwise: the pairing path refuses or re-plans
        if donate and self.aliasing:
            checked = self.checked
            if params is not last[1] and (
                checked is None or not all(map(operator.is_, checked, params.tensors))
            ):
                return None  # new parameter tensors: the pairing path checks aliases again
            if self.sizes != _sizes(ctx, state):
                return None  # new entries: they may hold a buffer the step writes
        if self.state_size is not None and self.state_size != state.context_size():
            return None
        if donate:
            # claimed before anything is written: of two threads, exactly one steps
            ctx, state = claim(ctx, state, to=where)
        n = len(names)
        k = self.steps
        values = entries.tensors
        slots = {slot: values[k + n * i : k + n * (i + 1)] for i, slot in enumerate(self.slots)}
        new = updater(Update(params.tensors, grads.tensors, slots, values[:k], values[-1]))
        library = self.library
        assert library is not None
        updated = list(new.steps)
        for slot in self.slots:
            updated += new.slots[slot]
        updated.append(new.count)
        if donate:
            if not _same(new.params, params.tensors):
                new_params = library.adopt_all(new.params)
            else:
                new_params = params.tensors  # written in place: stored (adopted) already
            if not _same(updated, values):
                updated = library.adopt_all(updated)
        else:
            new_params = library.adopt_all(new.params)
            updated = library.adopt_all(updated)
        new_ctx, wrote_params = _bulk.replace_heads_read(ctx, names, new_params, read=params)
        new_state, wrote_entries = _bulk.replace_heads_read(state, self.keys, updated, read=entries)
        if donate:
            library.note_written(new_params, where)
        if donate and self.aliasing:
            self.checked = new_params  # the entry counts stay: only heads were replaced
        self.last = (grads, wrote_params, wrote_entries) if donate else _NOTHING
        return new_ctx, new_state

    def _placed(
        self, grads: _bulk.Heads, params: _bulk.Heads, entries: _bulk.Heads, last: Any
    ) -> bool:
        """Whether the gradients and parameters have the plan's placements and the state
        entries theirs. What the previous step read (``last[0]``: the same arrays,
        unwritten) compared equal then, and is not read again; what it wrote
        (``last[1]``, ``last[2]``) is read until one step finds it laid out as planned
        (an update may lay its results out anew): from then on the update is known to
        keep the plan's placements (the layout of a result is a function of its
        arguments' layouts), and what it writes from arguments laid out as planned is
        not read again. Cost: :meth:`Backend.placements` of each list read (C-level
        loops for jax arrays on one device each)."""
        library = self.library
        assert library is not None
        where = library.placements
        settled = self.settled
        wrote_params = params is last[1]
        wrote_entries = entries is last[2]
        if not (
            (grads is last[0] or where(grads.tensors) == self.placements)
            and ((settled and wrote_params) or where(params.tensors) == self.placements)
            and ((settled and wrote_entries) or where(entries.tensors) == self.state_placements)
        ):
            return False
        if wrote_params and wrote_entries:
            self.settled = True
        return True


def placed(library: Backend) -> bool:
    """Whether ``library`` can lay values out over processes or devices (it overrides
    :meth:`Backend.placement`): its plans compare placements."""
    return type(library).placement is not Backend.placement


_NOTHING: tuple[None, None, None] = (None, None, None)


def _same(xs: list[Any], ys: list[Any]) -> bool:
    """Whether ``xs`` and ``ys`` hold the same objects."""
    return len(xs) == len(ys) and all(map(operator.is_, xs, ys))


def _sizes(ctx: Context, state: Context) -> tuple[int, int, int]:
    return (ctx.context_size(), ctx.gradient_count(), state.context_size())


def _needs_copies(
    opt: Optimizer, library: Backend, pairs: list[_Pair], count: Any, ctx: Context, state: Context
) -> bool:
    """True when a donated step must update some buffer as a copy, or refuses: the
    pairing path's byte-range check (:func:`torchlean.optim._optimizer._unshared`),
    which raises for parameters sharing memory."""
    from torchlean.optim._optimizer import _unshared

    slots = [e for p in pairs for e in p.slots]
    steps = [pairs[0].step] if pairs[0].shared else [p.step for p in pairs]
    written = [*(p.param for p in pairs), *slots, *steps, count]
    if any(owned_by_caller(at.unchecked) for at in written):
        return True  # the caller's own arrays: the first step updates copies
    if overlaps_caller_memory(library, [at.unchecked for at in written]):
        return True  # views of them (a torch tree_map's x.detach()): copies too
    return bool(_unshared(library, pairs, written, ctx, state, opt._keys))


class Plans:
    """An optimizer's recent plans and planned updaters."""

    __slots__ = ("plans", "rule", "updaters")

    def __init__(self, rule: UpdateRule) -> None:
        self.rule = rule
        self.plans: list[Plan] = []
        self.updaters: dict[tuple[Backend, bool], Callable[[Update], Updated]] = {}

    def step(
        self, opt: Optimizer, ctx: Context, state: Context, donate: bool
    ) -> tuple[Context, Context] | None:
        """The step through a plan (a remembered one, else one made now); ``None`` when
        no plan covers these contexts (the pairing path then runs and explains)."""
        where = f"{opt.hyper.kind}.step"
        for plan in self.plans:
            out = plan.run(ctx, state, donate, self._updater(plan, donate), where)
            if out is not None:
                if plan is not self.plans[0]:
                    self.plans.remove(plan)
                    self.plans.insert(0, plan)
                return out
        new = Plan.build(opt, ctx, state, donate=donate)
        if new is None:
            return None
        self.plans = [new, *[p for p in self.plans if p.names != new.names]][:_KEEP]
        return new.run(ctx, state, donate, self._updater(new, donate), where)

    def _updater(self, plan: Plan, donate: bool) -> Callable[[Update], Updated]:
        library = plan.library
        assert library is not None
        updater = self.updaters.get((library, donate))
        if updater is None:
            updater = library.planned_updater(self.rule, donate=donate)
            self.updaters[(library, donate)] = updater
        return updater
