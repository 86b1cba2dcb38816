"""Building a :class:`~torchlean.widgets.Summary`: rows, previews, statistics, problems.

A context is summarised from its stored tensors (:func:`summarize`), a file from
:class:`~torchlean.widgets.TensorSource` objects over its entries
(:func:`summarize_sources`, which the CLI calls with sources over ``io.inspect``'s
records). Both find their problems with the same rules,
:func:`torchlean.runtime.check.check_entries`: the context view on exact counts
(``ctx.check()``), the file view on the statistics it computed (sampled for a big
tensor, and then said so).

Reading map:
- :data:`SAMPLE_LIMIT` -- statistics of a bigger tensor are computed on a sample.
- :func:`summarize` -- the summary of a :class:`~torchlean.RuntimeContext`.
- :func:`summarize_sources` -- the summary of entries read through sources (files).
- :func:`as_summary` -- what the renderers call on what they are given.
- ``_rows`` / ``_row`` / ``_stats`` / ``_norm`` -- one row: preview, statistics and, on
  a variable, the norm of its gradient; ``_attach`` puts each problem on its row.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from torchlean.runtime.check import EntryFacts, Problem, check_entries
from torchlean.runtime.dtypes import itemsize, render_array
from torchlean.widgets._format import count, format_number
from torchlean.widgets._model import GRID_COLS, GRID_ROWS, HEAD, Row, Stats, Summary
from torchlean.widgets._sources import TensorSource, source_of

if TYPE_CHECKING:
    from torchlean.runtime.context import RuntimeContext

__all__ = ["SAMPLE_LIMIT", "as_summary", "summarize", "summarize_sources"]

#: Statistics of a tensor with more elements than this are computed on a sample.
SAMPLE_LIMIT = 1 << 20

Entries = Sequence[tuple[str, TensorSource]]


def summarize(
    ctx: RuntimeContext[Any], *, sample_limit: int = SAMPLE_LIMIT, title: str | None = None
) -> Summary:
    """The :class:`Summary` of ``ctx``: every entry of both registries, the problems
    :meth:`~torchlean.RuntimeContext.check` finds, flagged on their rows.

    Cost: O(total elements) for ``check`` (exact NaN/inf counts), plus O(sample_limit)
    per tensor for the statistics.
    """
    from torchlean.errors import DonatedContextError
    from torchlean.runtime.context import is_donated, require_context

    require_context(ctx, "summarize")
    _check_limit(sample_limit)
    if title is not None and not isinstance(title, str):
        raise TypeError(f"summarize: title must be a str, got {type(title).__name__}")
    if is_donated(ctx):  # nothing left to show; say why
        try:
            ctx.check()
        except DonatedContextError as e:
            reason = str(e)
        else:  # pragma: no cover - a donated context always refuses
            reason = "this context was donated"
        return Summary(
            title=f"RuntimeContext: {reason}", variables=(), gradients=(), problems=(), donated=True
        )
    report = ctx.check()
    variables = [(name, source_of(at)) for name, at in ctx.var_registry]
    gradients = [(name, source_of(at)) for name, at in ctx.gradients]
    if title is None:
        title = (
            f"RuntimeContext: {count(len(variables), 'variable')},"
            f" {count(len(gradients), 'gradient')}"
        )
    summary = Summary(
        title=title,
        variables=(),
        gradients=(),
        problems=(),
        next_id=ctx.next_id,
    )
    return _attach(_with_rows(summary, variables, gradients, sample_limit), report.problems)


def summarize_sources(
    title: str,
    variables: Sequence[tuple[str, TensorSource]],
    gradients: Sequence[tuple[str, TensorSource]] = (),
    *,
    sample_limit: int = SAMPLE_LIMIT,
    next_id: int | None = None,
    notes: Iterable[str] = (),
    oldest_first: bool = False,
) -> Summary:
    """The :class:`Summary` of entries read through :class:`TensorSource` objects
    (registries most recent first), with the problems found from what was read:
    orphan gradients, shape and dtype mismatches, non-finite values seen in the
    (possibly sampled) data, and tensors on several devices.

    ``oldest_first`` lists the rows in the order the entries were registered (a file's
    order) instead of most recent first; shadowing is the same either way.

    Cost: O(sample_limit) elements read per tensor.
    """
    if not isinstance(title, str):
        raise TypeError(f"summarize_sources: title must be a str, got {type(title).__name__}")
    for argument, pairs in (("variables", variables), ("gradients", gradients)):
        if not isinstance(pairs, Sequence) or isinstance(pairs, str):
            raise TypeError(
                f"summarize_sources: {argument} must be a sequence of (name, source) pairs,"
                f" got {type(pairs).__name__}"
            )
    _check_limit(sample_limit)
    summary = Summary(
        title=title,
        variables=(),
        gradients=(),
        problems=(),
        next_id=next_id,
        notes=tuple(notes),
    )
    summary = _with_rows(summary, variables, gradients, sample_limit)
    # The rules read what the rows hold: shapes, dtypes, devices, and the NaN/inf
    # counts of the statistics just computed (exact unless sampled).
    report = check_entries(
        [(r.name, _facts(r)) for r in summary.variables],
        [(r.name, _facts(r)) for r in summary.gradients],
    )
    summary = _attach(summary, report.problems)
    if oldest_first:
        summary = replace(
            summary, variables=summary.variables[::-1], gradients=summary.gradients[::-1]
        )
    return summary


def as_summary(obj: Any) -> Summary:
    """``obj`` itself when it is a :class:`Summary`, else the summary of a context."""
    from torchlean.runtime.context import RuntimeContext

    if isinstance(obj, Summary):
        return obj
    if not isinstance(obj, RuntimeContext):
        raise TypeError(
            f"expected a RuntimeContext or a widgets.Summary to show, got {type(obj).__name__}"
        )
    return summarize(obj)


def _check_limit(sample_limit: object) -> None:
    if isinstance(sample_limit, bool) or not isinstance(sample_limit, int) or sample_limit < 1:
        raise ValueError(f"sample_limit must be a positive int, got {sample_limit!r}")


def _facts(r: Row) -> EntryFacts:
    """What the rules read of a row: exact counts unless its statistics were sampled."""
    s = r.stats
    if s is None:
        return EntryFacts(r.dims, r.dtype, r.device)
    return EntryFacts(r.dims, r.dtype, r.device, s.nan, s.inf, s.counted if s.sampled else None)


# ---------------------------------------------------------------------- rows


def _with_rows(summary: Summary, variables: Entries, gradients: Entries, limit: int) -> Summary:
    """``summary`` with a row for every entry; a visible variable carries the norm of
    the most recent gradient of its name."""
    grad_head: dict[str, TensorSource] = {}
    for name, src in gradients:
        grad_head.setdefault(name, src)
    norms: dict[str, tuple[float | None, bool]] = {}

    def rows(registry: str, entries: Entries) -> tuple[Row, ...]:
        seen: set[str] = set()
        out = []
        for index, (name, src) in enumerate(entries):
            row = _row(registry, index, name, src, name in seen, limit)
            seen.add(name)
            if registry == "variable" and not row.shadowed:
                # the gradient of a name belongs to its visible (first) entry
                g = grad_head.get(name)
                if g is not None:
                    if name not in norms:
                        norms[name] = _norm(g, limit)
                    norm, sampled = norms[name]
                    row = replace(row, has_gradient=True, gradient_norm=norm, norm_sampled=sampled)
            out.append(row)
        return tuple(out)

    return replace(
        summary, variables=rows("variable", variables), gradients=rows("gradient", gradients)
    )


def _attach(summary: Summary, problems: tuple[Problem, ...]) -> Summary:
    """Put each problem on its row (by registry and index) and on the summary."""

    def flag(rows: tuple[Row, ...], registry: str) -> tuple[Row, ...]:
        by_index: dict[int, list[Problem]] = {}
        for p in problems:
            if p.registry == registry:
                by_index.setdefault(p.index, []).append(p)
        return tuple(
            replace(r, problems=tuple(by_index[r.index])) if r.index in by_index else r
            for r in rows
        )

    return replace(
        summary,
        variables=flag(summary.variables, "variable"),
        gradients=flag(summary.gradients, "gradient"),
        problems=problems,
    )


def _row(
    registry: str, index: int, name: str, src: TensorSource, shadowed: bool, limit: int
) -> Row:
    dims = tuple(int(d) for d in src.dims)
    numel = math.prod(dims)
    dtype = src.dtype
    size = _itemsize(dtype)
    # The preview grid covers the first matrix (the last two axes); 1-D is one row.
    if len(dims) >= 2:
        rows_total, cols_total = dims[-2], dims[-1]
    else:
        rows_total, cols_total = 1, numel
    cols = min(cols_total, GRID_COLS)
    nrows = min(rows_total, GRID_ROWS)
    if cols_total <= 4 * GRID_COLS:
        want = nrows * cols_total
    else:  # wide rows: read only the first row's leading values
        want, nrows = cols, 1 if rows_total else 0
    want = min(max(want, HEAD), numel)
    head = _as_plain(src.head(want)) if numel else np.zeros(0)
    first = tuple(format_number(v) for v in head[:HEAD].tolist())
    grid: list[tuple[str, ...]] = []
    if numel:
        if cols_total <= 4 * GRID_COLS:
            for r in range(nrows):
                line = head[r * cols_total : r * cols_total + cols]
                grid.append(tuple(format_number(v) for v in line.tolist()))
        else:
            grid.append(tuple(format_number(v) for v in head[:cols].tolist()))
    stats = _stats(src, limit) if numel else None
    return Row(
        registry=registry,
        index=index,
        name=name,
        dims=dims,
        dtype=dtype,
        device=src.device,
        numel=numel,
        nbytes=None if size is None else numel * size,
        shadowed=shadowed,
        first=first,
        grid=tuple(grid),
        grid_more_rows=rows_total > len(grid) or math.prod(dims[:-2]) > 1,
        grid_more_cols=cols_total > cols,
        stats=stats,
    )


def _as_plain(a: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Values numpy can compute on: the extended floats (bfloat16, float8) become
    float32 (:func:`~torchlean.runtime.dtypes.render_array`), booleans int8."""
    a = render_array(np.asarray(a).reshape(-1))
    if a.dtype.kind == "b":
        return a.astype(np.int8)
    return a


