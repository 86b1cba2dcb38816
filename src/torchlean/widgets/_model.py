"""What the views show: plain-data records of a context (or of a checkpoint file).

Every renderer (text, rich, HTML, the CLI's JSON) draws the same :class:`Summary`, so
they can never disagree. The records hold formatted values and statistics only; they
are built by :mod:`._build` and drawn by :mod:`._rich` and :mod:`._html`.

Reading map:
- :data:`HEAD`, :data:`GRID_ROWS`, :data:`GRID_COLS` -- how much of a tensor a row shows.
- :data:`PREVIEW_ROWS`, :data:`PREVIEW_COLS`, :data:`PREVIEW_ELEMS`,
  :data:`PREVIEW_SLICES`, :data:`PREVIEW_DEPTH` -- the limits of TorchLean's widget preview.
- :class:`Preview` -- what an opened row shows, as TorchLean's ``anyTensorHtml`` draws it:
  a scalar, a clipped vector or matrix, leading slices, a nested pretty form, a flat head.
- :class:`Stats` -- min / max / mean, NaN and infinity counts, and whether sampled.
- :class:`Row` -- one registry entry: name, shape, dtype, device, size, preview,
  gradient (for variables), shadowed, problems.
- :class:`Group`, :class:`Totals` -- visible entries counted per module prefix, per
  dtype and in all (``--depth``, the totals line).
- :class:`Summary` -- the rows of both registries and the context's problems;
  :meth:`Summary.select` keeps the rows a glob matches, :meth:`Summary.totals` and
  :meth:`Summary.groups` count them, :meth:`Summary.to_dict` is the CLI's ``--json``.
- :func:`check_view_options` -- the checks of the views' ``filter`` and ``depth``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from typing import Any, Literal

from torchlean._text import short_repr
from torchlean.runtime.check import Problem
from torchlean.spec.shape import Shape
from torchlean.widgets._format import format_shape

__all__ = [
    "GRID_COLS",
    "GRID_ROWS",
    "HEAD",
    "PREVIEW_COLS",
    "PREVIEW_DEPTH",
    "PREVIEW_ELEMS",
    "PREVIEW_ROWS",
    "PREVIEW_SLICES",
    "Group",
    "Preview",
    "Row",
    "Stats",
    "Summary",
    "Totals",
    "check_view_options",
]

#: How many leading values a row shows in its one-line preview.
HEAD = 6
#: The preview grid of a tensor: at most this many rows and columns of its last two axes.
GRID_ROWS = 6
GRID_COLS = 8

# The limits of TorchLean's widget (``kvRow`` calls ``anyTensorHtml`` with maxRows 10,
# maxCols 12, maxElems 64; ``tensorHtml`` recurses two levels and shows 6 slices).
#: An opened row shows at most this many rows of a matrix ...
PREVIEW_ROWS = 10
#: ... and this many values of a vector or of a matrix row.
PREVIEW_COLS = 12
#: The flat preview: the first this many values of a tensor (or of a slice).
PREVIEW_ELEMS = 64
#: A tensor of rank 3 or more shows at most this many leading slices ...
PREVIEW_SLICES = 6
#: ... nested this many levels deep; deeper, the nested pretty form and the flat preview.
PREVIEW_DEPTH = 2

PreviewKind = Literal["scalar", "vector", "matrix", "slices", "nested"]


@dataclass(frozen=True)
class Preview:
    """What an opened row shows, as TorchLean's ``tensorHtml`` draws it (values formatted).

    - ``scalar``: ``cells`` is ``((value,),)``.
    - ``vector``: ``cells`` is one row of at most :data:`PREVIEW_COLS` values;
      ``clipped_cols`` when the vector is longer.
    - ``matrix``: at most :data:`PREVIEW_ROWS` rows of at most :data:`PREVIEW_COLS` values.
    - ``slices`` (rank 3 and more): the previews of at most :data:`PREVIEW_SLICES` leading
      slices (``clipped_slices`` when there are more), then ``flat``.
    - ``nested`` (:data:`PREVIEW_DEPTH` levels down): ``pretty``, the nested ``[a, b]``
      form of the slice, then ``flat``. Lean prints that form whole; here each axis is
      cut to the preview's limits (``...`` marks the cut), so a row never reads a slice
      whole.

    ``flat`` is the first :data:`PREVIEW_ELEMS` values in row-major order
    (``flat_clipped`` when there are more).
    """

    kind: PreviewKind
    dims: tuple[int, ...]
    cells: tuple[tuple[str, ...], ...] = ()
    clipped_rows: bool = False
    clipped_cols: bool = False
    slices: tuple[Preview, ...] = ()
    clipped_slices: bool = False
    pretty: str = ""
    flat: tuple[str, ...] = ()
    flat_clipped: bool = False


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
    #: What the opened row shows (TorchLean's widget preview); None when the source
    #: could not read the parts it needs (see :class:`~torchlean.widgets.TensorSource`).
    preview: Preview | None = None

    @property
    def shape_text(self) -> str:
        """The shape as ``(3, 4)``; a scalar is ``()``."""
        return format_shape(self.dims)

    @property
    def shape_pretty(self) -> str:
        """The shape as Lean's ``Shape.pretty`` writes it: ``dim 3 (dim 4 (scalar))``."""
        return Shape(self.dims).pretty()

    @property
    def sampled(self) -> bool:
        """True when the statistics (or the gradient norm) come from a sample."""
        return (self.stats is not None and self.stats.sampled) or self.norm_sampled


