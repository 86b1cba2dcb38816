"""The terminal view of a context: two rich tables (variables, gradients) and the problems.

``rich.print(ctx)`` draws it (``RuntimeContext.__rich_console__`` calls
:func:`rich_renderable`); :func:`to_text` renders it to a plain string without colours,
for logs, snapshots and ``torchlean show``.

Reading map:
- :func:`rich_renderable` -- a rich renderable of a context or a :class:`Summary`.
- :func:`to_text` -- the same view as plain text, at a given width.
- ``_table`` / ``_cells`` -- one registry as a table, one row as its cells.

The data comes from :mod:`._build` (a :class:`~torchlean.widgets.Summary`); numbers and
sizes are written by :mod:`._format`.
"""

from __future__ import annotations

import io
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from torchlean.widgets._build import as_summary
from torchlean.widgets._format import DONATED, format_number, format_size
from torchlean.widgets._model import Row

__all__ = ["rich_renderable", "to_text"]
_WARN = "!"
#: Leading values shown per row in the terminal (the HTML preview shows more).
_TEXT_HEAD = 4


def rich_renderable(ctx: Any) -> RenderableType:
    """A rich renderable of ``ctx`` (a :class:`~torchlean.RuntimeContext` or a
    :class:`~torchlean.widgets.Summary`): a title, the variables table, the gradients
    table and the problems found by ``check()``. The Python counterpart of TorchLean's
    ``#runtime_ctx_view`` in a terminal.

    Cost: that of :func:`~torchlean.widgets.summarize` (no tensor printed in full;
    statistics of big tensors on a bounded sample).
    """
    s = as_summary(ctx)
    parts: list[RenderableType] = []
    head = Text(s.title, style="bold")
    if s.next_id is not None:
        head.append(f"  next_id={s.next_id}", style="dim")
    parts.append(head)
    for note in s.notes:
        parts.append(Text(note, style="dim"))
    if s.donated:  # its entries belong to the context the donating call returned
        parts.append(Text(DONATED, style="yellow"))
        return Group(*parts)
    parts.append(_table("Variables", s.variables, variables=True))
    parts.append(_table("Gradients", s.gradients, variables=False))
    if s.sampled:
        parts.append(
            Text(
                "~ statistics marked ~ were computed on a sample of the values",
                style="dim",
            )
        )
    if s.problems:
        n = len(s.problems)
        lines = Text(f"{_WARN} {n} problem{'s' if n != 1 else ''}:", style="bold red")
        for p in s.problems:
            lines.append("\n  - " + p.message, style="red")
        parts.append(lines)
    else:
        parts.append(Text("no problems found", style="green"))
    return Group(*parts)


def to_text(ctx: Any, *, width: int = 120) -> str:
    """The terminal view of ``ctx`` as plain text (no colours), ``width`` columns wide.

    Cost: that of :func:`rich_renderable`.
    """
    if isinstance(width, bool) or not isinstance(width, int) or width < 20:
        raise ValueError(f"to_text: width must be an int of at least 20, got {width!r}")
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
    console.print(rich_renderable(ctx))
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


def _table(title: str, rows: tuple[Row, ...], *, variables: bool) -> RenderableType:
    if not rows:
        return Text(f"{title} (0): none", style="bold")
    table = Table(
        title=f"{title} ({len(rows)})",
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        expand=False,
        pad_edge=False,
    )
    table.add_column("name", overflow="fold", max_width=36)
    table.add_column("shape", overflow="fold")
    table.add_column("dtype")
    table.add_column("device")
    table.add_column("elements", justify="right")
    table.add_column("preview", overflow="fold", min_width=24, max_width=48)
    if variables:
        table.add_column("grad (norm)", overflow="fold")
    for r in rows:
        table.add_row(*_cells(r, variables=variables), style="red" if r.problems else None)
    return table


def _cells(r: Row, *, variables: bool) -> list[RenderableType]:
    name = Text(r.name)
    if r.shadowed:
        name.append(" (shadowed)", style="dim italic")
    for p in r.problems:
        name.append(f"\n{_WARN} {p.kind}", style="bold red")
    shown = r.first[:_TEXT_HEAD]
    values = ", ".join(shown)
    if r.numel > len(shown):
        values += ", …"
    preview = Text(f"[{values}]")
    s = r.stats
    if s is not None:
        tilde = "~" if s.sampled else ""
        if s.min is not None:
            # name=value pairs: a narrow column wraps between pairs, never inside one
            preview.append(
                f"\n{tilde}min={format_number(s.min)}  max={format_number(s.max)}"
                f"  mean={format_number(s.mean)}",
                style="dim",
            )
        if s.nan or s.inf:
            preview.append(f"\n{tilde}NaN={s.nan}  inf={s.inf}", style="bold red")
    size = f"{r.numel:,}"
    if r.numel >= 1024:
        size += f"\n{format_size(r.nbytes)}"
    cells: list[RenderableType] = [name, r.shape_text, r.dtype, r.device, size, preview]
    if variables:
        if r.shadowed:
            cells.append(Text("—", style="dim"))
        elif not r.has_gradient:
            cells.append(Text("no", style="dim"))
        elif r.gradient_norm is None:
            cells.append("yes")
        else:
            approx = "~" if r.norm_sampled else ""
            cells.append(f"yes ({approx}{format_number(r.gradient_norm)})")
    return cells
