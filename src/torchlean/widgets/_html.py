"""The notebook view of a context: one self-contained piece of HTML.

Like TorchLean's ``#runtime_ctx_view`` widget: two collapsible sections, Variables and
Gradients, each with its count; each row is the name with a shape pill and a size pill
and opens onto a preview of the values. Inline CSS only: no script, no network, no
JavaScript framework. Every name and value is escaped with :func:`html.escape`.

Reading map:
- :func:`to_html` -- the fragment (``RuntimeContext._repr_html_`` returns it).
- :func:`to_html_page` -- the fragment in a complete HTML document (``show --html``).
- ``_row`` / ``_size`` / ``_preview`` -- one entry: its pills and its preview.

The data comes from :mod:`._build` (a :class:`~torchlean.widgets.Summary`); numbers and
sizes are written by :mod:`._format`.
"""

from __future__ import annotations

from html import escape
from typing import Any

from torchlean.widgets._build import as_summary
from torchlean.widgets._format import DONATED, format_number, format_size
from torchlean.widgets._model import Row

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
""".replace("\n", "")


def to_html(ctx: Any, *, open_sections: bool = True) -> str:
    """One self-contained HTML fragment showing ``ctx`` (a
    :class:`~torchlean.RuntimeContext` or a :class:`~torchlean.widgets.Summary`).

    Mirrors TorchLean's ``#runtime_ctx_view`` widget: Variables and Gradients as two
    ``<details>`` sections with their counts; each entry a ``<details>`` whose summary is
    the name with shape and size pills and whose body previews the values. Inline CSS, no
    script. Every name and value is escaped. Cost: that of
    :func:`~torchlean.widgets.summarize`.
    """
    s = as_summary(ctx)
    out: list[str] = ['<div class="tl-ctx">', f"<style>{_CSS}</style>"]
    title = escape(s.title)
    if s.next_id is not None:
        title += f' <span class="tl-note">next_id={s.next_id}</span>'
    out.append(f'<div class="tl-title">{title}</div>')
    for note in s.notes:
        out.append(f'<div class="tl-note">{escape(note)}</div>')
    if s.donated:  # its entries belong to the context the donating call returned
        out.append(f'<div class="tl-empty" data-donated="1">{escape(DONATED)}</div></div>')
        return "\n".join(out)
    for label, key, rows in (
        ("Variables", "variables", s.variables),
        ("Gradients", "gradients", s.gradients),
    ):
        attr = " open" if open_sections else ""
        out.append(f'<details class="tl-section" data-section="{key}"{attr}>')
        out.append(
            f'<summary>{label}<span class="tl-count" data-count="{len(rows)}">'
            f"{len(rows)}</span></summary>"
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


def to_html_page(ctx: Any, *, title: str = "torchlean context") -> str:
    """A complete HTML document holding :func:`to_html` of ``ctx`` (for a file)."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '</head>\n<body style="margin:16px;background:#fff">\n'
        f"{to_html(ctx)}\n</body>\n</html>\n"
    )


def _row(r: Row) -> str:
    cls = "tl-row tl-problem" if r.problems else "tl-row"
    pills = [
        f'<span class="tl-pill tl-shape" title="shape">{escape(r.shape_text)}</span>',
        f'<span class="tl-pill tl-size" title="elements, bytes">{_size(r)}</span>',
        f'<span class="tl-pill tl-dtype" title="dtype">{escape(r.dtype)}</span>',
    ]
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
        f"<summary>{summary}</summary>{_preview(r)}</details></li>"
    )


def _size(r: Row) -> str:
    n = f"n={r.numel:,}"
    if r.nbytes is None:
        return escape(n)
    return escape(f"{n} · {format_size(r.nbytes)}")


def _preview(r: Row) -> str:
    out = ['<div class="tl-preview">']
    out.append(f'<div class="tl-meta">{escape(r.registry)} · device {escape(r.device)}</div>')
    if r.grid:
        out.append('<table class="tl-grid">')
        for line in r.grid:
            cells = "".join(f"<td>{escape(v)}</td>" for v in line)
            if r.grid_more_cols:
                cells += '<td class="tl-more">…</td>'
            out.append(f"<tr>{cells}</tr>")
        if r.grid_more_rows:
            out.append(f'<tr><td class="tl-more" colspan="{len(r.grid[0]) + 1}">⋮</td></tr>')
        out.append("</table>")
    else:
        out.append('<div class="tl-meta">(no elements)</div>')
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
