"""The terminal view of a context: variables and gradients, one line per entry, totals.

``rich.print(ctx)`` draws it (``RuntimeContext.__rich_console__`` calls
:func:`rich_renderable`); :func:`to_text` renders it to a plain string without colours,
for logs, snapshots and ``torchlean show``.

The layout is made for real models at any width (a terminal, or 80 columns when piped):
every entry is one line; names are never cut or wrapped; a column whose value is the
same on every line (dtype, device, gradient) is dropped and its value said once in the
table's title; when the line is still too wide the values column is shortened (``…``),
then whole columns are dropped, least useful first (bytes, values, gradient, device,
dtype, elements, shape). ``filter`` keeps the entries a glob matches; ``depth`` shows one
line per module prefix (as torchinfo's ``depth=``) instead of one per tensor. Each
registry ends with its totals line (parameters, bytes, per dtype).

Reading map:
- :func:`rich_renderable` -- a rich renderable of a context or a :class:`Summary`.
- :func:`to_text` -- the same view as plain text, at a given width.
- ``_View`` -- lays the view out at the width rich gives it.
- ``_entries`` / ``_modules`` -- one registry as entry lines or module lines;
  ``_Column`` / ``_lay_out`` -- columns fitted to the width; ``_totals`` -- the totals line.

The data comes from :mod:`._build` (a :class:`~torchlean.widgets.Summary`); numbers and
sizes are written by :mod:`._format`.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.text import Text

from torchlean.widgets._build import as_summary
from torchlean.widgets._format import DONATED, count, format_number, format_size
from torchlean.widgets._model import Registry, Row, Summary, Totals, check_view_options

__all__ = ["rich_renderable", "to_text"]
_WARN = "!"
#: A tensor with at most this many elements shows its values, a bigger one min/max/mean.
_TEXT_VALUES = 4
#: The values column is never shortened below this width (it is dropped instead).
_VALUES_MIN = 16
#: Spaces between two columns.
_GAP = 2


def rich_renderable(
    ctx: Any, *, filter: str | None = None, depth: int | None = None
) -> RenderableType:
    """A rich renderable of ``ctx`` (a :class:`~torchlean.RuntimeContext` or a
    :class:`~torchlean.widgets.Summary`): a title, the variables, the gradients, their
    totals and the problems found by ``check()``, laid out at the width it is drawn at.
    The Python counterpart of TorchLean's ``#runtime_ctx_view`` in a terminal.

    ``filter`` keeps the entries whose name a glob matches
    (:meth:`~torchlean.widgets.Summary.select`: ``layer1.*``; ``layer1`` also matches
    everything under ``layer1.``); ``depth`` shows one line per module prefix of that
    many dot-separated parts, with its tensors, parameters and bytes (``0``: the totals
    only).

    Cost: that of :func:`~torchlean.widgets.summarize` (no tensor printed in full;
    statistics of big tensors on a bounded sample), then O(rows) per drawing.
    """
    check_view_options("rich_renderable", filter=filter, depth=depth)
    return _View(as_summary(ctx).select(filter), depth)


def to_text(
    ctx: Any, *, width: int = 120, filter: str | None = None, depth: int | None = None
) -> str:
    """The terminal view of ``ctx`` as plain text (no colours), ``width`` columns wide;
    ``filter`` and ``depth`` as in :func:`rich_renderable`.

    Cost: that of :func:`rich_renderable`.
    """
    if isinstance(width, bool) or not isinstance(width, int) or width < 20:
        raise ValueError(f"to_text: width must be an int of at least 20, got {width!r}")
    check_view_options("to_text", filter=filter, depth=depth)
    renderable = rich_renderable(ctx, filter=filter, depth=depth)
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=width,
        color_system=None,
        force_terminal=False,
        legacy_windows=False,
        emoji=False,
        highlight=False,
        soft_wrap=False,
    )
    console.print(renderable)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


class _View:
    """The view of one summary; rich calls :meth:`__rich_console__` with the width."""

    def __init__(self, summary: Summary, depth: int | None) -> None:
        self.summary = summary
        self.depth = depth

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Group(*_parts(self.summary, self.depth, options.max_width))


def _parts(s: Summary, depth: int | None, width: int) -> list[RenderableType]:
    parts: list[RenderableType] = []
    head = Text(s.title, style="bold")
    if s.next_id is not None:
        head.append(f"  next_id={s.next_id}", style="dim")
    parts.append(head)
    for note in s.notes:
        parts.append(Text(note, style="dim"))
    if s.filter is not None and s.unfiltered is not None:
        parts.append(
            Text(
                f"filter {s.filter}: {len(s.variables)} of {count(s.unfiltered[0], 'variable')},"
                f" {len(s.gradients)} of {count(s.unfiltered[1], 'gradient')}",
                style="dim",
            )
        )
    if s.donated:  # its entries belong to the context the donating call returned
        parts.append(Text(DONATED, style="yellow"))
        return parts
    for title, registry, rows in (
        ("Variables", "variable", s.variables),
        ("Gradients", "gradient", s.gradients),
    ):
        parts.append(Text(""))
        if not rows:
            parts.append(Text(f"{title} (0): none", style="bold"))
            continue
        if depth is None:
            parts.extend(_entries(title, rows, variables=registry == "variable", width=width))
        else:
            parts.extend(_modules(title, s, registry, depth, width))
        parts.append(
            _totals(
                s.totals("variable" if registry == "variable" else "gradient"),
                variables=registry == "variable",
            )
        )
    parts.append(Text(""))
    if s.sampled:
        parts.append(
            Text("~ statistics marked ~ were computed on a sample of the values", style="dim")
        )
    if s.problems:
        n = len(s.problems)
        lines = Text(f"{_WARN} {n} problem{'s' if n != 1 else ''}:", style="bold red")
        for p in s.problems:
            lines.append("\n  - " + p.message, style="red")
        parts.append(lines)
    else:
        parts.append(Text("no problems found", style="green"))
    return parts


@dataclass
class _Column:
    header: str
    cells: list[Text]
    right: bool = False
    #: Dropped in this order when the line is too wide (1 first); 0: never dropped.
    drop: int = 0
    #: Shortened (with ``…``) before any column is dropped.
    flexible: bool = False
    #: Dropped when every cell says the same; the title then says it once.
    constant_label: str | None = None
    width: int = field(init=False)

    def __post_init__(self) -> None:
        self.width = max([len(self.header), *(c.cell_len for c in self.cells)])


def _entries(title: str, rows: tuple[Row, ...], *, variables: bool, width: int) -> list[Text]:
    cols = [
        _Column("name", [_name(r) for r in rows]),
        _Column("shape", [Text(r.shape_text) for r in rows], drop=7),
        _Column("dtype", [Text(r.dtype) for r in rows], drop=5, constant_label="dtype"),
        _Column("device", [Text(r.device) for r in rows], drop=4, constant_label="device"),
        _Column("elements", [Text(f"{r.numel:,}") for r in rows], right=True, drop=6),
        _Column("bytes", [Text(format_size(r.nbytes)) for r in rows], right=True, drop=1),
        _Column("values", [_values(r) for r in rows], drop=2, flexible=True),
    ]
    if variables:
        cols.append(_Column("grad (norm)", [_grad(r) for r in rows], drop=3, constant_label="grad"))
    return _table(f"{title} ({len(rows)})", rows, cols, width)


def _modules(title: str, s: Summary, registry: str, depth: int, width: int) -> list[Text]:
    reg: Registry = "variable" if registry == "variable" else "gradient"
    groups = s.groups(depth, reg)
    if depth == 0:
        return [
            Text(
                f"{title}: {count(len(groups[0:1]) and groups[0].tensors, 'tensor')}", style="bold"
            )
        ]
    cols = [
        _Column("module", [Text(g.name) for g in groups]),
        _Column("tensors", [Text(f"{g.tensors:,}") for g in groups], right=True, drop=3),
        _Column(
            "parameters" if reg == "variable" else "values",
            [Text(f"{g.parameters:,}") for g in groups],
            right=True,
            drop=5,
        ),
        _Column("bytes", [Text(format_size(g.nbytes)) for g in groups], right=True, drop=4),
        _Column(
            "dtype", [Text(", ".join(g.dtypes)) for g in groups], drop=2, constant_label="dtype"
        ),
    ]
    if reg == "variable":
        cols.append(
            _Column(
                "with grad",
                [Text(f"{g.with_gradient:,}") for g in groups],
                right=True,
                drop=1,
                constant_label="with grad",
            )
        )
    flagged = [g.problems > 0 for g in groups]
    head = f"{title} by module, depth {depth} ({count(len(groups), 'group')})"
    return _table(head, flagged, cols, width)


def _table(title: str, rows: Iterable[Any], cols: list[_Column], width: int) -> list[Text]:
    """The title line, the header, a rule and one line per row, fitted to ``width``."""
    problems = [bool(r.problems) if isinstance(r, Row) else bool(r) for r in rows]
    heading = Text(title, style="bold")
    n = len(problems)
    for c in list(cols):
        if c.constant_label is None or n == 0:
            continue
        texts = {cell.plain for cell in c.cells}
        if len(texts) == 1:
            heading.append(f" · {c.constant_label} {texts.pop()}", style="bold")
            cols.remove(c)
    if any(problems):
        cols.insert(0, _Column("", [Text(_WARN if p else "", style="bold red") for p in problems]))
    _lay_out(cols, width)
    lines = [heading]
    header = Text(style="bold")
    for k, c in enumerate(cols):
        if k:
            header.append(" " * _GAP)
        header.append(c.header.rjust(c.width) if c.right else c.header.ljust(c.width))
    lines.append(header)
    lines.append(Text("─" * min(width, _total(cols)), style="dim"))
    for i, bad in enumerate(problems):
        line = Text(style="red" if bad else "", no_wrap=True, overflow="ellipsis")
        for k, c in enumerate(cols):
            if k:
                line.append(" " * _GAP)
            cell = c.cells[i].copy()
            if cell.cell_len > c.width:
                cell.truncate(c.width, overflow="ellipsis")
            pad = " " * (c.width - cell.cell_len)
            if c.right:
                line.append(pad)
                line.append_text(cell)
            else:
                line.append_text(cell)
                if k < len(cols) - 1:
                    line.append(pad)
        lines.append(line)
    return lines


def _total(cols: list[_Column]) -> int:
    return sum(c.width for c in cols) + _GAP * (len(cols) - 1)


def _lay_out(cols: list[_Column], width: int) -> None:
    """Fit the columns to ``width``: shorten the flexible one, then drop columns in
    their ``drop`` order; a name wider than everything is cut last (``…``)."""
    while _total(cols) > width:
        flexible = next((c for c in cols if c.flexible and c.width > _VALUES_MIN), None)
        if flexible is not None:
            flexible.width = max(_VALUES_MIN, flexible.width - (_total(cols) - width))
            continue
        droppable = [c for c in cols if c.drop]
        if not droppable:
            break
        cols.remove(min(droppable, key=lambda c: c.drop))
    flexible = next((c for c in cols if c.flexible), None)
    if flexible is not None:  # give the values back the room a dropped column left
        natural = max([len(flexible.header), *(c.cell_len for c in flexible.cells)])
        flexible.width = min(natural, flexible.width + width - _total(cols))
    excess = _total(cols) - width
    if excess > 0:  # only the name (and the problem mark) left, wider than the line
        widest = max(cols, key=lambda c: c.width)
        widest.width = max(1, widest.width - excess)


def _name(r: Row) -> Text:
    name = Text(r.name)
    if r.shadowed:
        name.append(" (shadowed)", style="dim italic")
    return name


def _values(r: Row) -> Text:
    s = r.stats
    tilde = "~" if s is not None and s.sampled else ""
    if r.numel <= _TEXT_VALUES:
        text = Text("[" + ", ".join(r.first) + "]")
    elif s is not None and s.min is not None:
        text = Text(
            f"{tilde}min={format_number(s.min)} max={format_number(s.max)}"
            f" mean={format_number(s.mean)}",
            style="dim",
        )
    else:
        text = Text("[" + ", ".join(r.first[:_TEXT_VALUES]) + ", …]")
    if s is not None and (s.nan or s.inf):
        text.append(f" {tilde}NaN={s.nan} inf={s.inf}", style="bold red")
    return text


def _grad(r: Row) -> Text:
    if r.shadowed:
        return Text("—", style="dim")
    if not r.has_gradient:
        return Text("no", style="dim")
    if r.gradient_norm is None:
        return Text("yes")
    approx = "~" if r.norm_sampled else ""
    return Text(f"yes ({approx}{format_number(r.gradient_norm)})")


def _totals(t: Totals, *, variables: bool) -> Text:
    """``total: 25,557,032 parameters in 320 tensors, 97.5 MiB, all float32``; with
    several dtypes, one line per dtype under it."""
    noun = "parameters" if variables else "values"
    text = Text(
        f"total: {t.parameters:,} {noun} in {count(t.tensors, 'tensor')}, {format_size(t.nbytes)}",
        style="bold",
    )
    if len(t.by_dtype) == 1:
        text.append(f", all {t.by_dtype[0].name}", style="bold")
    else:
        for g in t.by_dtype:
            text.append(
                f"\n  {g.name}: {g.parameters:,} in {count(g.tensors, 'tensor')},"
                f" {format_size(g.nbytes)}"
            )
    return text
