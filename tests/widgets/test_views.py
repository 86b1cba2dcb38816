"""The summary, the terminal view and the HTML view of a context."""

from __future__ import annotations

import html
import io
import math
import os
import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rich.console

import torchlean as tl
from torchlean.widgets import rich_renderable, summarize, to_html, to_html_page, to_text
from torchlean.widgets._build import SAMPLE_LIMIT
from torchlean.widgets._format import format_number

# The helpers beside this file (pytest runs with --import-mode=importlib).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from views_helpers import EVIL, EVIL_IMG, evil_context, sample_context

SNAPSHOTS = Path(__file__).resolve().parents[1] / "snapshots"


# ---------------------------------------------------------------------- summary


def test_summary_rows_follow_the_registries_most_recent_first() -> None:
    s = summarize(sample_context())
    assert [r.name for r in s.variables] == [
        "embed",
        "bad",
        "steps",
        "fc1.weight",
        "fc1.bias",
        "fc1.weight",
    ]
    assert [r.name for r in s.gradients] == ["ghost", "fc1.bias", "fc1.weight"]
    assert [r.shadowed for r in s.variables] == [False, False, False, False, False, True]
    assert s.next_id == 6


def test_summary_row_fields() -> None:
    s = summarize(sample_context())
    w = s.variables[3]
    assert (w.dims, w.dtype, w.device, w.numel, w.nbytes) == ((4, 10), "float32", "cpu", 40, 160)
    assert w.first == ("-1", "-0.9487", "-0.8974", "-0.8462", "-0.7949", "-0.7436")
    assert w.stats is not None and not w.stats.sampled
    assert w.stats.min == -1.0 and w.stats.max == 1.0
    assert w.stats.mean == pytest.approx(0.0, abs=1e-7)
    assert w.has_gradient and w.gradient_norm == pytest.approx(math.sqrt(40 * 0.25))
    assert len(w.grid) == 4 and len(w.grid[0]) == 8 and w.grid_more_cols
    steps = s.variables[2]
    assert steps.dims == () and steps.first == ("7",) and steps.grid == (("7",),)
    assert not steps.has_gradient and steps.gradient_norm is None


def test_problems_of_check_are_flagged_on_their_rows() -> None:
    ctx = sample_context()
    s = summarize(ctx)
    assert [p.message for p in s.problems] == [p.message for p in ctx.check()]
    bad = s.variables[1]
    assert [p.kind for p in bad.problems] == ["non-finite"]
    assert bad.stats is not None and (bad.stats.nan, bad.stats.inf) == (1, 1)
    assert (bad.stats.min, bad.stats.max) == (-2.0, 1.0)
    kinds = {r.name: [p.kind for p in r.problems] for r in s.gradients}
    assert kinds == {"ghost": ["orphan-gradient"], "fc1.bias": ["shape-mismatch"], "fc1.weight": []}


def test_statistics_of_a_huge_tensor_come_from_a_bounded_sample() -> None:
    n = SAMPLE_LIMIT * 3 + 7
    values = np.arange(n, dtype=np.float32)
    ctx = tl.empty_context().register_variable("big", values).register_gradient("big", values)
    s = summarize(ctx)
    row = s.variables[0]
    assert row.stats is not None and row.stats.sampled
    assert row.stats.counted <= SAMPLE_LIMIT
    assert row.stats.min == 0.0 and row.stats.max >= n - 4 * 4
    assert row.norm_sampled and row.sampled and s.sampled
    exact = float(np.sqrt(np.sum(values.astype(np.float64) ** 2)))
    assert row.gradient_norm == pytest.approx(exact, rel=1e-2)
    assert row.first == ("0", "1", "2", "3", "4", "5")
    text = to_text(ctx)
    assert "~min=0" in text and "sample" in text
    assert str(n - 1) not in text  # never printed in full


