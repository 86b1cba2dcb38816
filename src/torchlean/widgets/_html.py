"""The notebook view of a context: one self-contained piece of HTML.

Everything TorchLean's ``#runtime_ctx_view`` widget shows: the header pills
``vars=N``, ``grads=N``, ``next_id=N``; two collapsible sections ``var_registry`` and
``gradients`` with ``count=N``; each row the name with ``shape=`` (Lean's
``Shape.pretty``) and ``size=`` pills, opening onto ``anyTensorHtml``'s preview (a
clipped vector or matrix, leading slices, the nested pretty form, a flat preview of the
first 64 values) with its pills and wording. Added by the Python view: the title, the
shape as a tuple, bytes, dtype, device, gradient norm, shadowed entries, statistics and
problems. Inline CSS only: no script, no network, no JavaScript framework. Every name and
value is escaped with :func:`html.escape`.

Reading map:
- :func:`to_html` -- the fragment (``RuntimeContext._repr_html_`` returns it).
- :func:`to_html_page` -- the fragment in a complete HTML document (``show --html``).
- ``_row`` / ``_details`` -- one entry: its pills, and what it opens onto.
- ``_tensor`` / ``_body`` / ``_table`` / ``_flat`` -- the preview
  (:class:`~torchlean.widgets.Preview`) as ``tensorHtml`` draws it.

The data comes from :mod:`._build` (a :class:`~torchlean.widgets.Summary`); numbers and
sizes are written by :mod:`._format`.
"""

from __future__ import annotations

from html import escape
from typing import Any

from torchlean.widgets._build import as_summary
from torchlean.widgets._format import DONATED, format_number, format_size
from torchlean.widgets._model import PREVIEW_ELEMS, Preview, Row, check_view_options

__all__ = ["to_html", "to_html_page"]

_CSS = """
.tl-ctx{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,Helvetica,Arial,
sans-serif;font-size:13px;line-height:1.45;color:#1f2328;background:#fff;
border:1px solid #d0d7de;border-radius:8px;padding:10px 14px;max-width:980px}
.tl-ctx .tl-title{font-weight:600;font-size:14px;margin:0 0 2px 0}
.tl-ctx .tl-note{color:#656d76;font-size:12px}
.tl-ctx details.tl-section{margin:8px 0 0 0;border-top:1px solid #eaeef2;padding-top:6px}
.tl-ctx details.tl-section>summary{cursor:pointer;font-weight:600;font-size:13px}
.tl-ctx .tl-count{display:inline-block;min-width:18px;padding:0 7px;margin-left:6px;
border-radius:10px;background:#eaeef2;color:#1f2328;font-size:12px;text-align:center}
.tl-ctx ul.tl-rows{list-style:none;margin:4px 0 0 0;padding:0 0 0 14px}
.tl-ctx li.tl-row{margin:2px 0}
.tl-ctx li.tl-row>details>summary{cursor:pointer}
.tl-ctx .tl-name{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;
font-weight:600;word-break:break-all}
.tl-ctx .tl-pill{display:inline-block;padding:0 7px;margin-left:5px;border-radius:10px;
font-size:11.5px;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;
border:1px solid transparent;vertical-align:1px}
.tl-ctx .tl-shape{background:#ddf4ff;color:#0550ae;border-color:#b6e3ff}
.tl-ctx .tl-size{background:#f6f8fa;color:#57606a;border-color:#d0d7de}
.tl-ctx .tl-dtype{background:#fbefff;color:#8250df;border-color:#ecd8ff}
.tl-ctx .tl-grad{background:#dafbe1;color:#116329;border-color:#aceebb}
.tl-ctx .tl-nograd{background:#f6f8fa;color:#8c959f;border-color:#eaeef2}
.tl-ctx .tl-shadowed{background:#fff8c5;color:#7d4e00;border-color:#f2e09f}
.tl-ctx .tl-bad{background:#ffebe9;color:#cf222e;border-color:#ffcecb;font-weight:600}
.tl-ctx li.tl-problem>details>summary .tl-name{color:#cf222e}
.tl-ctx .tl-preview{margin:4px 0 8px 18px;padding:6px 10px;background:#f6f8fa;
border-radius:6px;border:1px solid #eaeef2}
.tl-ctx .tl-meta{color:#57606a;font-size:12px;margin-bottom:4px}
.tl-ctx table.tl-grid{border-collapse:collapse;
font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
.tl-ctx table.tl-grid td{padding:1px 8px;text-align:right;border:1px solid #eaeef2;
background:#fff}
.tl-ctx table.tl-grid td.tl-more{color:#8c959f;background:transparent;border:none}
.tl-ctx .tl-stats{margin-top:4px;font-size:12px;color:#1f2328}
.tl-ctx .tl-stats b{font-weight:600;color:#57606a}
.tl-ctx .tl-msg{color:#cf222e;font-size:12px}
.tl-ctx .tl-empty{color:#8c959f;font-style:italic;padding-left:14px}
.tl-ctx .tl-problems{margin:10px 0 0 0;padding:6px 10px;border-radius:6px;
background:#ffebe9;color:#82071e;border:1px solid #ffcecb}
.tl-ctx .tl-problems ul{margin:2px 0 0 0;padding-left:18px}
.tl-ctx .tl-ok{margin-top:10px;color:#116329}
.tl-ctx .tl-sampled{color:#9a6700}
.tl-ctx .tl-pills{display:flex;gap:6px;flex-wrap:wrap;margin:4px 0 6px 0}
.tl-ctx .tl-pills .tl-pill{margin-left:0}
.tl-ctx .tl-lean{background:#f6f8fa;color:#1f2328;border-color:#d0d7de}
.tl-ctx .tl-tensor details{margin:4px 0 4px 8px}
.tl-ctx .tl-tensor pre{white-space:pre-wrap;margin:4px 0;font-size:12px}
.tl-ctx .tl-tensor code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;
font-size:12px;word-break:break-all}
.tl-ctx .tl-dim{color:#8c959f}
""".replace("\n", "")