@dataclass(frozen=True)
class Group:
    """Visible entries counted together: those under one module prefix
    (:meth:`Summary.groups`) or of one dtype (:attr:`Totals.by_dtype`)."""

    #: The prefix (``layer1.0``), a whole name shorter than the depth, or the dtype.
    name: str
    tensors: int
    #: Elements in all (buffers such as ``running_mean`` count too: a file does not
    #: say which tensors are trained).
    parameters: int
    #: Bytes in all; None when a dtype has no known item size.
    nbytes: int | None
    #: The dtypes of the group, in first-seen order.
    dtypes: tuple[str, ...]
    #: Variables of the group that have a gradient (0 in a gradients group).
    with_gradient: int = 0
    #: Entries of the group with a problem.
    problems: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description."""
        return {
            "name": self.name,
            "tensors": self.tensors,
            "parameters": self.parameters,
            "nbytes": self.nbytes,
            "dtypes": list(self.dtypes),
            "with_gradient": self.with_gradient,
            "problems": self.problems,
        }


@dataclass(frozen=True)
class Totals:
    """The visible entries of one registry, counted: in all and per dtype."""

    tensors: int
    parameters: int
    nbytes: int | None
    #: One :class:`Group` per dtype (its ``name``), in first-seen order.
    by_dtype: tuple[Group, ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description; ``by_dtype`` maps each dtype to its counts."""
        return {
            "tensors": self.tensors,
            "parameters": self.parameters,
            "nbytes": self.nbytes,
            "by_dtype": {
                g.name: {"tensors": g.tensors, "parameters": g.parameters, "nbytes": g.nbytes}
                for g in self.by_dtype
            },
        }