def test_a_small_sample_limit_marks_statistics_as_sampled() -> None:
    ctx = tl.empty_context().register_variable("x", np.arange(100, dtype=np.float64))
    row = summarize(ctx, sample_limit=10).variables[0]
    assert row.stats is not None and row.stats.sampled and row.stats.counted == 10
    assert summarize(ctx, sample_limit=100).variables[0].stats.sampled is False  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("value", "stats"),
    [
        (np.array([True, False, True]), (0.0, 1.0)),
        (np.array([3, -4], dtype=np.int8), (-4.0, 3.0)),
        (np.array([np.nan, np.nan], dtype=np.float32), (None, None)),
        (np.zeros((0, 3), dtype=np.float32), None),
    ],
)
def test_summary_of_unusual_tensors(value: Any, stats: Any) -> None:
    row = summarize(tl.empty_context().register_variable("x", value)).variables[0]
    if stats is None:
        assert row.stats is None and row.first == () and row.grid == ()
    else:
        assert row.stats is not None and (row.stats.min, row.stats.max) == stats


def test_complex_tensor_has_no_order_statistics() -> None:
    row = summarize(
        tl.empty_context().register_variable("z", np.array([1 + 2j, 3 - 1j]))
    ).variables[0]
    assert row.first == ("1+2j", "3-1j")
    assert row.stats is not None and row.stats.min is None


def test_torch_tensors_are_summarized_including_bfloat16() -> None:
    import torch

    ctx = tl.empty_context().register_variable(
        "w", torch.arange(6, dtype=torch.bfloat16).reshape(2, 3)
    )
    row = summarize(ctx).variables[0]
    assert (row.dtype, row.device, row.nbytes) == ("bfloat16", "cpu", 12)
    assert row.first == ("0", "1", "2", "3", "4", "5")
    assert row.stats is not None and row.stats.mean == pytest.approx(2.5)


def test_summary_to_dict_is_json_ready() -> None:
    import json

    d = summarize(sample_context()).to_dict()
    text = json.dumps(d, allow_nan=False)
    assert '"fc1.weight"' in text
    bad = d["variables"][1]
    assert bad["first"] == [1, "nan", "inf", -2]
    assert bad["stats"]["nan"] == 1 and bad["problems"] == [
        "variable `bad` has 1 NaN and 1 infinite values"
    ]
    assert [p["kind"] for p in d["problems"]] == ["non-finite", "orphan-gradient", "shape-mismatch"]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0"),
        (1 / 3, "0.3333"),
        (1e-9, "1e-09"),
        (float("nan"), "nan"),
        (-float("inf"), "-inf"),
        (12345678, "12345678"),
        (True, "true"),
    ],
)
def test_format_number(value: Any, text: str) -> None:
    assert format_number(value) == text


# ---------------------------------------------------------------------- terminal


def test_rich_print_of_a_context_draws_both_tables() -> None:
    buffer = io.StringIO()
    console = rich.console.Console(file=buffer, width=140, color_system=None)
    console.print(sample_context())
    out = buffer.getvalue()
    assert "Variables (6) · device cpu" in out and "Gradients (3) · dtype float32" in out
    assert "fc1.weight (shadowed)" in out
    lines = out.splitlines()
    flagged = [line.split()[1] for line in lines if line.startswith("!  ")]
    assert flagged == ["bad", "ghost", "fc1.bias"]  # one mark per row with a problem
    assert "3 problems:" in out
    assert "yes (3.162)" in out  # the norm of the gradient of fc1.weight


def test_rich_renderable_accepts_a_summary() -> None:
    s = summarize(sample_context())
    assert to_text(s) == to_text(sample_context())
    assert rich_renderable(s) is not None


def test_empty_context_text() -> None:
    text = to_text(tl.empty_context())
    assert "Variables (0): none" in text and "Gradients (0): none" in text
    assert "no problems found" in text


def _snapshot(name: str, got: str) -> None:
    path = SNAPSHOTS / name
    if os.environ.get("TORCHLEAN_UPDATE_SNAPSHOTS") == "1":
        path.write_text(got, encoding="utf-8")
    want = path.read_text(encoding="utf-8")
    assert got == want, f"{name} changed; rerun with TORCHLEAN_UPDATE_SNAPSHOTS=1 and review it"


def test_text_view_snapshot() -> None:
    _snapshot("context_view.txt", to_text(sample_context(), width=120))


def test_html_view_snapshot() -> None:
    _snapshot("context_view.html", to_html_page(sample_context(), title="sample context"))


# ---------------------------------------------------------------------- HTML


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(fragment: str) -> _Collect:
    p = _Collect()
    p.feed(fragment)
    p.close()
    return p


