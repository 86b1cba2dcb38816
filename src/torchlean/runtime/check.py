"""The one home of the gradient-vs-variable rules, and ``RuntimeContext.check``.

The Lean module's ``isValidContext`` answers one yes/no question (does every gradient
name a variable?). Debugging training state needs more: which gradient is orphaned,
which one has the wrong shape or dtype, where a NaN crept in, whether tensors sit on
different devices. This module finds all of it in one pass and returns it as data.

Every view applies these rules through this module: ``RuntimeContext.check`` (exact
counts), the context view and the file view (:mod:`torchlean.widgets`, NaN counts of a
sample for a big file). The rules read :class:`EntryFacts` -- shape, dtype, device and
non-finite counts -- never the tensors themselves, so the same data gives the same
problems whichever view looked at it.

Reading map:
- :class:`Problem` -- one finding: ``kind``, ``registry``, ``name``, ``message``.
- :class:`CheckReport` -- every finding; falsy when something is wrong;
  ``raise_if_problems()``.
- :class:`EntryFacts` -- what the rules read of one entry; :func:`facts_of` reads them
  off a stored tensor.
- :func:`check_pair` -- one gradient against its variable: orphan, shape, dtype (O(1);
  the optimizers can call it on the entries they pair).
- :func:`check_entries` -- every rule over both registries: the pairs, non-finite
  values, mixed devices.
- :func:`check_context` -- the report of a context (``RuntimeContext.check`` calls it).
- :func:`nonfinite_counts` -- NaN and infinity counts of a stored tensor.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from torchlean._text import short_repr
from torchlean.errors import TorchLeanError
from torchlean.runtime.backends import UNKNOWN_DEVICES, read_checked

if TYPE_CHECKING:
    from torchlean.runtime.any_tensor import AnyTensor
    from torchlean.runtime.context import RuntimeContext

__all__ = [
    "CheckReport",
    "EntryFacts",
    "Problem",
    "ProblemKind",
    "check_context",
    "check_entries",
    "check_pair",
    "facts_of",
    "nonfinite_counts",
]

ProblemKind = Literal[
    "orphan-gradient",
    "shape-mismatch",
    "dtype-mismatch",
    "placement-mismatch",
    "non-finite",
    "mixed-devices",
]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a context."""

    kind: ProblemKind
    #: ``"variable"``, ``"gradient"`` or ``"context"`` (for whole-context findings).
    registry: str
    #: The entry's name (``""`` for whole-context findings).
    name: str
    message: str
    #: Position of the entry in its registry, most recent first (-1 for the context).
    index: int = -1

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class CheckReport:
    """Every problem found by :meth:`RuntimeContext.check`, in registry order.

    ``bool(report)`` is True when nothing is wrong; iterate it for the problems.
    """

    problems: tuple[Problem, ...]
    #: What the counts cover when they are not the whole of every tensor: ``"local
    #: shards of rank 0 of 2"`` (a plain check of distributed tensors), ``"summed over
    #: 2 processes"`` (``check(collective=True)``); ``None`` for a single process.
    scope: str | None = None

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def __bool__(self) -> bool:
        return self.ok

    def __iter__(self) -> Iterator[Problem]:
        return iter(self.problems)

    def __len__(self) -> int:
        return len(self.problems)

    def for_entry(self, registry: str, name: str) -> list[Problem]:
        """The problems of one entry (by registry and name)."""
        if registry not in ("variable", "gradient"):
            raise ValueError(f"registry must be 'variable' or 'gradient', got {registry!r}")
        if not isinstance(name, str):
            raise TypeError(
                f"{registry} name must be a str, got {type(name).__name__} {short_repr(name)}"
            )
        return [p for p in self.problems if p.registry == registry and p.name == name]

    def __str__(self) -> str:
        scope = f" (values read: {self.scope})" if self.scope else ""
        if not self.problems:
            return f"no problems found{scope}"
        lines = [f"{len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}{scope}:"]
        lines += [f"- {p.message}" for p in self.problems]
        return "\n".join(lines)

    def raise_if_problems(self) -> None:
        """Raise :class:`~torchlean.errors.TorchLeanError` listing every problem."""
        if self.problems:
            raise TorchLeanError(str(self))


