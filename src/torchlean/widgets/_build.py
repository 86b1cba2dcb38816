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
- ``_Reader`` -- rectangular blocks of a source: through its ``block`` method, else from
  its first elements (at most :data:`HEAD_READ_LIMIT`).
- ``_preview`` / ``_flat`` / ``_pretty`` -- TorchLean's widget preview of a tensor
  (:class:`~torchlean.widgets.Preview`).
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
from torchlean.widgets._model import (
    GRID_COLS,
    GRID_ROWS,
    HEAD,
    PREVIEW_COLS,
    PREVIEW_DEPTH,
    PREVIEW_ELEMS,
    PREVIEW_ROWS,
    PREVIEW_SLICES,
    Preview,
    Row,
    Stats,
    Summary,
)
from torchlean.widgets._sources import BLOCK, TensorSource, source_of

if TYPE_CHECKING:
    from torchlean.runtime.context import RuntimeContext

__all__ = ["HEAD_READ_LIMIT", "SAMPLE_LIMIT", "as_summary", "summarize", "summarize_sources"]

#: Statistics of a tensor with more elements than this are computed on a sample.
SAMPLE_LIMIT = 1 << 20
#: A source without a ``block`` method is read through ``head``, at most this many
#: first elements per tensor; a preview part beyond them is not shown.
HEAD_READ_LIMIT = 1 << 18

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
        notes=(f"distributed tensors: shapes, values and counts are {report.scope}",)
        if report.scope
        else (),
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
    read = _Reader(src, dims)
    first: tuple[str, ...] = ()
    grid: tuple[tuple[str, ...], ...] = ()
    # The compact grid covers the first matrix (the last two axes); 1-D is one row.
    rows_total, cols_total = (dims[-2], dims[-1]) if len(dims) >= 2 else (1, numel)
    preview: Preview | None = None
    if numel:
        head, _ = _flat(read, dims, (), HEAD)
        first = head
        lead: tuple[int | slice, ...] = tuple(0 for _ in dims[:-2])
        if len(dims) >= 2:
            block = read((*lead, slice(0, GRID_ROWS), slice(0, GRID_COLS)))
        else:
            block = read((slice(0, GRID_COLS),) if dims else ())
        if block is not None:
            block = block.reshape(-1, min(cols_total, GRID_COLS))
            grid = tuple(_cells(line) for line in block)
    try:
        preview = _preview(read, dims, (), PREVIEW_DEPTH)
    except _Unread:
        preview = None
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
        grid=grid,
        grid_more_rows=rows_total > len(grid) or math.prod(dims[:-2]) > 1,
        grid_more_cols=cols_total > min(cols_total, GRID_COLS),
        stats=stats,
        preview=preview,
    )


class _Unread(Exception):
    """A part of the preview lies beyond what the source can read."""


Index = tuple[int | slice, ...]


class _Reader:
    """Rectangular blocks ``t[index]`` of a source (an int or a ``slice(start, stop)``
    per leading axes; the axes after the index are whole), as plain numpy arrays with
    one axis per slice. Through the source's ``block`` method when it has one, else
    from its first elements: read once, re-read doubled when a block lies further, up
    to :data:`HEAD_READ_LIMIT` (a block beyond that raises ``_Unread``)."""

    def __init__(self, src: TensorSource, dims: tuple[int, ...]) -> None:
        self._src = src
        self._dims = dims
        self._block = getattr(src, BLOCK, None)
        self._head: np.ndarray[Any, Any] = np.zeros(0)

    def __call__(self, index: Index) -> np.ndarray[Any, Any]:
        dims = self._dims
        full = list(index) + [slice(0, d) for d in dims[len(index) :]]
        spans = [
            (i, i + 1) if isinstance(i, int) else (i.start, min(i.stop, d))
            for i, d in zip(full, dims, strict=True)
        ]
        shape = tuple(b - a for (a, b), i in zip(spans, full, strict=True) if isinstance(i, slice))
        if any(b <= a for a, b in spans):
            return np.zeros(shape)
        if self._block is not None:
            raw = self._block(tuple(slice(a, b) for a, b in spans))
            return _as_plain(raw).reshape(shape)
        # the flat offset of the block's last element
        last = sum((b - 1) * inner for (_, b), inner in zip(spans, _strides(dims), strict=True))
        if last >= self._head.size:
            numel = math.prod(dims)
            if last >= HEAD_READ_LIMIT:
                raise _Unread
            want = min(numel, HEAD_READ_LIMIT, max(last + 1, 2 * self._head.size, PREVIEW_ELEMS))
            self._head = _as_plain(self._src.head(want))
        flat = np.ravel_multi_index(np.ix_(*(np.arange(a, b) for a, b in spans)), dims)
        return self._head[flat].reshape(shape)