def to_html(ctx: Any, *, open_sections: bool = True, filter: str | None = None) -> str:
    """One self-contained HTML fragment showing ``ctx`` (a
    :class:`~torchlean.RuntimeContext` or a :class:`~torchlean.widgets.Summary`).

    Mirrors TorchLean's ``#runtime_ctx_view`` widget (``runtimeCtxHtml``): header pills
    ``vars=N``, ``grads=N``, ``next_id=N``; sections ``var_registry`` and ``gradients``
    with ``count=N``; each entry a ``<details>`` whose summary is the name with
    ``shape=`` (``Shape.pretty``) and ``size=`` pills and whose body is
    ``anyTensorHtml``'s preview, plus what the Python view adds (dtype, device, bytes,
    gradient, statistics, problems). ``filter`` keeps the entries whose name a glob
    matches (:meth:`~torchlean.widgets.Summary.select`). Inline CSS, no script. Every
    name and value is escaped. Cost: that of :func:`~torchlean.widgets.summarize`.
    """
    check_view_options("to_html", filter=filter, depth=None)
    s = as_summary(ctx).select(filter)
    out: list[str] = ['<div class="tl-ctx">', f"<style>{_CSS}</style>"]
    out.append(f'<div class="tl-title">{escape(s.title)}</div>')
    pills = ['<span class="tl-pill tl-lean">RuntimeContext</span>']
    if not s.donated:
        pills.append(
            f'<span class="tl-pill tl-lean" data-pill="vars">vars={len(s.variables)}</span>'
        )
        pills.append(
            f'<span class="tl-pill tl-lean" data-pill="grads">grads={len(s.gradients)}</span>'
        )
    if s.next_id is not None:
        pills.append(
            f'<span class="tl-pill tl-lean" data-pill="next_id">next_id={s.next_id}</span>'
        )
    out.append(f'<div class="tl-pills">{" ".join(pills)}</div>')
    for note in s.notes:
        out.append(f'<div class="tl-note">{escape(note)}</div>')
    if s.filter is not None and s.unfiltered is not None:
        out.append(
            f'<div class="tl-note" data-filter="{escape(s.filter, quote=True)}">filter'
            f" <code>{escape(s.filter)}</code>: {len(s.variables)} of {s.unfiltered[0]}"
            f" variables, {len(s.gradients)} of {s.unfiltered[1]} gradients</div>"
        )
    if s.donated:  # its entries belong to the context the donating call returned
        out.append(f'<div class="tl-empty" data-donated="1">{escape(DONATED)}</div></div>')
        return "\n".join(out)
    for title, key, rows in (
        ("var_registry", "variables", s.variables),
        ("gradients", "gradients", s.gradients),
    ):
        attr = " open" if open_sections else ""
        out.append(f'<details class="tl-section" data-section="{key}"{attr}>')
        out.append(
            f'<summary><span class="tl-pill tl-lean">{title}</span>'
            f'<span class="tl-pill tl-count" data-count="{len(rows)}">'
            f"count={len(rows)}</span></summary>"
        )
        if rows:
            out.append('<ul class="tl-rows">')
            out.extend(_row(r) for r in rows)
            out.append("</ul>")
        else:
            out.append(f'<div class="tl-empty">no {key}</div>')
        out.append("</details>")
    if s.problems:
        n = len(s.problems)
        out.append(f'<div class="tl-problems" data-problems="{n}">')
        out.append(f"<b>{n} problem{'s' if n != 1 else ''}</b><ul>")
        out.extend(f"<li>{escape(p.message)}</li>" for p in s.problems)
        out.append("</ul></div>")
    else:
        out.append('<div class="tl-ok" data-problems="0">no problems found</div>')
    out.append("</div>")
    return "\n".join(out)


