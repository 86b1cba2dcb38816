"""Parameter groups and the weight-decay mask: per-name hyperparameters.

``torch.optim`` takes ``[{"params": [...], "lr": ..., "weight_decay": ...}, ...]``; optax
takes ``mask=`` and ``multi_transform``. Here a group names its parameters by name or
``fnmatch`` glob (``"encoder.*"``), and ``no_decay`` (``("*.bias", "*norm*")``) sets the
weight decay of the names it matches to zero, whatever their group. Each name resolves
to one :class:`~torchlean.optim._hyper.Hyper`; a step runs the update once per distinct
Hyper (one fused kernel per group, as ``torch.optim`` does), over the parameters that
resolve to it.

Reading map:
- :class:`Groups` -- the resolved table: ``hypers`` (index 0 is the optimizer's own),
  ``index(name)``, ``split(names)``, ``check(names)``.
- :func:`run_grouped` -- one update split by group; every group reads the same step
  count (a schedule gives each the same step), and the count advances once.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torchlean._text import unmatched_patterns
from torchlean.errors import UnknownNameError
from torchlean.optim._hyper import Hyper
from torchlean.runtime.backends import Backend
from torchlean.runtime.backends._update import Update, Updated

__all__ = ["GROUP_KEYS", "Groups", "run_grouped"]

#: The hyperparameters a group may set (those that do not change the state's slots).
GROUP_KEYS = ("lr", "weight_decay", "momentum", "dampening", "nesterov", "betas", "eps")


def _patterns(value: object, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Sequence) and value and all(isinstance(p, str) for p in value):
        return tuple(value)
    raise TypeError(
        f"{where} must be a name or glob pattern (str) or a list of them, got {value!r}"
    )


def _override(base: Hyper, spec: Mapping[str, Any], where: str) -> Hyper:
    unknown = [k for k in spec if k != "params" and k not in GROUP_KEYS]
    if unknown:
        raise ValueError(
            f"{where}: unknown hyperparameter {unknown[0]!r}; a group may set"
            f" {', '.join(GROUP_KEYS)}"
        )
    changes: dict[str, Any] = {}
    for key, value in spec.items():
        if key == "params":
            continue
        if key == "betas":
            if (
                not isinstance(value, (tuple, list))
                or len(value) != 2
                or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in value)
            ):
                raise TypeError(
                    f"{where}: betas must be a pair of numbers (beta1, beta2), got {value!r}"
                )
            for i, beta in enumerate(value):
                if not 0.0 <= beta < 1.0:
                    raise ValueError(f"{where}: invalid beta parameter at index {i}: {beta}")
            changes["beta1"], changes["beta2"] = float(value[0]), float(value[1])
            continue
        if key == "nesterov":
            if not isinstance(value, bool):
                raise TypeError(f"{where}: nesterov must be a bool, got {value!r}")
        elif key == "lr" and callable(value):
            pass
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(
                f"{where}: {key} must be a number, got {type(value).__name__} {value!r}"
            )
        elif value < 0:
            raise ValueError(f"{where}: {key} must be >= 0, got {value!r}")
        changes[key] = value
    new = dataclasses.replace(base, **changes)
    if new.nesterov and (new.momentum <= 0 or new.dampening != 0):
        raise ValueError(
            f"{where}: nesterov momentum requires a momentum and zero dampening (the group"
            f" has momentum={new.momentum}, dampening={new.dampening})"
        )
    if new.slots != base.slots:
        raise ValueError(
            f"{where}: a group cannot change which moments the state holds"
            f" ({', '.join(base.slots) or 'none'} for the optimizer); set momentum to a"
            " non-zero value for every group or for none"
        )
    return new


class Groups:
    """Which :class:`Hyper` each parameter name resolves to."""

    def __init__(
        self, base: Hyper, groups: Sequence[Mapping[str, Any]], no_decay: Sequence[str]
    ) -> None:
        if not isinstance(groups, Sequence) or isinstance(groups, (str, bytes)):
            raise TypeError(
                "groups must be a list of mappings such as"
                f' {{"params": "encoder.*", "lr": 1e-4}}, got {groups!r}'
            )
        self.base = base
        self.patterns: list[tuple[str, ...]] = []
        specs: list[Hyper] = []
        for i, spec in enumerate(groups):
            where = f"groups[{i}]"
            if not isinstance(spec, Mapping) or "params" not in spec:
                raise TypeError(
                    f'{where} must be a mapping with a "params" name or glob pattern, got {spec!r}'
                )
            self.patterns.append(_patterns(spec["params"], f"{where}['params']"))
            specs.append(_override(base, spec, where))
        self.no_decay = () if not no_decay else _patterns(no_decay, "no_decay")
        self.hypers: list[Hyper] = [base]
        self._group_hypers = specs
        self._index: dict[str, int] = {}

    @property
    def group_hypers(self) -> tuple[Hyper, ...]:
        """The hyperparameters of each entry of ``groups=``, in order."""
        return tuple(self._group_hypers)

    @property
    def trivial(self) -> bool:
        """True when every name resolves to the optimizer's own hyperparameters."""
        return not self.patterns and not self.no_decay

    def index(self, name: str) -> int:
        """The index in :attr:`hypers` of ``name``'s hyperparameters. Cost: O(p) once."""
        found = self._index.get(name)
        if found is not None:
            return found
        hyper = self.base
        for pats, group in zip(self.patterns, self._group_hypers, strict=True):
            if any(fnmatch.fnmatchcase(name, p) for p in pats):
                hyper = group
                break
        if any(fnmatch.fnmatchcase(name, p) for p in self.no_decay):
            hyper = dataclasses.replace(hyper, weight_decay=0.0)
        try:
            found = self.hypers.index(hyper)
        except ValueError:
            found = len(self.hypers)
            self.hypers.append(hyper)
        self._index[name] = found
        return found

    def split(self, names: Sequence[str]) -> list[tuple[int, list[int]]]:
        """``(hyper index, positions in names)`` for each group present, in order of first
        appearance. Cost: O(len(names))."""
        out: dict[int, list[int]] = {}
        for i, name in enumerate(names):
            out.setdefault(self.index(name), []).append(i)
        return list(out.items())

    def check(self, names: Sequence[str]) -> None:
        """Raise :class:`~torchlean.errors.UnknownNameError` when a group's or
        ``no_decay``'s pattern matches none of ``names`` (a typo would silently leave
        those parameters with the defaults)."""
        pats = [p for group in self.patterns for p in group] + list(self.no_decay)
        unused = unmatched_patterns(pats, names)
        if unused:
            raise UnknownNameError(
                f"optimizer groups: {unused} no parameter (the context has {len(names)}"
                " floating-point variables)"
            )


