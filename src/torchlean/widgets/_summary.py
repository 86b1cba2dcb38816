"""What the views show: a plain-data summary of a context (or of a checkpoint file).

Every renderer (text, rich, HTML, the CLI's JSON) draws the same :class:`Summary`, so
they can never disagree. A summary reads each tensor through a :class:`TensorSource`
that can give its first elements and a bounded sample, which is how the CLI summarises
a multi-GB checkpoint without reading it whole.

Reading map:
- :class:`Stats` -- min / max / mean, NaN and infinity counts, and whether sampled.
- :class:`Row` -- one registry entry: name, shape, dtype, device, size, preview,
  gradient (for variables), shadowed, problems.
- :class:`Summary` -- the rows of both registries and the context's problems;
  :meth:`Summary.to_dict` is the CLI's ``--json``.
- :func:`summarize` -- build the summary of a :class:`~torchlean.RuntimeContext`.
- :func:`summarize_sources` -- build it from :class:`TensorSource` objects (files).
- :class:`TensorSource`, :func:`source_of` -- how a summary reads a tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from torchlean.runtime.check import Problem

if TYPE_CHECKING:
    from torchlean.runtime.any_tensor import AnyTensor
    from torchlean.runtime.context import RuntimeContext

__all__ = [
    "GRID_COLS",
    "GRID_ROWS",
    "HEAD",
    "SAMPLE_LIMIT",
    "Row",
    "Stats",
    "Summary",
    "TensorSource",
    "format_number",
    "source_of",
    "summarize",
    "summarize_sources",
]

#: How many leading values a row shows in its one-line preview.
HEAD = 6
#: The preview grid of a tensor: at most this many rows and columns of its last two axes.
GRID_ROWS = 6
GRID_COLS = 8
#: Statistics of a tensor with more elements than this are computed on a sample.
SAMPLE_LIMIT = 1 << 20


class TensorSource(Protocol):
    """What a summary needs of one tensor; the data is read only through two calls."""

    @property
    def dims(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> str: ...

    @property
    def device(self) -> str: ...

    def head(self, n: int) -> np.ndarray[Any, Any]:
        """The first ``min(n, numel)`` elements in row-major order, flattened."""
        ...

    def sample(self, limit: int) -> tuple[np.ndarray[Any, Any], bool]:
        """Every element when there are at most ``limit``, else a spread-out sample of
        about ``limit`` of them; and whether it is a sample."""
        ...


@dataclass(frozen=True)
class Stats:
    """Statistics of a tensor's values (of a sample of them when ``sampled``)."""

    #: Smallest, largest and mean of the finite values (None when there are none or
    #: the dtype has no order, as complex numbers).
    min: float | None
    max: float | None
    mean: float | None
    nan: int
    inf: int
    #: The number of elements the statistics were computed on.
    counted: int
    sampled: bool


@dataclass(frozen=True)
class Row:
    """One registry entry as the views show it."""

    registry: str  # "variable" or "gradient"
    index: int  # position in its registry, most recent first
    name: str
    dims: tuple[int, ...]
    dtype: str
    device: str
    numel: int
    nbytes: int | None
    #: A newer entry of the same name exists; lookups never reach this one.
    shadowed: bool
    #: The first values, formatted (at most :data:`HEAD`).
    first: tuple[str, ...]
    #: The preview grid: at most :data:`GRID_ROWS` x :data:`GRID_COLS` values of the
    #: first matrix of the tensor (its last two axes), formatted.
    grid: tuple[tuple[str, ...], ...]
    grid_more_rows: bool
    grid_more_cols: bool
    stats: Stats | None
    #: For a visible variable: whether a gradient of that name exists (always False on a
    #: shadowed entry: the gradient belongs to the visible one).
    has_gradient: bool = False
    #: For a variable: the L2 norm of that gradient (estimated when ``norm_sampled``).
    gradient_norm: float | None = None
    norm_sampled: bool = False
    problems: tuple[Problem, ...] = ()

    @property
    def shape_text(self) -> str:
        """The shape as ``(3, 4)``; a scalar is ``()``."""
        return format_shape(self.dims)

    @property
    def sampled(self) -> bool:
        """True when the statistics (or the gradient norm) come from a sample."""
        return (self.stats is not None and self.stats.sampled) or self.norm_sampled