Registry = Literal["variable", "gradient"]


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
    #: The context was donated (the title says to what): it has nothing left to show.
    donated: bool = False
    #: The glob :meth:`select` kept the rows of (None: every row is here).
    filter: str | None = None
    #: How many variables and gradients there were before :meth:`select`.
    unfiltered: tuple[int, int] | None = None

    @property
    def sampled(self) -> bool:
        """True when any statistic was computed on a sample."""
        return any(r.sampled for r in self.variables + self.gradients)

    def select(self, filter: str | None) -> Summary:
        """The summary of the rows whose name ``filter`` matches (``None``: ``self``).

        ``filter`` is a glob (:func:`fnmatch.fnmatchcase`: ``*``, ``?``, ``[...]``) over
        whole names; it also matches every name under it as a module prefix, so
        ``layer1`` keeps ``layer1`` and ``layer1.*``. The problems stay those of the
        whole context. Cost: O(rows).
        """
        check_view_options("select", filter=filter, depth=None)
        if filter is None:
            return self
        pattern = filter

        def keep(rows: tuple[Row, ...]) -> tuple[Row, ...]:
            return tuple(r for r in rows if matches(r.name, pattern))

        unfiltered = self.unfiltered or (len(self.variables), len(self.gradients))
        # a second filter narrows the first
        pattern_text = filter if self.filter is None else f"{self.filter} & {filter}"
        return replace(
            self,
            variables=keep(self.variables),
            gradients=keep(self.gradients),
            filter=pattern_text,
            unfiltered=unfiltered,
        )

    def totals(self, registry: Registry = "variable") -> Totals:
        """The visible (not shadowed) rows of ``registry`` counted: tensors, elements,
        bytes, in all and per dtype. Cost: O(rows)."""
        rows = self._visible(registry)
        whole = _group("", rows)
        by_dtype: dict[str, list[Row]] = {}
        for r in rows:
            by_dtype.setdefault(r.dtype, []).append(r)
        return Totals(
            tensors=whole.tensors,
            parameters=whole.parameters,
            nbytes=whole.nbytes,
            by_dtype=tuple(_group(d, rs) for d, rs in by_dtype.items()),
        )

    def groups(self, depth: int, registry: Registry = "variable") -> tuple[Group, ...]:
        """The visible rows of ``registry`` grouped by the first ``depth`` dot-separated
        parts of their names (as torchinfo's ``depth=``), in first-seen order; a name
        with fewer parts is its own group; ``depth=0`` is one group named ``""``.
        Cost: O(rows)."""
        check_view_options("groups", filter=None, depth=depth)
        out: dict[str, list[Row]] = {}
        for r in self._visible(registry):
            out.setdefault(module_prefix(r.name, depth), []).append(r)
        return tuple(_group(k, rs) for k, rs in out.items())

    def _visible(self, registry: Registry) -> tuple[Row, ...]:
        if registry not in ("variable", "gradient"):
            raise ValueError(
                f"registry must be 'variable' or 'gradient', got {short_repr(registry)}"
            )
        rows = self.variables if registry == "variable" else self.gradients
        return tuple(r for r in rows if not r.shadowed)

    def to_dict(self, *, filter: str | None = None, depth: int | None = None) -> dict[str, Any]:
        """A JSON-ready description: names, shapes, dtypes, sizes, statistics, problems,
        and ``totals`` of each registry (visible entries: tensors, parameters, bytes, per
        dtype).

        ``filter`` keeps the rows a glob matches (:meth:`select`; the output says
        ``filter`` and the unfiltered counts); ``depth`` adds ``groups``: each
        registry's rows counted per module prefix (:meth:`groups`). Cost: O(rows).
        """
        check_view_options("to_dict", filter=filter, depth=depth)
        s = self.select(filter)

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
                st = r.stats
                d["stats"] = {
                    "min": _json_float(st.min),
                    "max": _json_float(st.max),
                    "mean": _json_float(st.mean),
                    "nan": st.nan,
                    "inf": st.inf,
                    "counted": st.counted,
                    "sampled": st.sampled,
                }
            if r.registry == "variable":
                d["has_gradient"] = r.has_gradient
                d["gradient_norm"] = _json_float(r.gradient_norm)
                d["gradient_norm_sampled"] = r.norm_sampled
            d["problems"] = [p.message for p in r.problems]
            return d

        out: dict[str, Any] = {
            "title": s.title,
            "next_id": s.next_id,
            "notes": list(s.notes),
            "variables": [row(r) for r in s.variables],
            "gradients": [row(r) for r in s.gradients],
            "problems": [
                {"kind": p.kind, "registry": p.registry, "name": p.name, "message": p.message}
                for p in s.problems
            ],
            "sampled": s.sampled,
            "totals": {
                "variables": s.totals("variable").to_dict(),
                "gradients": s.totals("gradient").to_dict(),
            },
            "filter": s.filter,
        }
        if s.unfiltered is not None:
            out["unfiltered"] = {"variables": s.unfiltered[0], "gradients": s.unfiltered[1]}
        if depth is not None:
            out["depth"] = depth
            out["groups"] = {
                "variables": [g.to_dict() for g in s.groups(depth, "variable")],
                "gradients": [g.to_dict() for g in s.groups(depth, "gradient")],
            }
        return out


def matches(name: str, pattern: str) -> bool:
    """Whether the glob ``pattern`` matches ``name`` whole or as a module prefix."""
    return fnmatchcase(name, pattern) or fnmatchcase(name, pattern + ".*")


def module_prefix(name: str, depth: int) -> str:
    """The first ``depth`` dot-separated parts of ``name`` (all of them when fewer)."""
    return ".".join(name.split(".")[:depth]) if depth else ""


def check_view_options(where: str, *, filter: object, depth: object) -> None:
    """Raise when ``filter`` is not a glob string (or None) or ``depth`` not an int >= 0
    (or None); the message starts with ``where``."""
    if filter is not None and not isinstance(filter, str):
        raise TypeError(
            f"{where}: filter must be a glob str such as 'layer1.*', got"
            f" {type(filter).__name__} {short_repr(filter)}"
        )
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int)):
        raise TypeError(
            f"{where}: depth must be an int >= 0 or None, got"
            f" {type(depth).__name__} {short_repr(depth)}"
        )
    if isinstance(depth, int) and depth < 0:
        raise ValueError(f"{where}: depth must be an int >= 0 or None, got {depth}")


def _group(name: str, rows: tuple[Row, ...] | list[Row]) -> Group:
    nbytes: int | None = 0
    dtypes: dict[str, None] = {}
    for r in rows:
        dtypes.setdefault(r.dtype, None)
        nbytes = None if nbytes is None or r.nbytes is None else nbytes + r.nbytes
    return Group(
        name=name,
        tensors=len(rows),
        parameters=sum(r.numel for r in rows),
        nbytes=nbytes,
        dtypes=tuple(dtypes),
        with_gradient=sum(1 for r in rows if r.has_gradient),
        problems=sum(1 for r in rows if r.problems),
    )


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
