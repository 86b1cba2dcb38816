"""What the views show: plain-data records of a context (or of a checkpoint file).

Every renderer (text, rich, HTML, the CLI's JSON) draws the same :class:`Summary`, so
they can never disagree. The records hold formatted values and statistics only; they
are built by :mod:`._build` and drawn by :mod:`._rich` and :mod:`._html`.

Reading map:
- :data:`HEAD`, :data:`GRID_ROWS`, :data:`GRID_COLS` -- how much of a tensor a row shows.
- :class:`Stats` -- min / max / mean, NaN and infinity counts, and whether sampled.
- :class:`Row` -- one registry entry: name, shape, dtype, device, size, preview,
  gradient (for variables), shadowed, problems.
- :class:`Summary` -- the rows of both registries and the context's problems;
  :meth:`Summary.to_dict` is the CLI's ``--json``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torchlean.runtime.check import Problem
from torchlean.widgets._format import format_shape

__all__ = ["GRID_COLS", "GRID_ROWS", "HEAD", "Row", "Stats", "Summary"]

#: How many leading values a row shows in its one-line preview.
HEAD = 6
#: The preview grid of a tensor: at most this many rows and columns of its last two axes.
GRID_ROWS = 6
GRID_COLS = 8


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
    #: The context was donated (the title says to what): it has nothing left to show.
    donated: bool = False

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