@dataclass(frozen=True)
class Summary:
    """Both registries of a context, row by row, and every problem found."""

    title: str
    variables: tuple[Row, ...]
    gradients: tuple[Row, ...]
    problems: tuple[Problem, ...]
    next_id: int | None = None
    #: Free-form lines shown under the title (the file's format, ...).
    notes: tuple[str, ...] = field(default=())

    @property
    def sampled(self) -> bool:
        """True when any statistic was computed on a sample."""
        return any(r.sampled for r in self.variables + self.gradients)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description: names, shapes, dtypes, sizes, statistics, problems."""

        def row(r: Row) -> dict[str, Any]:
            d: dict[str, Any] = {
                "name": r.name,
                "index": r.index,
                "shape": list(r.dims),
                "dtype": r.dtype,
                "device": r.device,
                "numel": r.numel,
                "nbytes": r.nbytes,
                "shadowed": r.shadowed,
                "first": [_json_number(v) for v in r.first],
            }
            if r.stats is not None:
                s = r.stats
                d["stats"] = {
                    "min": _json_float(s.min),
                    "max": _json_float(s.max),
                    "mean": _json_float(s.mean),
                    "nan": s.nan,
                    "inf": s.inf,
                    "counted": s.counted,
                    "sampled": s.sampled,
                }
            if r.registry == "variable":
                d["has_gradient"] = r.has_gradient
                d["gradient_norm"] = _json_float(r.gradient_norm)
                d["gradient_norm_sampled"] = r.norm_sampled
            d["problems"] = [p.message for p in r.problems]
            return d

        return {
            "title": self.title,
            "next_id": self.next_id,
            "notes": list(self.notes),
            "variables": [row(r) for r in self.variables],
            "gradients": [row(r) for r in self.gradients],
            "problems": [
                {"kind": p.kind, "registry": p.registry, "name": p.name, "message": p.message}
                for p in self.problems
            ],
            "sampled": self.sampled,
        }


# ---------------------------------------------------------------------- sources


class _AnyTensorSource:
    """Reads a stored tensor; slices on the tensor's own library before converting, so
    a sample of a huge (or GPU) tensor never copies the whole of it."""

    __slots__ = ("_at",)

    def __init__(self, at: AnyTensor[Any]) -> None:
        self._at = at

    @property
    def dims(self) -> tuple[int, ...]:
        return self._at.dims

    @property
    def dtype(self) -> str:
        return self._at.dtype

    @property
    def device(self) -> str:
        return self._at.device

    def _flat(self) -> Any:
        """The tensor as a flat view, or None when flattening would copy all of it (a
        non-contiguous torch tensor)."""
        t = self._at.t
        if self._at.backend == "torch" and not t.is_contiguous():
            return None
        return t.reshape(-1) if self._at.dims != () else t.reshape(1)

    def head(self, n: int) -> np.ndarray[Any, Any]:
        flat = self._flat()
        if flat is None:
            index = block_index(self._at.dims, 0, n)
            part = self._at.library.to_numpy(self._at.t[index])
            return np.asarray(part).reshape(-1)[:n]
        return self._at.library.to_numpy(flat[:n])

    def sample(self, limit: int) -> tuple[np.ndarray[Any, Any], bool]:
        numel = math.prod(self._at.dims)
        flat = self._flat()
        if numel <= limit:
            if flat is None:
                return np.asarray(self._at.library.to_numpy(self._at.t)).reshape(-1), False
            return self._at.library.to_numpy(flat), False
        if flat is None:
            return sample_blocks(
                lambda index: self._at.library.to_numpy(self._at.t[index]), self._at.dims, limit
            ), True
        step = -(-numel // limit)
        return self._at.library.to_numpy(flat[::step]), True


#: A block sample of a big tensor is this many evenly spaced contiguous blocks.
SAMPLE_BLOCKS = 64


def sample_blocks(
    read: Callable[[tuple[slice, ...]], Any], dims: tuple[int, ...], limit: int
) -> np.ndarray[Any, Any]:
    """About ``limit`` elements of a tensor of shape ``dims`` (at least one per block):
    :data:`SAMPLE_BLOCKS` contiguous blocks at evenly spaced flat positions, each
    fetched by ``read(index)``. Cost: O(limit) elements read."""
    budget = max(1, limit // SAMPLE_BLOCKS)
    numel = math.prod(dims)
    parts = [
        np.asarray(read(block_index(dims, k * numel // SAMPLE_BLOCKS, budget))).reshape(-1)
        for k in range(SAMPLE_BLOCKS)
    ]
    return np.concatenate(parts)


def block_index(shape: tuple[int, ...], start: int, budget: int) -> tuple[slice, ...]:
    """An index of a contiguous block of at most ``budget`` elements (at least one)
    that begins at the flat position ``start`` rounded down to a whole block row."""
    index: list[slice] = []
    rest = start
    for axis, size in enumerate(shape):
        inner = math.prod(shape[axis + 1 :])
        at = rest // inner if inner else 0
        rest -= at * inner
        if inner <= budget:
            stop = min(size, at + max(1, budget // max(inner, 1)))
            index.append(slice(at, stop))
            return tuple(index)
        index.append(slice(at, at + 1))
    return tuple(index)


def source_of(at: AnyTensor[Any]) -> TensorSource:
    """The :class:`TensorSource` of a stored tensor."""
    return _AnyTensorSource(at)


# ---------------------------------------------------------------------- building


def summarize(
    ctx: RuntimeContext[Any], *, sample_limit: int = SAMPLE_LIMIT, title: str | None = None
) -> Summary:
    """The :class:`Summary` of ``ctx``: every entry of both registries, the problems
    :meth:`~torchlean.RuntimeContext.check` finds, flagged on their rows.

    Cost: O(total elements) for ``check`` (exact NaN/inf counts), plus O(sample_limit)
    per tensor for the statistics.
    """
    from torchlean.errors import DonatedContextError
    from torchlean.runtime.context import require_context

    require_context(ctx, "summarize")
    _check_limit(sample_limit)
    if title is not None and not isinstance(title, str):
        raise TypeError(f"summarize: title must be a str, got {type(title).__name__}")
    try:
        report = ctx.check()
    except DonatedContextError as e:  # nothing left to show; say why
        return Summary(title=f"RuntimeContext: {e}", variables=(), gradients=(), problems=())
    variables = [(name, source_of(at)) for name, at in ctx.var_registry]
    gradients = [(name, source_of(at)) for name, at in ctx.gradients]
    n_v, n_g = len(variables), len(gradients)
    if title is None:
        title = f"RuntimeContext: {_count(n_v, 'variable')}, {_count(n_g, 'gradient')}"
    return _build(
        title,
        variables,
        gradients,
        report.problems,
        next_id=ctx.next_id,
        sample_limit=sample_limit,
    )


def _check_limit(sample_limit: object) -> None:
    if isinstance(sample_limit, bool) or not isinstance(sample_limit, int) or sample_limit < 1:
        raise ValueError(f"sample_limit must be a positive int, got {sample_limit!r}")


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
    orphan gradients, shape and dtype mismatches, and non-finite values seen in the
    (possibly sampled) data.

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
    problems: list[Problem] = []
    visible_v: dict[str, TensorSource] = {}
    for name, src in variables:
        visible_v.setdefault(name, src)
    for index, (name, src) in enumerate(gradients):
        var = visible_v.get(name)
        if var is None:
            problems.append(
                Problem(
                    "orphan-gradient",
                    "gradient",
                    name,
                    f"gradient `{name}` has no variable of that name",
                    index,
                )
            )
            continue
        if var.dims != src.dims:
            problems.append(
                Problem(
                    "shape-mismatch",
                    "gradient",
                    name,
                    f"gradient `{name}` has shape {src.dims} but its variable has shape {var.dims}",
                    index,
                )
            )
        if var.dtype != src.dtype:
            problems.append(
                Problem(
                    "dtype-mismatch",
                    "gradient",
                    name,
                    f"gradient `{name}` has dtype {src.dtype} but its variable has dtype"
                    f" {var.dtype}",
                    index,
                )
            )
    summary = _build(
        title,
        variables,
        gradients,
        (),
        next_id=next_id,
        sample_limit=sample_limit,
        notes=tuple(notes),
    )
    # Non-finite values: from the statistics just computed (exact unless sampled).
    for registry, rows in (("variable", summary.variables), ("gradient", summary.gradients)):
        for r in rows:
            s = r.stats
            if s is None or not (s.nan or s.inf):
                continue
            parts = [f"{s.nan} NaN"] if s.nan else []
            if s.inf:
                parts.append(f"{s.inf} infinite")
            seen = f" in a sample of {s.counted:,}" if s.sampled else ""
            problems.append(
                Problem(
                    "non-finite",
                    registry,
                    r.name,
                    f"{registry} `{r.name}` has {' and '.join(parts)} value"
                    f"{'s' if s.nan + s.inf != 1 else ''}{seen}",
                    r.index,
                )
            )
    order = {"variable": 0, "gradient": 1, "context": 2}
    problems.sort(key=lambda p: (order[p.registry], p.index))
    summary = _attach(summary, tuple(problems))
    if oldest_first:
        summary = Summary(
            title=summary.title,
            variables=summary.variables[::-1],
            gradients=summary.gradients[::-1],
            problems=summary.problems,
            next_id=summary.next_id,
            notes=summary.notes,
        )
    return summary


def _build(
    title: str,
    variables: Sequence[tuple[str, TensorSource]],
    gradients: Sequence[tuple[str, TensorSource]],
    problems: Sequence[Problem],
    *,
    next_id: int | None,
    sample_limit: int,
    notes: tuple[str, ...] = (),
) -> Summary:
    grad_head: dict[str, TensorSource] = {}
    for name, src in gradients:
        grad_head.setdefault(name, src)
    norms: dict[str, tuple[float | None, bool]] = {}

    def rows(registry: str, entries: Sequence[tuple[str, TensorSource]]) -> list[Row]:
        seen: set[str] = set()
        out = []
        for index, (name, src) in enumerate(entries):
            row = _row(registry, index, name, src, name in seen, sample_limit)
            seen.add(name)
            if registry == "variable" and not row.shadowed:
                # the gradient of a name belongs to its visible (first) entry
                g = grad_head.get(name)
                if g is not None:
                    if name not in norms:
                        norms[name] = _norm(g, sample_limit)
                    norm, sampled = norms[name]
                    row = _replace(row, has_gradient=True, gradient_norm=norm, norm_sampled=sampled)
            out.append(row)
        return out

    summary = Summary(
        title=title,
        variables=tuple(rows("variable", variables)),
        gradients=tuple(rows("gradient", gradients)),
        problems=(),
        next_id=next_id,
        notes=notes,
    )
    return _attach(summary, tuple(problems))


def _attach(summary: Summary, problems: tuple[Problem, ...]) -> Summary:
    """Put each problem on its row (by registry and index) and on the summary."""

    def flag(rows: tuple[Row, ...], registry: str) -> tuple[Row, ...]:
        by_index: dict[int, list[Problem]] = {}
        for p in problems:
            if p.registry == registry:
                by_index.setdefault(p.index, []).append(p)
        return tuple(
            _replace(r, problems=tuple(by_index[r.index])) if r.index in by_index else r
            for r in rows
        )

    return Summary(
        title=summary.title,
        variables=flag(summary.variables, "variable"),
        gradients=flag(summary.gradients, "gradient"),
        problems=problems,
        next_id=summary.next_id,
        notes=summary.notes,
    )


def _replace(row: Row, **changes: Any) -> Row:
    from dataclasses import replace

    return replace(row, **changes)


def _row(
    registry: str, index: int, name: str, src: TensorSource, shadowed: bool, limit: int
) -> Row:
    dims = tuple(int(d) for d in src.dims)
    numel = math.prod(dims)
    dtype = src.dtype
    itemsize = _itemsize(dtype)
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
        nbytes=None if itemsize is None else numel * itemsize,
        shadowed=shadowed,
        first=first,
        grid=tuple(grid),
        grid_more_rows=rows_total > len(grid) or math.prod(dims[:-2]) > 1,
        grid_more_cols=cols_total > cols,
        stats=stats,
    )


def _as_plain(a: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Values numpy can compute on: bfloat16/float8 (ml_dtypes) become float32."""
    a = np.asarray(a).reshape(-1)
    if a.dtype.kind == "V" or a.dtype.name in _EXOTIC:
        return a.astype(np.float32)
    if a.dtype.kind == "b":
        return a.astype(np.int8)
    return a


_EXOTIC = {"bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"}


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


def _itemsize(dtype: str) -> int | None:
    try:
        return int(np.dtype(dtype).itemsize)
    except TypeError:
        pass
    sizes = {"bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1, "bool": 1}
    return sizes.get(dtype)


# ---------------------------------------------------------------------- formatting


def format_number(v: object) -> str:
    """A value as the views print it: ints exactly, floats to 4 significant digits."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if v == 0:
            return "0"
        return f"{v:.4g}"
    if isinstance(v, complex):
        return f"{format_number(v.real)}{'+' if v.imag >= 0 else '-'}{format_number(abs(v.imag))}j"
    return str(v)


def format_shape(dims: tuple[int, ...]) -> str:
    """``(3, 4)``; a scalar is ``()`` and a vector ``(5,)``."""
    return str(tuple(dims))


def format_bytes(n: int | None) -> str:
    """``512 B``, ``1.5 KiB``, ``3.2 GiB``."""
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _json_float(x: float | None) -> float | str | None:
    if x is None:
        return None
    if math.isnan(x) or math.isinf(x):
        return str(x)
    return x


def _json_number(text: str) -> float | int | str:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        f = float(text)
    except ValueError:
        return text
    return text if math.isnan(f) or math.isinf(f) else f


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