def _strides(dims: tuple[int, ...]) -> list[int]:
    return [math.prod(dims[k + 1 :]) for k in range(len(dims))]


def _cells(values: np.ndarray[Any, Any]) -> tuple[str, ...]:
    return tuple(format_number(v) for v in values.reshape(-1).tolist())


def _preview(read: _Reader, dims: tuple[int, ...], at: tuple[int, ...], depth: int) -> Preview:
    """TorchLean's ``tensorHtml`` of the slice ``t[at]``, ``depth`` levels left."""
    sub = dims[len(at) :]
    if depth == 0:
        flat, clipped = _flat(read, dims, at, PREVIEW_ELEMS)
        return Preview(
            "nested", sub, pretty=_pretty(read, dims, at), flat=flat, flat_clipped=clipped
        )
    if not sub:
        return Preview("scalar", sub, cells=(_cells(read(at)),))
    if len(sub) == 1:
        shown = read((*at, slice(0, PREVIEW_COLS)))
        return Preview("vector", sub, cells=(_cells(shown),), clipped_cols=sub[0] > PREVIEW_COLS)
    if len(sub) == 2:
        block = read((*at, slice(0, PREVIEW_ROWS), slice(0, PREVIEW_COLS)))
        return Preview(
            "matrix",
            sub,
            cells=tuple(_cells(line) for line in block),
            clipped_rows=sub[0] > PREVIEW_ROWS,
            clipped_cols=sub[1] > PREVIEW_COLS,
        )
    slices = tuple(
        _preview(read, dims, (*at, i), depth - 1) for i in range(min(sub[0], PREVIEW_SLICES))
    )
    flat, clipped = _flat(read, dims, at, PREVIEW_ELEMS)
    return Preview(
        "slices",
        sub,
        slices=slices,
        clipped_slices=sub[0] > PREVIEW_SLICES,
        flat=flat,
        flat_clipped=clipped,
    )


def _flat(
    read: _Reader, dims: tuple[int, ...], at: tuple[int, ...], n: int
) -> tuple[tuple[str, ...], bool]:
    """The first ``n`` values of ``t[at]`` in row-major order, and whether there are
    more; one read of fewer than ``2 n`` elements."""
    sub = dims[len(at) :]
    size = math.prod(sub)
    want = min(n, size)
    if want == 0:
        return (), size > n
    index: tuple[int | slice, ...] = at
    while len(sub) > 1 and math.prod(sub[1:]) >= want:  # the head lies in slice 0
        index, sub = (*index, 0), sub[1:]
    if sub:
        inner = math.prod(sub[1:])
        index = (*index, slice(0, -(-want // inner)))
    return _cells(read(index).reshape(-1)[:want]), size > n


def _pretty(read: _Reader, dims: tuple[int, ...], at: tuple[int, ...]) -> str:
    """``Spec.pretty`` of ``t[at]`` (``[a, b]`` per axis), each axis cut to the
    preview's limits: the last to :data:`PREVIEW_COLS`, the one before to
    :data:`PREVIEW_ROWS`, the others to :data:`PREVIEW_SLICES`; ``...`` marks a cut."""
    sub = dims[len(at) :]
    limits = [PREVIEW_SLICES] * len(sub)
    if sub:
        limits[-1] = PREVIEW_COLS
    if len(sub) >= 2:
        limits[-2] = PREVIEW_ROWS
    block = read(at + tuple(slice(0, k) for k in limits))
    text = np.vectorize(format_number, otypes=[object])(block) if block.size else block

    def go(a: Any, axis: int) -> str:
        if axis == len(sub):
            return str(a)
        parts = [go(a[i], axis + 1) for i in range(a.shape[0])]
        if sub[axis] > limits[axis]:
            parts.append("...")
        return "[" + ", ".join(parts) + "]"

    return go(text, 0)


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
