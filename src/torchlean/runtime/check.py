"""``RuntimeContext.check``: a report of everything wrong with a context.

The Lean module's ``isValidContext`` answers one yes/no question (does every gradient
name a variable?). Debugging training state needs more: which gradient is orphaned,
which one has the wrong shape or dtype, where a NaN crept in, whether tensors sit on
different devices. This module finds all of it in one pass and returns it as data.

Reading map:
- :class:`Problem` -- one finding: ``kind``, ``registry``, ``name``, ``message``.
- :class:`CheckReport` -- every finding; falsy when something is wrong;
  ``raise_if_problems()``.
- :func:`check_context` -- build the report (``RuntimeContext.check`` calls it).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from torchlean.errors import TorchLeanError
from torchlean.runtime.backends import UNKNOWN_DEVICES, read_checked

if TYPE_CHECKING:
    from torchlean.runtime.any_tensor import AnyTensor
    from torchlean.runtime.context import RuntimeContext

__all__ = ["CheckReport", "Problem", "ProblemKind", "check_context", "nonfinite_counts"]

ProblemKind = Literal[
    "orphan-gradient", "shape-mismatch", "dtype-mismatch", "non-finite", "mixed-devices"
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
            raise TypeError(f"{registry} name must be a str, got {type(name).__name__} {name!r}")
        return [p for p in self.problems if p.registry == registry and p.name == name]

    def __str__(self) -> str:
        if not self.problems:
            return "no problems found"
        lines = [f"{len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}:"]
        lines += [f"- {p.message}" for p in self.problems]
        return "\n".join(lines)

    def raise_if_problems(self) -> None:
        """Raise :class:`~torchlean.errors.TorchLeanError` listing every problem."""
        if self.problems:
            raise TorchLeanError(str(self))


def nonfinite_counts(at: AnyTensor[Any]) -> tuple[int, int]:
    """The number of NaN and of infinite elements of a stored tensor (0, 0 for ints)."""
    from torchlean.runtime.any_tensor import AnyTensor

    if not isinstance(at, AnyTensor):
        raise TypeError(f"nonfinite_counts expects an AnyTensor, got {type(at).__name__}")
    return at._backend.nonfinite(at.t)


def check_context(ctx: RuntimeContext[Any]) -> CheckReport:
    """Find every problem of ``ctx``. Cost: O(total elements)."""
    from torchlean.runtime.context import require_context

    require_context(ctx, "check_context")
    problems: list[Problem] = []
    devices: dict[str, str] = {}
    for registry, entries in (("variable", ctx._v.entries()), ("gradient", ctx._g.entries())):
        for index, (name, at) in enumerate(entries):
            read_checked(at, f"{registry} `{name}`")  # refuse a tensor written in place
            device = at.device
            if device not in UNKNOWN_DEVICES:  # a tracer's device is not known
                devices.setdefault(device, f"{registry} `{name}`")
            if registry == "gradient":
                var = ctx._v.head(name)
                if var is None:
                    problems.append(
                        Problem(
                            "orphan-gradient",
                            registry,
                            name,
                            f"gradient `{name}` has no variable of that name",
                            index,
                        )
                    )
                else:
                    if var._dims != at._dims:
                        problems.append(
                            Problem(
                                "shape-mismatch",
                                registry,
                                name,
                                f"gradient `{name}` has shape {at._dims} but its variable"
                                f" has shape {var._dims}",
                                index,
                            )
                        )
                    if var.dtype != at.dtype:
                        problems.append(
                            Problem(
                                "dtype-mismatch",
                                registry,
                                name,
                                f"gradient `{name}` has dtype {at.dtype} but its variable"
                                f" has dtype {var.dtype}",
                                index,
                            )
                        )
            nan, inf = nonfinite_counts(at)
            if nan or inf:
                parts = [f"{nan} NaN"] if nan else []
                if inf:
                    parts.append(f"{inf} infinite")
                problems.append(
                    Problem(
                        "non-finite",
                        registry,
                        name,
                        f"{registry} `{name}` has {' and '.join(parts)} value"
                        f"{'s' if nan + inf != 1 else ''}",
                        index,
                    )
                )
    if len(devices) > 1:
        where = ", ".join(f"{d} ({first})" for d, first in devices.items())
        problems.append(
            Problem("mixed-devices", "context", "", f"tensors are on several devices: {where}")
        )
    return CheckReport(tuple(problems))