def run_grouped(
    groups: Groups,
    updater: Callable[[int], Callable[[Update], Updated]],
    library: Backend,
    donate: bool,
    names: Sequence[str],
    update: Update,
) -> Updated:
    """``update`` run once per group (``updater(i)`` runs the group of ``hypers[i]``).

    Every group reads the step count as it was: with ``donate`` (the count may be
    written in place) the groups after the first get a copy. Cost: one update call per
    group present.
    """
    split = groups.split(names)
    if len(split) == 1:
        return updater(split[0][0])(update)
    n = len(names)
    params: list[Any] = [None] * n
    steps: list[Any] = [None] * n
    slots: dict[str, list[Any]] = {k: [None] * n for k in update.slots}
    counts = [update.count] + [
        library.copy(update.count) if donate else update.count for _ in split[1:]
    ]
    new_count: Any = None
    for (index, ix), count in zip(split, counts, strict=True):
        sub = Update(
            [update.params[i] for i in ix],
            [update.grads[i] for i in ix],
            {k: [v[i] for i in ix] for k, v in update.slots.items()},
            [update.steps[i] for i in ix],
            count,
        )
        out = updater(index)(sub)
        for j, i in enumerate(ix):
            params[i] = out.params[j]
            steps[i] = out.steps[j]
            for k, values in out.slots.items():
                slots[k][i] = values[j]
        if new_count is None:
            new_count = out.count
    return Updated(params, slots, steps, new_count)