def to_html_page(ctx: Any, *, title: str = "torchlean context", filter: str | None = None) -> str:
    """A complete HTML document holding :func:`to_html` of ``ctx`` (for a file);
    ``filter`` as in :func:`to_html`."""
    if not isinstance(title, str):
        raise TypeError(f"to_html_page: title must be a str, got {type(title).__name__}")
    check_view_options("to_html_page", filter=filter, depth=None)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '</head>\n<body style="margin:16px;background:#fff">\n'
        f"{to_html(ctx, filter=filter)}\n</body>\n</html>\n"
    )


def _row(r: Row) -> str:
    cls = "tl-row tl-problem" if r.problems else "tl-row"
    pills = [
        f'<span class="tl-pill tl-shape" title="{escape(r.shape_text)}">'
        f"shape={escape(r.shape_pretty)}</span>",
        f'<span class="tl-pill tl-size" title="elements">size={r.numel}</span>',
        f'<span class="tl-pill tl-dims" title="shape">{escape(r.shape_text)}</span>',
        f'<span class="tl-pill tl-dtype" title="dtype">{escape(r.dtype)}</span>',
    ]
    if r.nbytes is not None:
        pills.append(f'<span class="tl-pill tl-bytes" title="bytes">{format_size(r.nbytes)}</span>')
    if r.registry == "variable" and not r.shadowed:
        if r.has_gradient:
            norm = ""
            if r.gradient_norm is not None:
                approx = "~" if r.norm_sampled else ""
                norm = f" ‖g‖={approx}{escape(format_number(r.gradient_norm))}"
            pills.append(f'<span class="tl-pill tl-grad">grad{norm}</span>')
        else:
            pills.append('<span class="tl-pill tl-nograd">no grad</span>')
    if r.shadowed:
        pills.append('<span class="tl-pill tl-shadowed">shadowed</span>')
    for p in r.problems:
        pills.append(f'<span class="tl-pill tl-bad">{escape(p.kind)}</span>')
    summary = f'<span class="tl-name">{escape(r.name)}</span>' + "".join(pills)
    return (
        f'<li class="{cls}" data-name="{escape(r.name, quote=True)}"><details>'
        f"<summary>{summary}</summary>{_details(r)}</details></li>"
    )


def _pill(text: str) -> str:
    return f'<span class="tl-pill tl-lean">{escape(text)}</span>'


def _pills(*texts: str) -> str:
    return f'<div class="tl-pills">{"".join(_pill(t) for t in texts)}</div>'


def _bool(b: bool) -> str:
    """A Lean ``Bool`` as ``toString`` writes it."""
    return "true" if b else "false"


