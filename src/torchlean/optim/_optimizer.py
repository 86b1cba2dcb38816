"""The optimizers: ``init(ctx) -> state`` and ``step(ctx, state) -> (ctx', state')``.

Reading map:
- :class:`Optimizer` -- ``init``; ``step`` pairs each gradient with its variable and
  state (every problem in one message), then hands the arrays to the backend's updater.
- :func:`sgd`, :func:`adam`, :func:`adamw` -- constructors with ``torch.optim``'s defaults.
- :class:`~torchlean.optim._hyper.Hyper` -- the hyperparameters; the maths is in
  :mod:`torchlean.optim._rules`, how it runs per array library in
  :meth:`torchlean.runtime.backends.Backend.updater`.

The state is a :class:`RuntimeContext` whose variables are ``count`` (steps taken, for
schedules), the step counters (float32, torch's per-parameter bias-correction counts)
and, per parameter ``p``, the moments: ``momentum_buffer/p`` (SGD with momentum),
``exp_avg/p``, ``exp_avg_sq/p`` and ``max_exp_avg_sq/p`` (Adam, AdamW, amsgrad). It saves
and loads with :mod:`torchlean.io` like any context.

The counters: on jax and numpy (without parameter groups) one ``step`` counts every
parameter that has moments and no ``step/p`` of its own, so that the update takes one
counter, as optax's does; torch keeps one ``step/p`` per parameter (views of one buffer,
incremented by one kernel). A parameter that stops stepping with the others (frozen: no
gradient) gets its own ``step/p`` with the shared value, and keeps it, so every
parameter counts exactly as in torch; once the parameters that step mix their own and
the shared counter, each gets its own (:meth:`Optimizer._split`). States with a
``step/p`` per parameter (older files, torch's) step as they are.

Donation (``step(..., donate=True)``, the default): the step takes the buffers of ``ctx``
and ``state`` over and updates them in place, as torch.optim does; both contexts are
donated (any later use raises :class:`~torchlean.errors.DonatedContextError`) and any
other context sharing a buffer (the context gradients were computed from) detects the
write and raises :class:`~torchlean.errors.InPlaceModificationError` when read.
``donate=False`` updates copies and leaves every context as it was. Arrays the caller
registered (without ``adopt=True``) are never written: the first donated step updates
copies of them and donates only what torchlean allocated
(:func:`~torchlean.runtime.context.owned_by_caller`).

Parameter groups, the weight-decay mask (:mod:`torchlean.optim._groups`) and global-norm
clipping (``clip=``, :meth:`Backend.clip_by_global_norm`) are options of every optimizer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from torchlean.errors import (
    BackendError,
    DTypeMismatchError,
    ShapeMismatchError,
    TorchLeanError,
    UnknownNameError,
)
from torchlean.optim._groups import Groups, run_grouped
from torchlean.optim._hyper import LR, Hyper, Kind
from torchlean.optim._plan import Plans, placed
from torchlean.optim._rules import Rule
from torchlean.runtime._collector import paused
from torchlean.runtime.any_tensor import AnyTensor
from torchlean.runtime.backends import NUMPY, Backend
from torchlean.runtime.backends._update import Update, Updated
from torchlean.runtime.check import placement_mismatch
from torchlean.runtime.context import (
    RuntimeContext,
    claim,
    overlaps_caller_memory,
    owned_by_caller,
    require_context,
    stored_values,
)

__all__ = ["Optimizer", "adam", "adamw", "sgd"]

_FLOAT_KINDS = ("float", "bfloat")


#: The state's step counter shared by every parameter without a ``step/p`` of its own.
SHARED_STEP = "step"


class _Pair(NamedTuple):
    """A gradient with its variable and optimizer state (entries, not yet read)."""

    name: str
    param: AnyTensor[Any]
    grad: AnyTensor[Any]
    #: its own ``step/p``, or the shared ``step`` (``shared``)
    step: AnyTensor[Any]
    slots: tuple[AnyTensor[Any], ...]
    shared: bool = False
    #: the gradient waits for reductions (DTensor ``Partial``) the step does on request
    pending: bool = False


class Optimizer:
    """A functional optimizer over contexts: :meth:`init` and :meth:`step`."""

    def __init__(
        self,
        hyper: Hyper,
        *,
        groups: Sequence[Mapping[str, Any]] = (),
        no_decay: str | Sequence[str] = (),
        clip: float | None = None,
    ) -> None:
        if not isinstance(hyper, Hyper):
            raise TypeError(
                f"Optimizer expects a Hyper (use sgd, adam or adamw), got {type(hyper).__name__}"
            )
        self.hyper = hyper
        self._rule = Rule(hyper)
        #: per-name hyperparameters (parameter groups, the weight-decay mask)
        self.groups = Groups(hyper, groups, no_decay)
        if clip is not None:
            _number(clip, "clip")
            _check(clip > 0, f"clip must be > 0 (a maximum gradient norm), got {clip}")
        #: the maximum global gradient norm (``torch.nn.utils.clip_grad_norm_``), or None
        self.clip = None if clip is None else float(clip)
        # one updater per (array library, donate[, group]): a jax one compiles on its first call
        self._updaters: dict[tuple[Any, ...], Callable[[Update], Updated]] = {}
        # the state's entry names of each parameter name: ("step/p", "exp_avg/p", ...)
        self._keys: dict[str, tuple[str, ...]] = {}
        # the pairings of recent layouts, reused step after step (optim/_plan.py)
        self._plans = Plans(self._rule)

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

    def _shares(self, libraries: list[Backend]) -> bool:
        """Whether a state of these libraries' parameters keeps one shared step counter:
        each library takes one (:attr:`Backend.shared_step_counter`) and every parameter
        runs in one update (no parameter groups)."""
        return self.groups.trivial and all(lib.shared_step_counter for lib in libraries)

    # ------------------------------------------------------------------ init

    def init(self, ctx: RuntimeContext[Any]) -> RuntimeContext[Any]:
        """A fresh state for every floating-point variable of ``ctx`` (its most recent entry).

        Moments are zeros shaped like their variable, on its device and of its array
        library; ``count`` is an integer zero; the step counter is a float32 zero: one
        ``step`` shared by every parameter on jax and numpy (without parameter groups),
        one ``step/p`` per parameter on torch (see the module docstring). Lean
        counterpart: none. Cost: O(total elements) to allocate the moments.
        """
        require_context(ctx, "optimizer init")
        return self._init(ctx)

    def _init(self, ctx: RuntimeContext[Any], *, shared: bool | None = None) -> RuntimeContext[Any]:
        """:meth:`init`; ``shared``: one counter for all (``None``: as the library keeps
        them, :attr:`Backend.shared_step_counter`)."""
        buffers = set(ctx.buffers())
        floats = [
            (n, at)
            for n, at in ctx.latest_variables()
            if at.dtype.startswith(_FLOAT_KINDS) and n not in buffers
        ]
        self.groups.check([n for n, _ in floats])
        by_library: dict[Backend, list[int]] = {}
        for i, (_, at) in enumerate(floats):
            by_library.setdefault(at.library, []).append(i)
        values = [at.t for _, at in floats]
        # per library at once: counters and moments of a flat buffer are flat too
        steps: list[Any] = [None] * len(floats)
        slots: dict[str, list[Any]] = {slot: [None] * len(floats) for slot in self.hyper.slots}
        for library, ix in by_library.items():
            likes = [values[i] for i in ix]
            for i, x in zip(ix, library.scalars(0.0, "float32", likes), strict=True):
                steps[i] = x
            for slot in self.hyper.slots:
                for i, x in zip(ix, library.zeros_like_all(likes), strict=True):
                    slots[slot][i] = x
        if floats:
            library = floats[0][1].library
            count = library.scalar(0, library.counter_dtype, values[0])
        else:
            count = NUMPY.scalar(0, NUMPY.counter_dtype, None)
        if shared is None:
            shared = self._shares(list(by_library))
        items: list[tuple[str, Any]] = [("count", count)]
        if shared and floats:
            items.append((SHARED_STEP, steps[0]))
        for i, (name, _) in enumerate(floats):
            if not shared:
                items.append((f"step/{name}", steps[i]))
            items.extend((f"{slot}/{name}", slots[slot][i]) for slot in self.hyper.slots)
        # fresh arrays, stored as they are (views of a flat buffer stay views)
        return RuntimeContext.empty().with_variables(items, adopt=True)

    # ------------------------------------------------------------------ step

    def step(
        self,
        ctx: RuntimeContext[Any],
        state: RuntimeContext[Any],
        *,
        donate: bool = True,
        reduce_partial: bool = False,
    ) -> tuple[RuntimeContext[Any], RuntimeContext[Any]]:
        """Update every variable of ``ctx`` that has a gradient; return the new context
        and the new state.

        Reads the most recent gradient of each name; a gradient whose shape, dtype,
        array library or placement (a DTensor's) differs from its variable's, one
        without a variable, or one without optimizer state is an error raised before
        anything is updated (every problem in one message). The gradients stay in the
        new context (call ``clear_gradients`` or use
        :func:`torchlean.autograd.value_and_grad`, which replaces them).
        ``donate=True`` (default) updates the buffers in place and donates ``ctx`` and
        ``state``; ``donate=False`` leaves both as they were.

        ``reduce_partial=True``: a gradient laid out as its variable except for
        ``Partial`` placements (a DTensor gradient of a replicated parameter on a
        sharded batch) is reduced to its variable's placements first, by DTensor's own
        ``redistribute``: one collective per such gradient, so call the step on every
        rank. The context keeps the gradients as they were given. Without it such a
        gradient is refused like any other placement mismatch (never a hidden
        collective). Lean counterpart: none. Cost: O(total elements) in one fused
        kernel per (device, dtype) on torch, one jitted call on jax.
        """
        require_context(ctx, "optimizer step")
        require_context(state, "optimizer step", "state")
        if not isinstance(donate, bool):
            raise TypeError(f"optimizer step: donate must be a bool, got {donate!r}")
        if not isinstance(reduce_partial, bool):
            raise TypeError(
                f"optimizer step: reduce_partial must be a bool, got {reduce_partial!r}"
            )
        if ctx is state:
            raise TorchLeanError("optimizer step: ctx and state must be different contexts")
        # the step frees what it allocates; a collection in between only promotes the
        # live contexts and leads to full collections (runtime/_collector.py)
        with paused:
            return self._step(ctx, state, donate, reduce_partial)

    def _step(
        self,
        ctx: RuntimeContext[Any],
        state: RuntimeContext[Any],
        donate: bool,
        reduce_partial: bool,
    ) -> tuple[RuntimeContext[Any], RuntimeContext[Any]]:
        """:meth:`step` after its argument checks."""
        if self.groups.trivial and self.clip is None and not reduce_partial:
            planned = self._plans.step(self, ctx, state, donate)
            if planned is not None:
                return planned
        pairs = self._gather(ctx, state, reduce_partial)
        count = state.variable_entry("count")
        if count is None:
            raise UnknownNameError(
                "optimizer step: the state has no `count`; build it with init(ctx)"
            )
        library = _one_library(pairs, count)
        # parameters that stop stepping with the others get counters of their own
        grown = state
        split = self._split(library, pairs, state)
        if split:
            grown = state.with_variables(split, adopt=True)
            pairs = self._gather(ctx, grown, reduce_partial)
        shared = bool(pairs) and pairs[0].shared
        grads = [p.grad.t for p in pairs]
        pending = [i for i, p in enumerate(pairs) if p.pending]
        if pending:  # before anything is donated: a failed collective leaves all as it was
            reduced = library.reduce_pending(
                [grads[i] for i in pending], [pairs[i].param.t for i in pending]
            )
            for i, g in zip(pending, reduced, strict=True):
                grads[i] = g
        slots = self.hyper.slots
        params = [p.param for p in pairs]
        slot_lists = [[p.slots[i] for p in pairs] for i in range(len(slots))]
        steps = [pairs[0].step] if shared else [p.step for p in pairs]
        if donate:
            # every entry the step writes in place, and whether each must be a copy
            written = [*params, *(e for v in slot_lists for e in v), *steps, count]
            fresh = _unshared(library, pairs, written, ctx, grown, self._keys)
            # the caller's own arrays are never written: the first step updates copies
            fresh.update(id(at.unchecked) for at in written if owned_by_caller(at.unchecked))
            # ... nor a view of them (a torch tree_map's x.detach() of the caller's tensor)
            fresh |= overlaps_caller_memory(library, [at.unchecked for at in written])
            ctx, state = claim(ctx, state, to=f"{self.hyper.kind}.step")
            state = state if not split else grown

            def read(at: AnyTensor[Any]) -> Any:
                return library.copy(at.t) if id(at.unchecked) in fresh else at.t
        else:
            state = grown

            def read(at: AnyTensor[Any]) -> Any:
                return at.t

        names = [p.name for p in pairs]
        if self.clip is not None:
            grads = library.clip_by_global_norm(grads, self.clip)[0]
        new = self._run(
            library,
            donate,
            names,
            Update(
                params=[read(p) for p in params],
                grads=grads,
                slots={slot: [read(e) for e in slot_lists[i]] for i, slot in enumerate(slots)},
                steps=[read(e) for e in steps],
                count=read(count),
            ),
        )
        keys = [self._keys[n] for n in names]
        updated: list[tuple[str, Any]] = [("count", new.count)]
        if shared:
            updated.append((SHARED_STEP, new.steps[0]))
        else:
            updated += [(k[0], s) for k, s in zip(keys, new.steps, strict=True)]
        for slot, values in new.slots.items():
            i = slots.index(slot) + 1
            updated += [(k[i], x) for k, x in zip(keys, values, strict=True)]
        if donate:
            library.note_written(new.params, f"{self.hyper.kind}.step")
        new_ctx = ctx.with_variables(list(zip(names, new.params, strict=True)), adopt=True)
        new_state = state.with_variables(updated, adopt=True)
        return new_ctx, new_state

    def _updater(self, library: Backend, donate: bool) -> Callable[[Update], Updated]:
        updater = self._updaters.get((library, donate))
        if updater is None:
            updater = library.updater(self._rule, donate=donate)
            self._updaters[(library, donate)] = updater
        return updater

    def _run(self, library: Backend, donate: bool, names: list[str], update: Update) -> Updated:
        """The update, once per parameter group (:mod:`torchlean.optim._groups`)."""
        if self.groups.trivial:
            return self._updater(library, donate)(update)

        def updater(index: int) -> Callable[[Update], Updated]:
            if index == 0:
                return self._updater(library, donate)
            key = (library, donate, index)
            found = self._updaters.get(key)
            if found is None:
                found = library.updater(Rule(self.groups.hypers[index]), donate=donate)
                self._updaters[key] = found
            return found

        return run_grouped(self.groups, updater, library, donate, names, update)

    def _gather(
        self, ctx: RuntimeContext[Any], state: RuntimeContext[Any], reduce_partial: bool = False
    ) -> list[_Pair]:
        """Pair each gradient with its variable and state; collect every problem first.
        ``reduce_partial``: a gradient whose layout differs only by pending reductions
        is paired (marked ``pending``) instead of refused."""
        problems: list[tuple[type[TorchLeanError], str]] = []
        pairs: list[_Pair] = []
        for name, g in ctx.latest_gradients():
            pair = self._pair(name, g, ctx, state, reduce_partial)
            if isinstance(pair, _Pair):
                pairs.append(pair)
            else:
                problems.append(pair)
        if problems:
            kind = problems[0][0]
            if len(problems) == 1:
                text = problems[0][1]
            else:
                text = f"{len(problems)} problems:\n" + "\n".join(f"- {m}" for _, m in problems)
            raise kind(f"optimizer step: {text}; nothing was updated")
        return pairs

    def _pair(
        self,
        name: str,
        g: AnyTensor[Any],
        ctx: RuntimeContext[Any],
        state: RuntimeContext[Any],
        reduce_partial: bool,
    ) -> _Pair | tuple[type[TorchLeanError], str]:
        """The gradient ``g`` of ``name`` paired, or the problem that prevents it."""
        p = ctx.variable_entry(name)
        if p is None:
            return UnknownNameError, f"gradient `{name}` has no variable of that name"
        if g.dims != p.dims:
            return ShapeMismatchError, (
                f"gradient `{name}` has shape {g.dims} but variable `{name}` has shape {p.dims}"
            )
        if g.library is not p.library or g.dtype != p.dtype:
            return DTypeMismatchError, (
                f"gradient `{name}` is {g.backend} {g.dtype} but variable `{name}`"
                f" is {p.backend} {p.dtype}"
            )
        pending = False
        if placed(g.library):
            mismatch = placement_mismatch(name, p, g)
            if mismatch is not None:
                pending = g.library.pending_reduction(g.t, p.t)
                if not pending:
                    return TorchLeanError, mismatch
                if not reduce_partial:  # check()'s message, naming the option
                    return TorchLeanError, str(placement_mismatch(name, p, g, pending=True))
        keys = self._keys.get(name)
        if keys is None:
            keys = self._keys[name] = tuple(
                f"{slot}/{name}" for slot in ("step", *self.hyper.slots)
            )
        step = state.variable_entry(keys[0])
        shared = False
        if step is None:
            step = state.variable_entry(SHARED_STEP)
            shared = step is not None
        entries = [state.variable_entry(key) for key in keys[1:]]
        if (step is None or any(e is None for e in entries)) and p.dtype.startswith("complex"):
            # init gives complex variables no state; value_and_grad gives them a gradient
            return TorchLeanError, (
                f"variable `{name}` is {p.dtype}, which the optimizers do not train"
                " (torch.optim trains a complex parameter as pairs of reals); keep it as"
                " a real tensor (torch.view_as_real) and view it as complex in the loss,"
                " or freeze it (value_and_grad(frozen=...))"
            )
        if step is None or any(e is None for e in entries):
            return UnknownNameError, (
                f"variable `{name}` has no optimizer state; build the state with"
                " init(ctx) from a context that has this variable"
            )
        slots = tuple(e for e in entries if e is not None)
        bad = [e for e in slots if e.dims != p.dims]
        if bad:
            return ShapeMismatchError, (
                f"optimizer state of `{name}` has shape {bad[0].dims} but variable"
                f" `{name}` has shape {p.dims}"
            )
        return _Pair(name, p, g, step, slots, shared, pending)

    def _split(
        self, library: Backend, pairs: list[_Pair], state: RuntimeContext[Any]
    ) -> list[tuple[str, Any]]:
        """The counters to split off the shared ``step`` before this step, as
        ``(step/p, a copy of its value)``; empty when the shared counter still counts
        exactly the parameters that step.

        The shared counter counts every parameter with moments and no ``step/p``. When
        some of those get no gradient (frozen), they keep its value as their own counter
        (torch keeps a counter per parameter: theirs stops); when the parameters that
        step mix own and shared counters, or the library or parameter groups take one
        counter per parameter, every parameter gets its own. Cost: O(state entries)."""
        users = [p for p in pairs if p.shared]
        if not users:
            return []
        covered = self._covered(state, users)
        together = len(users) == len(pairs) and self._shares([library])
        stepping = {p.name for p in users} if together else set()
        value = users[0].step
        return [(f"step/{name}", library.copy(value.t)) for name in covered if name not in stepping]

    def _covered(self, state: RuntimeContext[Any], users: list[_Pair]) -> list[str]:
        """The parameters the shared counter of ``state`` counts (state order): those
        with moments and no ``step/p``; for an optimizer without moments, ``users``."""
        slots = self.hyper.slots
        if not slots:
            return [p.name for p in users]
        names = [n for n, _ in state.latest_variables()]
        own = {n[5:] for n in names if n.startswith("step/")}
        prefix = f"{slots[0]}/"
        size = len(prefix)
        return [n[size:] for n in names if n.startswith(prefix) and n[size:] not in own]


def _one_library(pairs: list[_Pair], count: AnyTensor[Any]) -> Backend:
    """The array library of the variables with gradients (the count's when none)."""
    seen = {p.param.backend: p for p in pairs}
    if len(seen) > 1:
        where = ", ".join(f"{b} (e.g. `{p.name}`)" for b, p in seen.items())
        raise BackendError(
            f"optimizer step: the variables with gradients mix array libraries: {where};"
            " nothing was updated"
        )
    return pairs[0].param.library if pairs else count.library


#: A byte range of one entry: (first byte, one past the last, role, tensor); role is
#: the parameter's name for a parameter the step updates, "" for another entry it
#: writes (moments, step counters, count), None for an entry it does not write.
_Span = tuple[int, int, "str | None", Any]


def _unshared(
    library: Backend,
    pairs: list[_Pair],
    written: list[AnyTensor[Any]],
    ctx: RuntimeContext[Any],
    state: RuntimeContext[Any],
    keys: dict[str, tuple[str, ...]],
) -> set[int]:
    """The tensors of ``written`` (by ``id``) an in-place step must update as copies.

    Compares byte ranges (:meth:`Backend.buffer_range`): two parameters whose memory
    overlaps (one tensor under two names, ``qkv`` and its view ``qkv[2:6]``) are refused,
    since an in-place step would update the shared elements twice. Any other overlap of
    a written entry -- with a shadowed entry, a gradient, an entry the step does not
    update, another written entry -- makes that written entry a copy, so that every
    entry of the returned contexts stays readable. Cost: O(n log n) over the n entries
    of ``ctx`` and ``state`` when a written entry has a byte range; O(written entries)
    for a library that is never written in place (numpy).
    """
    spaces: dict[Any, list[_Span]] = {}
    span_of = library.buffer_range

    def add(value: Any, role: str | None) -> bool:
        span = span_of(value)
        if span is None:
            return False
        spaces.setdefault(span[0], []).append((span[1], span[2], role, value))
        return True

    params = {id(p.param): p.name for p in pairs}
    if not sum([add(at.unchecked, params.get(id(at), "")) for at in written]):
        return set()
    heads = {p.name for p in pairs}
    state_heads = {"count"} | {key for p in pairs for key in keys[p.name]}
    if pairs and pairs[0].shared:
        state_heads.add(SHARED_STEP)
    for source, gradients, written_heads in (
        (ctx, False, heads),
        (ctx, True, set()),
        (state, False, state_heads),
    ):
        for name, visible, value, backend in stored_values(source, gradients=gradients):
            if backend is library and not (visible and name in written_heads):
                add(value, None)  # (a written entry itself was added above)
    order = {p.name: i for i, p in enumerate(pairs)}
    fresh: set[int] = set()
    for spans in spaces.values():
        spans.sort(key=lambda span: span[0])
        cluster: list[_Span] = []
        reach = 0
        for span in [*spans, None]:
            if span is not None and cluster and span[0] < reach:
                cluster.append(span)
                reach = max(reach, span[1])
                continue
            if len(cluster) > 1:
                _resolve(cluster, fresh, order)
            if span is not None:
                cluster, reach = [span], span[1]
    # A written entry that shares a version counter with an entry the step does not
    # write (disjoint views of one storage: the step counters init makes, a frozen half
    # of a flat buffer) is a copy too: an in-place write would bump the other's counter.
    counters: dict[Any, list[_Span]] = {}
    for spans in spaces.values():
        for span in spans:
            key = library.version_space(span[3])
            if key is not None:
                counters.setdefault(key, []).append(span)
    for group in counters.values():
        if any(span[2] is None for span in group):
            fresh.update(id(span[3]) for span in group if span[2] is not None)
    return fresh


def _resolve(cluster: list[_Span], fresh: set[int], order: dict[str, int]) -> None:
    """For one group of overlapping ranges: refuse two parameters that overlap; mark
    every other written entry that overlaps something as a copy."""
    for i, a in enumerate(cluster):
        for b in cluster[i + 1 :]:
            if a[0] >= b[1] or b[0] >= a[1]:
                continue  # in one group, but these two do not overlap
            if a[2] and b[2]:
                first, second = sorted((a[2], b[2]), key=order.__getitem__)
                raise TorchLeanError(
                    f"optimizer step: variables `{first}` and `{second}` share one buffer,"
                    " which an in-place step would update twice; register a copy"
                    " (tensor.clone()) or pass donate=False; nothing was updated"
                )
            for span in (a, b):
                if span[2] is not None:
                    fresh.add(id(span[3]))


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
    *,
    groups: Sequence[Mapping[str, Any]] = (),
    no_decay: str | Sequence[str] = (),
    clip: float | None = None,
) -> Optimizer:
    """Stochastic gradient descent, as ``torch.optim.SGD`` (same arguments and defaults).

    The knobs every optimizer takes (keyword-only):

    - ``groups``: parameter groups, ``[{"params": "encoder.*", "lr": 1e-4}, ...]``: names
      or ``fnmatch`` globs, and the hyperparameters that differ (``lr``, ``weight_decay``,
      ``momentum``, ``dampening``, ``nesterov``, ``betas``, ``eps``); the first group
      whose pattern matches a name wins, other names use the optimizer's own values (as
      ``torch.optim``'s param groups).
    - ``no_decay``: names or globs that get no weight decay, whatever their group (the
      usual mask: ``("*.bias", "*norm*")``).
    - ``clip``: the maximum global gradient norm; the gradients are scaled as
      ``torch.nn.utils.clip_grad_norm_`` scales them before every update.

    A pattern that matches no parameter raises at ``init``.
    """
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
        Hyper(
            kind="sgd",
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            nesterov=nesterov,
            weight_decay=weight_decay,
        ),
        groups=groups,
        no_decay=no_decay,
        clip=clip,
    )