def _itemsize(dtype: str) -> int | None:
    """Bytes per element, or None for a dtype name the runtime does not know."""
    try:
        return itemsize(dtype)
    except TypeError:
        return None


def _stats(src: TensorSource, limit: int) -> Stats | None:
    values, sampled = src.sample(limit)
    a = _as_plain(values)
    n = int(a.size)
    if a.dtype.kind == "c":
        nan = int(np.count_nonzero(np.isnan(a)))
        inf = int(np.count_nonzero(np.isinf(a)))
        return Stats(None, None, None, nan, inf, n, sampled)
    if a.dtype.kind == "f":
        nan_mask = np.isnan(a)
        inf_mask = np.isinf(a)
        nan = int(np.count_nonzero(nan_mask))
        inf = int(np.count_nonzero(inf_mask))
        finite = a[~(nan_mask | inf_mask)] if nan or inf else a
    elif a.dtype.kind in "iu":
        nan = inf = 0
        finite = a
    else:
        return None
    if finite.size == 0:
        return Stats(None, None, None, nan, inf, n, sampled)
    return Stats(
        float(finite.min()),
        float(finite.max()),
        float(finite.mean(dtype=np.float64)),
        nan,
        inf,
        n,
        sampled,
    )


def _norm(src: TensorSource, limit: int) -> tuple[float | None, bool]:
    """The L2 norm; from a sample, scaled up to the whole tensor (an estimate)."""
    numel = math.prod(src.dims)
    if numel == 0:
        return 0.0, False
    values, sampled = src.sample(limit)
    a = _as_plain(values)
    if a.dtype.kind not in "fciu":
        return None, False
    squares = float(
        np.sum(np.abs(a.astype(np.complex128 if a.dtype.kind == "c" else np.float64)) ** 2)
    )
    if sampled and a.size:
        squares *= numel / a.size
    return math.sqrt(squares), sampled