def _details(r: Row) -> str:
    out = ['<div class="tl-preview">']
    out.append(f'<div class="tl-meta">{escape(r.registry)} · device {escape(r.device)}</div>')
    out.append(_tensor(r))
    s = r.stats
    if s is not None:
        parts = []
        if s.min is not None:
            parts.append(f"<b>min</b> {escape(format_number(s.min))}")
            parts.append(f"<b>max</b> {escape(format_number(s.max))}")
            parts.append(f"<b>mean</b> {escape(format_number(s.mean))}")
        parts.append(f"<b>NaN</b> {s.nan}")
        parts.append(f"<b>inf</b> {s.inf}")
        sampled = (
            f' <span class="tl-sampled">(sampled: {s.counted:,} of {r.numel:,} values)</span>'
            if s.sampled
            else ""
        )
        out.append(f'<div class="tl-stats">{" · ".join(parts)}{sampled}</div>')
    for p in r.problems:
        out.append(f'<div class="tl-msg">{escape(p.message)}</div>')
    out.append("</div>")
    return "".join(out)


def _dims(dims: tuple[int, ...]) -> str:
    """Lean's ``dimsString``: ``[2, 3]``; a scalar is ``[]``."""
    return "[" + ", ".join(str(d) for d in dims) + "]"


def _tensor(r: Row) -> str:
    """``anyTensorHtml``: the pills ``shape=[..]``, ``rank=``, ``size=``, then the body."""
    head = _pills(f"shape={_dims(r.dims)}", f"rank={len(r.dims)}", f"size={r.numel}")
    if r.preview is None:
        body = (
            '<div class="tl-meta">(no preview: the source reads only the first elements'
            " of this tensor)</div>"
        )
    else:
        body = _body(r.preview)
    return f'<div class="tl-tensor">{head}{body}</div>'


def _body(p: Preview) -> str:
    """``tensorHtmlRec``: one node of the preview."""
    if p.kind == "scalar":
        return f"<div>{_pill('scalar')} <code>{escape(p.cells[0][0])}</code></div>"
    if p.kind == "vector":
        shown = len(p.cells[0]) if p.cells else 0
        return _pills(
            f"vector len={p.dims[0]}", f"showing={shown}", f"clipped={_bool(p.clipped_cols)}"
        ) + _table(p)
    if p.kind == "matrix":
        n, m = p.dims
        more = '<div class="tl-dim">... (more rows)</div>' if p.clipped_rows else ""
        return (
            _pills(
                f"matrix {n}×{m}",
                f"rows={len(p.cells)}",
                f"clippedRows={_bool(p.clipped_rows)}",
                f"clippedCols={_bool(p.clipped_cols)}",
            )
            + _table(p)
            + more
        )
    if p.kind == "nested":
        return (
            "<div><details><summary>Pretty (nested)</summary>"
            f"<pre>{escape(p.pretty)}</pre></details>{_flat(p)}</div>"
        )
    slices = "".join(
        f"<details><summary>[{i}]</summary><div>{_body(child)}</div></details>"
        for i, child in enumerate(p.slices)
    )
    more = '<div class="tl-dim">... (more slices)</div>' if p.clipped_slices else ""
    summary = "".join(
        _pill(t)
        for t in (
            f"leading slices={len(p.slices)}",
            f"clipped={_bool(p.clipped_slices)}",
            f"sliceShape={_dims(p.dims[1:])}",
        )
    )
    return (
        f"<div><details open><summary>{summary}</summary><div>{slices}{more}</div>"
        f"</details>{_flat(p)}</div>"
    )


def _table(p: Preview) -> str:
    more = '<td class="tl-more">...</td>' if p.clipped_cols else ""
    lines = "".join(
        "<tr>" + "".join(f"<td>{escape(v)}</td>" for v in line) + more + "</tr>" for line in p.cells
    )
    return f'<table class="tl-grid">{lines}</table>'


def _flat(p: Preview) -> str:
    """``renderFlatPreview``: the first values, ``, ...`` when clipped."""
    if p.flat:
        text = "[" + ", ".join(p.flat) + (", ..." if p.flat_clipped else "") + "]"
    else:
        text = "(empty?)"
    return (
        f"<details><summary>Flat preview (first {PREVIEW_ELEMS})</summary>"
        f"<code>{escape(text)}</code></details>"
    )