class Described(Protocol):
    """Anything with a shape and a dtype name: an ``AnyTensor``, :class:`EntryFacts`, a
    view's ``TensorSource``."""

    @property
    def dims(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> str: ...


@dataclass(frozen=True)
class EntryFacts:
    """What the rules read of one entry: its shape, dtype and device, and how many of its
    values are NaN or infinite."""

    dims: tuple[int, ...]
    dtype: str
    #: ``"cpu"``, ``"cuda:0"``, ...; a device in ``UNKNOWN_DEVICES`` (a tracer's) is
    #: never counted as a device of its own.
    device: str
    nan: int = 0
    inf: int = 0
    #: When the counts come from a sample of the values: how many values it held
    #: (``None`` when every value was counted).
    sample: int | None = None
    #: A distributed tensor's placements and mesh (``None`` for a whole tensor).
    placement: str | None = None
    #: For a gradient: laid out as its variable except for reductions still pending (a
    #: DTensor's ``Partial`` placements), which the optimizer step does when asked
    #: (``step(..., reduce_partial=True)``); measured by the array library
    #: (:meth:`~torchlean.runtime.backends.Backend.pending_reduction`).
    pending: bool = False


def facts_of(at: AnyTensor[Any], what: str) -> EntryFacts:
    """The :class:`EntryFacts` of a stored tensor, ``what`` naming it in errors (a
    tensor written in place is refused). Cost: O(numel) for the exact NaN/inf counts."""
    from torchlean.runtime.any_tensor import AnyTensor

    if not isinstance(at, AnyTensor):
        raise TypeError(f"facts_of expects an AnyTensor, got {type(at).__name__}")
    nan, inf = at.library.nonfinite(read_checked(at, what))
    return EntryFacts(at.dims, at.dtype, at.device, nan, inf, placement=at.placement)


def nonfinite_counts(at: AnyTensor[Any]) -> tuple[int, int]:
    """The number of NaN and of infinite elements of a stored tensor (0, 0 for ints)."""
    from torchlean.runtime.any_tensor import AnyTensor

    if not isinstance(at, AnyTensor):
        raise TypeError(f"nonfinite_counts expects an AnyTensor, got {type(at).__name__}")
    return at.library.nonfinite(at.t)


def check_pair(
    name: str, variable: Described | None, gradient: Described, *, index: int = -1
) -> tuple[Problem, ...]:
    """The problems of the gradient ``name`` against its variable (``None`` when the
    context has no variable of that name): an orphan gradient, a shape mismatch, a dtype
    mismatch, a placement mismatch (distributed tensors laid out differently), in that
    order. ``index`` is the gradient's position in its registry.

    Reads only shapes and dtypes: O(1), whatever the tensors hold.
    """
    if not isinstance(name, str):
        raise TypeError(
            f"gradient name must be a str, got {type(name).__name__} {short_repr(name)}"
        )
    if variable is None:
        message = f"gradient `{name}` has no variable of that name"
        return (Problem("orphan-gradient", "gradient", name, message, index),)
    problems: list[Problem] = []
    if variable.dims != gradient.dims:
        problems.append(
            Problem(
                "shape-mismatch",
                "gradient",
                name,
                f"gradient `{name}` has shape {gradient.dims} but its variable"
                f" has shape {variable.dims}",
                index,
            )
        )
    if variable.dtype != gradient.dtype:
        problems.append(
            Problem(
                "dtype-mismatch",
                "gradient",
                name,
                f"gradient `{name}` has dtype {gradient.dtype} but its variable"
                f" has dtype {variable.dtype}",
                index,
            )
        )
    pending = bool(getattr(gradient, "pending", False))
    mismatch = placement_mismatch(name, variable, gradient, pending=pending)
    if mismatch is not None:
        problems.append(Problem("placement-mismatch", "gradient", name, mismatch, index))
    return tuple(problems)


def placement_mismatch(
    name: str, variable: object, gradient: object, *, pending: bool = False
) -> str | None:
    """The message when the gradient ``name`` is laid out over processes differently
    from its variable (their ``placement`` attributes differ), else ``None``. An update
    would have to redistribute it: a collective nobody asked for. ``pending``: the only
    difference is reductions still pending (DTensor ``Partial`` placements), and the
    message says the step reduces them on request. The one text of ``check()``, the
    views and the optimizer step's refusal."""
    have = getattr(gradient, "placement", None)
    want = getattr(variable, "placement", None)
    if have == want:
        return None
    text = (
        f"gradient `{name}` is laid out as {have or 'a whole tensor'} but its variable"
        f" as {want or 'a whole tensor'}; redistribute it explicitly"
        " (e.g. grad.redistribute(var.device_mesh, var.placements) for a DTensor,"
        " jax.device_put(grad, var.sharding) for a jax array)"
    )
    if pending:
        text += (
            ", or let the optimizer step reduce its Partial placements:"
            " step(..., reduce_partial=True) or fit(..., reduce_partial=True) (one"
            " collective per such gradient, on every rank)"
        )
    return text


def _nonfinite(registry: str, name: str, facts: EntryFacts, index: int) -> Problem | None:
    nan, inf = facts.nan, facts.inf
    if not (nan or inf):
        return None
    parts = [f"{nan} NaN"] if nan else []
    if inf:
        parts.append(f"{inf} infinite")
    seen = "" if facts.sample is None else f" in a sample of {facts.sample:,}"
    return Problem(
        "non-finite",
        registry,
        name,
        f"{registry} `{name}` has {' and '.join(parts)} value{'s' if nan + inf != 1 else ''}{seen}",
        index,
    )


def check_entries(
    variables: Sequence[tuple[str, EntryFacts]],
    gradients: Sequence[tuple[str, EntryFacts]] = (),
) -> CheckReport:
    """Every rule over two registries given as ``(name, facts)`` pairs, most recent
    first (shadowed entries included): each gradient against the visible variable of
    its name (:func:`check_pair`), non-finite values in any entry, and tensors on more
    than one device. Problems come variables first, then gradients, each in registry
    order, then the whole-context ones.

    Cost: O(number of entries).
    """
    for argument, pairs in (("variables", variables), ("gradients", gradients)):
        if not isinstance(pairs, Sequence) or isinstance(pairs, str):
            raise TypeError(
                f"check_entries: {argument} must be a sequence of (name, EntryFacts) pairs,"
                f" got {type(pairs).__name__}"
            )
        for pair in pairs:
            if (
                not isinstance(pair, tuple)
                or len(pair) != 2
                or not isinstance(pair[0], str)
                or not isinstance(pair[1], EntryFacts)
            ):
                raise TypeError(
                    f"check_entries: {argument} must hold (name, EntryFacts) pairs,"
                    f" got {short_repr(pair)}"
                )
    visible: dict[str, EntryFacts] = {}
    for name, facts in variables:
        visible.setdefault(name, facts)
    problems: list[Problem] = []
    devices: dict[str, str] = {}
    for registry, entries in (("variable", variables), ("gradient", gradients)):
        for index, (name, facts) in enumerate(entries):
            if facts.device not in UNKNOWN_DEVICES:  # a tracer's device is not known
                devices.setdefault(facts.device, f"{registry} `{name}`")
            if registry == "gradient":
                problems.extend(check_pair(name, visible.get(name), facts, index=index))
            problem = _nonfinite(registry, name, facts, index)
            if problem is not None:
                problems.append(problem)
    if len(devices) > 1:
        where = ", ".join(f"{d} ({first})" for d, first in devices.items())
        problems.append(
            Problem("mixed-devices", "context", "", f"tensors are on several devices: {where}")
        )
    return CheckReport(tuple(problems))


def check_context(ctx: RuntimeContext[Any], *, collective: bool = False) -> CheckReport:
    """Find every problem of ``ctx`` (:func:`check_entries` on exact facts).

    Distributed tensors are read where they are: their counts are this process's local
    shard's, and the report's ``scope`` says so. ``collective=True`` (called on every
    process, on contexts with the same entries) sums the counts over the processes in
    one all-reduce, each element counted once. Cost: O(total elements), plus one
    collective.
    """
    from torchlean.runtime.context import require_context

    require_context(ctx, "check_context")
    if not isinstance(collective, bool):
        raise TypeError(f"check: collective must be a bool, got {short_repr(collective)}")
    entries = [("variable", name, at) for name, at in ctx.var_registry]
    entries += [("gradient", name, at) for name, at in ctx.gradients]
    facts = [facts_of(at, f"{registry} `{name}`") for registry, name, at in entries]
    facts = _with_pending(ctx, entries, facts)
    scope = None
    if collective:
        facts, scope = _summed(entries, facts)
    else:
        local = next((at.library for _, _, at in entries if at.local_dims is not None), None)
        if local is not None:
            scope = f"local shards of {local.local_scope() or 'this process'}"
    n = len(ctx.var_registry)
    variables = [(name, f) for (_, name, _), f in zip(entries[:n], facts[:n], strict=True)]
    gradients = [(name, f) for (_, name, _), f in zip(entries[n:], facts[n:], strict=True)]
    report = check_entries(variables, gradients)
    return CheckReport(report.problems, scope)


def _with_pending(
    ctx: RuntimeContext[Any],
    entries: list[tuple[str, str, AnyTensor[Any]]],
    facts: list[EntryFacts],
) -> list[EntryFacts]:
    """``facts`` with ``pending`` set on each gradient laid out as its visible variable
    except for reductions still pending (asked of the array library; no collective)."""
    from dataclasses import replace

    out = list(facts)
    for i, (registry, name, at) in enumerate(entries):
        if registry != "gradient" or at.placement is None:
            continue
        variable = ctx.variable_entry(name)
        if (
            variable is not None
            and variable.library is at.library
            and variable.placement != at.placement
            and at.library.pending_reduction(at.unchecked, variable.unchecked)
        ):
            out[i] = replace(out[i], pending=True)
    return out


def _summed(
    entries: list[tuple[str, str, AnyTensor[Any]]], facts: list[EntryFacts]
) -> tuple[list[EntryFacts], str]:
    """``facts`` with NaN/infinity counts summed over every process (one all-reduce)."""
    from dataclasses import replace

    counts: list[int] = [len(entries), len(entries) ** 2]
    library = None
    for _, _, at in entries:
        counts.extend(at.library.nonfinite_owned(at.unchecked))
        if library is None or at.placement is not None:
            library = at.library if at.library.all_reduce_sum([]) is not None else library
    if library is None:
        raise TorchLeanError(
            "check(collective=True): no tensor of this context belongs to a library"
            " running a process group (torch.distributed is not initialised); call"
            " check() for this process's answer"
        )
    summed = library.all_reduce_sum(counts)
    assert summed is not None
    total, world = summed
    if total[0] != world * len(entries) or total[1] != world * len(entries) ** 2:
        raise TorchLeanError(
            f"check(collective=True): the contexts of the {world} processes do not have"
            f" the same number of entries (this one has {len(entries)}); every process"
            " must check a context with the same entries"
        )
    out = [replace(f, nan=total[2 + 2 * i], inf=total[3 + 2 * i]) for i, f in enumerate(facts)]
    return out, f"summed over {world} processes"
