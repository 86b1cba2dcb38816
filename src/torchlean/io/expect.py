"""Check weights against what a model expects, reporting every problem at once.

``load_state_dict(strict=False)`` silently skips keys; here every missing, unexpected
and mismatched entry is listed in one :class:`~torchlean.errors.ExpectationError`, with
"did you mean" for near misses (a ``module.`` prefix, a typo), before anything changes.

:func:`compare` is the one comparison of names, shapes and dtypes in torchlean: behind
``load(expect=...)``, ``check_expected``, ``load_into``, the CLI's ``check``,
``convert`` (its read-back check) and ``diff``, and the training checkpoints. Each
caller words the report its own way; none compares names or shapes itself.

Reading map:
- :func:`compare` -- the report of two sets of names to shapes (and dtypes).
- :func:`check_expected` -- compare a context (or a file summary) with an expectation.
- :class:`ExpectReport` -- what was found: ``missing``, ``unexpected``, ``mismatched``,
  ``suggestions``; ``ok`` and ``raise_if_bad``.
- :func:`tied_names` -- the tied weights of a context or a module (a tied name is not
  missing when the name it is tied to is there).
- :func:`expected_specs` -- an expectation (mapping, context or ``nn.Module``) as
  ``{name: (shape, dtype or None)}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torchlean._text import did_you_mean
from torchlean._validate import require_bool
from torchlean.errors import ExpectationError, InvalidShapeError
from torchlean.runtime.dtypes import dtype_name
from torchlean.spec.shape import Shape, as_dims

__all__ = [
    "ExpectReport",
    "Mismatch",
    "check_expected",
    "compare",
    "expected_specs",
    "tied_names",
]

Spec = tuple[tuple[int, ...], str | None]

_PREFIX = "module."


@dataclass(frozen=True)
class Mismatch:
    """An entry whose shape or dtype differs from the expected one."""

    name: str
    what: str  # "shape" or "dtype"
    expected: Any
    got: Any

    def __str__(self) -> str:
        return f"`{self.name}`: expected {self.what} {self.expected}, got {self.got}"


@dataclass(frozen=True)
class ExpectReport:
    """Every difference between some weights and what a model expects."""

    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    mismatched: tuple[Mismatch, ...] = ()
    #: missing name -> the unexpected name that is probably meant for it.
    suggestions: dict[str, str] = field(default_factory=dict)
    source: str = "the weights"

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        if self.ok:
            return f"{self.source} match what is expected"
        n = len(self.missing) + len(self.unexpected) + len(self.mismatched)
        lines = [f"{self.source} do not match what is expected ({n} problem{'s' * (n != 1)}):"]
        for name in self.missing:
            hint = self.suggestions.get(name)
            extra = f" (did you mean `{hint}`?)" if hint else ""
            lines.append(f"  missing `{name}`{extra}")
        for name in self.unexpected:
            lines.append(f"  unexpected `{name}`")
        for m in self.mismatched:
            lines.append(f"  mismatched {m}")
        hints = set(self.suggestions.values())
        if hints and all(
            self.suggestions[m] == _PREFIX + m or m == _PREFIX + self.suggestions[m]
            for m in self.suggestions
        ):
            lines.append(
                "  hint: the names differ by a `module.` prefix (a DataParallel checkpoint);"
                ' load with strip_prefix="module."'
            )
        return "\n".join(lines)

    def raise_if_bad(self) -> None:
        """Raise :class:`~torchlean.errors.ExpectationError` with every problem."""
        if not self.ok:
            raise ExpectationError(str(self))


def _spec(value: Any, name: str) -> Spec:
    if isinstance(value, Shape):
        return value.dims, None
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return tuple(int(d) for d in value.shape), dtype_name(value.dtype)
    if (
        isinstance(value, tuple)
        and len(value) == 2
        and not isinstance(value[0], int)
        and not isinstance(value[1], int)
    ):
        try:
            return as_dims(value[0]), dtype_name(value[1])
        except InvalidShapeError as e:
            raise InvalidShapeError(f"expected entry `{name}`: {e}") from None
        except TypeError as e:
            raise TypeError(f"expected entry `{name}`: {e}") from None
    try:
        return as_dims(value), None
    except InvalidShapeError as e:
        raise InvalidShapeError(f"expected entry `{name}`: {e}") from None
    except (TypeError, ValueError):
        raise TypeError(
            f"expected entry `{name}` must be a shape, a (shape, dtype) pair or an array,"
            f" got {value!r}"
        ) from None


def expected_specs(expect: Any, *, argument: str = "expect") -> dict[str, Spec]:
    """``expect`` (a mapping, a context, a file summary or an ``nn.Module``) as
    ``{name: (shape, dtype or None)}``. ``argument`` names it in errors. Cost: O(n)."""
    from torchlean.io._summary import FileSummary
    from torchlean.runtime.context import RuntimeContext

    if isinstance(expect, RuntimeContext):
        specs: dict[str, Spec] = {n: (at.dims, at.dtype) for n, at in expect.latest_variables()}
        for alias, canonical in expect.aliases().items():
            if canonical in specs:
                specs.setdefault(alias, specs[canonical])
        return specs
    if isinstance(expect, FileSummary):
        return {e.name: (e.shape, e.dtype) for e in expect.variables if not e.shadowed}
    if isinstance(expect, Mapping):
        for n in expect:
            if not isinstance(n, str):
                raise TypeError(f"{argument}: names must be str, got {type(n).__name__} {n!r}")
        return {n: _spec(v, n) for n, v in expect.items()}
    state_dict = getattr(expect, "state_dict", None)
    if callable(state_dict) and type(expect).__module__.split(".")[0] != "builtins":
        return {n: _spec(t, n) for n, t in state_dict().items()}
    raise TypeError(
        f"{argument} must be a mapping of name to shape, a RuntimeContext or a torch"
        f" nn.Module, got {type(expect).__name__}"
    )


def tied_names(value: Any) -> dict[str, str]:
    """``{alias: canonical}``: a context's aliases, or the state_dict entries of an
    ``nn.Module`` that are one tensor (the first name canonical). Cost: O(n)."""
    from torchlean.runtime.context import RuntimeContext

    if isinstance(value, RuntimeContext):
        return value.aliases()
    if isinstance(value, Mapping) or not callable(getattr(value, "state_dict", None)):
        return {}
    if type(value).__module__.split(".")[0] == "builtins":
        return {}
    try:
        entries = value.state_dict(keep_vars=True)
    except TypeError:
        return {}
    first: dict[int, str] = {}
    ties: dict[str, str] = {}
    for n, t in entries.items():
        canonical = first.setdefault(id(t), n)
        if canonical != n:
            ties[n] = canonical
    return ties


def _suggest(name: str, candidates: list[str]) -> str | None:
    for c in candidates:
        if c == _PREFIX + name or name == _PREFIX + c:
            return c
    close = did_you_mean(name, candidates, n=1, cutoff=0.75)
    return close[0] if close else None


def check_expected(
    weights: Any, expect: Any, *, dtypes: bool = False, source: str = "the weights"
) -> ExpectReport:
    """Compare ``weights`` (a context, file summary or mapping) with ``expect``.

    Compares the most recent variable of each name; ``dtypes=True`` also compares
    dtypes where both sides know them. Returns the report; raises
    :class:`~torchlean.errors.ExpectationError` listing every problem when it is not
    ``ok``. Cost: O(n) (plus difflib over the unmatched names).
    """
    report = compare(weights, expect, dtypes=dtypes, source=source)
    report.raise_if_bad()
    return report


def compare(
    weights: Any,
    expect: Any,
    *,
    dtypes: bool = False,
    source: str = "the weights",
    suggest: bool = True,
) -> ExpectReport:
    """Like :func:`check_expected`, returning the report without raising.

    ``missing`` and ``mismatched`` follow ``expect``'s order, ``unexpected`` follows
    ``weights``'; a shape mismatch is reported before (and instead of) a dtype one.
    ``suggest=False`` skips the "did you mean" search (difflib). Cost: O(n), plus
    difflib over the unmatched names when ``suggest``.
    """
    require_bool(suggest, "compare", "suggest")
    have = expected_specs(weights, argument="weights")
    want = expected_specs(expect)
    # a tied weight's second name (GPT-2's `lm_head.weight`) is not missing when the
    # name it is tied to is there
    for alias, canonical in tied_names(weights).items():
        if alias not in have and canonical in have:
            have[alias] = have[canonical]
    optional = tied_names(expect)
    missing = [n for n in want if n not in have and not (n in optional and optional[n] in have)]
    unexpected = [n for n in have if n not in want]
    mismatched: list[Mismatch] = []
    for name, (shape, dtype) in want.items():
        got = have.get(name)
        if got is None:
            continue
        if got[0] != shape:
            mismatched.append(Mismatch(name, "shape", shape, got[0]))
        elif dtypes and dtype is not None and got[1] is not None and got[1] != dtype:
            mismatched.append(Mismatch(name, "dtype", dtype, got[1]))
    suggestions: dict[str, str] = {}
    for name in missing if suggest else ():
        hint = _suggest(name, [u for u in unexpected if u not in suggestions.values()])
        if hint is not None:
            suggestions[name] = hint
    return ExpectReport(tuple(missing), tuple(unexpected), tuple(mismatched), suggestions, source)