def adam(
    lr: LR = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
    *,
    groups: Sequence[Mapping[str, Any]] = (),
    no_decay: str | Sequence[str] = (),
    clip: float | None = None,
) -> Optimizer:
    """Adam, as ``torch.optim.Adam`` (L2 weight decay added to the gradient); ``groups``,
    ``no_decay`` and ``clip`` as for :func:`sgd`."""
    hyper = _adam("adam", lr, betas, eps, weight_decay, amsgrad)
    return Optimizer(hyper, groups=groups, no_decay=no_decay, clip=clip)


def adamw(
    lr: LR = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    amsgrad: bool = False,
    *,
    groups: Sequence[Mapping[str, Any]] = (),
    no_decay: str | Sequence[str] = (),
    clip: float | None = None,
) -> Optimizer:
    """AdamW, as ``torch.optim.AdamW`` (decoupled weight decay, default 1e-2); ``groups``,
    ``no_decay`` and ``clip`` as for :func:`sgd`."""
    hyper = _adam("adamw", lr, betas, eps, weight_decay, amsgrad)
    return Optimizer(hyper, groups=groups, no_decay=no_decay, clip=clip)


def _adam(
    kind: Kind, lr: LR, betas: tuple[float, float], eps: float, weight_decay: float, amsgrad: bool
) -> Hyper:
    """Adam or AdamW after torch.optim's checks of the arguments."""
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
    hyper = Hyper(
        kind=kind,
        lr=lr,
        weight_decay=weight_decay,
        beta1=betas[0],
        beta2=betas[1],
        eps=eps,
        amsgrad=amsgrad,
    )
    return hyper