def test_html_has_two_sections_with_counts_and_pills() -> None:
    fragment = to_html(sample_context())
    p = _parse(fragment)
    sections = [a["data-section"] for t, a in p.tags if t == "details" and "data-section" in a]
    assert sections == ["variables", "gradients"]
    counts = [a["data-count"] for t, a in p.tags if a.get("class") == "tl-pill tl-count"]
    assert counts == ["6", "3"]
    for pill in ("vars=6", "grads=3", "next_id=6", "var_registry", "gradients", "count=6"):
        assert pill in p.text
    rows = [a["data-name"] for t, a in p.tags if t == "li" and "data-name" in a]
    assert rows == [
        "embed",
        "bad",
        "steps",
        "fc1.weight",
        "fc1.bias",
        "fc1.weight",
        "ghost",
        "fc1.bias",
        "fc1.weight",
    ]
    classes = [a.get("class") for t, a in p.tags if t == "span"]
    assert classes.count("tl-pill tl-shape") == 9 and classes.count("tl-pill tl-size") == 9
    assert "shape=dim 4 (dim 10 (scalar))" in p.text and "size=40" in p.text
    assert "(4, 10)" in p.text and "160 B" in p.text and "shadowed" in p.text


def test_html_is_self_contained() -> None:
    fragment = to_html(sample_context())
    assert "<script" not in fragment.lower()
    assert not re.search(r"(?i)(https?:|//[a-z]|@import|url\()", fragment)
    assert fragment.startswith('<div class="tl-ctx">') and fragment.endswith("</div>")


def test_repr_html_is_the_html_view() -> None:
    ctx = sample_context()
    assert ctx._repr_html_() == to_html(ctx)


def test_names_and_values_are_escaped() -> None:
    fragment = to_html(evil_context())
    assert "<script>" not in fragment and "<img" not in fragment
    assert html.escape(EVIL) in fragment
    assert html.escape(EVIL_IMG, quote=True) in fragment
    p = _parse(fragment)
    assert [t for t, _ in p.tags if t in ("script", "img")] == []
    assert EVIL in "".join(p.text)  # shown as text


def test_jax_arrays_are_summarized() -> None:
    import jax.numpy as jnp

    ctx = tl.empty_context().register_variable("w", jnp.arange(6.0).reshape(2, 3))
    row = summarize(ctx).variables[0]
    assert (row.dims, row.numel) == ((2, 3), 6)
    assert row.first == ("0", "1", "2", "3", "4", "5")
    assert row.grid == (("0", "1", "2"), ("3", "4", "5"))
    assert row.stats is not None and row.stats.max == 5.0
    assert "cpu" in row.device.lower()


def test_a_donated_context_is_shown_as_donated() -> None:
    from torchlean.runtime.context import donate

    ctx = sample_context()
    donate(ctx, to="sgd_step")
    text = to_text(ctx)
    assert text.startswith("RuntimeContext: this context was donated to sgd_step")
    assert "donated to sgd_step" in to_html(ctx)


def test_a_non_contiguous_torch_tensor_is_read_in_blocks_not_copied_whole() -> None:
    import torch

    base = torch.arange(30 * 40, dtype=torch.float32).reshape(30, 40)
    t = base.T  # (40, 30), not contiguous
    assert not t.is_contiguous()
    ctx = tl.empty_context().register_variable("t", t)
    row = summarize(ctx, sample_limit=640).variables[0]
    want = t.reshape(-1)[:6].tolist()
    assert row.first == tuple(format_number(v) for v in want)
    assert row.grid[1][:3] == tuple(format_number(v) for v in t[1, :3].tolist())
    assert row.stats is not None and row.stats.sampled
    assert 64 <= row.stats.counted <= 640
    assert row.stats.min == 0.0
    exact = summarize(ctx).variables[0].stats
    assert exact is not None and not exact.sampled and exact.max == 1199.0


def test_sample_blocks_cover_the_tensor_evenly() -> None:
    from torchlean.widgets._sources import SAMPLE_BLOCKS, sample_blocks

    a = np.arange(10_000).reshape(100, 100)
    got = sample_blocks(lambda index: a[index], a.shape, 6400)
    assert got.size == 6400 and len(set(got.tolist())) == 6400
    assert got.min() == 0 and got.max() > 9_800
    assert sample_blocks(lambda index: a[index], a.shape, 1).size == SAMPLE_BLOCKS
