"""The notebook view shows what TorchLean's ``#runtime_ctx_view`` widget shows.

The limits and words come from ``NN/Widgets/Runtime/Context.lean`` (``kvRow`` calls
``anyTensorHtml`` with maxRows 10, maxCols 12, maxElems 64) and ``NN/Widgets/Core/Tensor.lean``
(``tensorHtml``: vector, matrix, up to 6 leading slices two levels deep, then the nested
pretty form and the flat preview).
"""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import numpy as np
import pytest

import torchlean as tl
from torchlean.widgets import Preview, summarize, to_html
from torchlean.widgets._build import HEAD_READ_LIMIT, summarize_sources
from torchlean.widgets._format import format_number
from torchlean.widgets._sources import source_of


def _row(value: Any) -> Any:
    return summarize(tl.empty_context().register_variable("x", value)).variables[0]


def _texts(a: np.ndarray[Any, Any]) -> tuple[str, ...]:
    return tuple(format_number(v) for v in a.reshape(-1).tolist())


def test_a_wide_matrix_previews_up_to_6_by_8_in_the_compact_grid() -> None:
    # The old code read only the first row of a matrix wider than 32 columns (1 x 8).
    a = np.arange(10 * 100, dtype=np.float32).reshape(10, 100)
    row = _row(a)
    assert len(row.grid) == 6 and all(len(line) == 8 for line in row.grid)
    assert row.grid[5] == _texts(a[5, :8])
    assert row.grid_more_rows and row.grid_more_cols


def test_the_first_matrix_of_a_wide_rank_3_tensor_fills_the_grid() -> None:
    a = np.arange(2 * 7 * 40, dtype=np.float64).reshape(2, 7, 40)
    row = _row(a)
    assert [line for line in row.grid] == [_texts(a[0, r, :8]) for r in range(6)]


def test_scalar_preview() -> None:
    p = _row(np.float64(2.5)).preview
    assert p == Preview("scalar", (), cells=(("2.5",),))


@pytest.mark.parametrize(
    ("n", "shown", "clipped"), [(0, 0, False), (12, 12, False), (13, 12, True)]
)
def test_vector_preview_shows_at_most_12_values(n: int, shown: int, clipped: bool) -> None:
    p = _row(np.arange(n, dtype=np.int32)).preview
    assert p is not None and p.kind == "vector" and p.dims == (n,)
    assert len(p.cells[0]) == shown and p.clipped_cols is clipped
    assert p.cells[0] == _texts(np.arange(shown))


def test_matrix_preview_shows_at_most_10_rows_of_12() -> None:
    a = np.arange(15 * 20, dtype=np.float32).reshape(15, 20)
    p = _row(a).preview
    assert p is not None and p.kind == "matrix"
    assert len(p.cells) == 10 and all(len(r) == 12 for r in p.cells)
    assert p.cells[9] == _texts(a[9, :12])
    assert p.clipped_rows and p.clipped_cols
    small = _row(np.ones((3, 4))).preview
    assert small is not None and (small.clipped_rows, small.clipped_cols) == (False, False)


def test_rank_3_shows_6_leading_matrices_then_the_first_64_values() -> None:
    a = np.arange(8 * 11 * 13, dtype=np.float64).reshape(8, 11, 13)
    p = _row(a).preview
    assert p is not None and p.kind == "slices" and p.clipped_slices
    assert [s.kind for s in p.slices] == ["matrix"] * 6
    assert p.slices[5].cells[0] == _texts(a[5, 0, :12])
    assert len(p.slices[5].cells) == 10 and p.slices[5].clipped_rows
    assert p.flat == _texts(a.reshape(-1)[:64]) and p.flat_clipped


def test_rank_4_ends_in_the_nested_pretty_form_and_a_flat_preview() -> None:
    a = np.arange(7 * 3 * 2 * 2, dtype=np.int64).reshape(7, 3, 2, 2)
    p = _row(a).preview
    assert p is not None and p.kind == "slices" and len(p.slices) == 6 and p.clipped_slices
    inner = p.slices[4]
    assert inner.kind == "slices" and len(inner.slices) == 3 and not inner.clipped_slices
    assert inner.flat == _texts(a[4]) and not inner.flat_clipped
    leaf = inner.slices[2]
    assert leaf.kind == "nested" and leaf.dims == (2, 2)
    assert leaf.pretty == str(a[4, 2].tolist())  # Spec.pretty: [a, b] per dimension
    assert leaf.flat == _texts(a[4, 2])


def test_the_nested_form_of_a_big_slice_is_cut_to_the_preview_limits() -> None:
    a = np.zeros((1, 1, 11, 13), dtype=np.int8)
    leaf = _row(a).preview.slices[0].slices[0]  # type: ignore[union-attr]
    rows = leaf.pretty[1:-1].split("], ")
    assert len(rows) == 11 and rows[-1] == "..."  # 10 rows, then the cut
    assert rows[0] == "[" + ", ".join(["0"] * 12) + ", ..."


class _HeadOnly:
    """A source with no ``block`` method (as a file source may be)."""

    def __init__(self, src: Any) -> None:
        self._src = src
        self.dims, self.dtype, self.device = src.dims, src.dtype, src.device
        self.read = 0

    def head(self, n: int) -> Any:
        self.read = max(self.read, n)
        return self._src.head(n)

    def sample(self, limit: int) -> Any:
        return self._src.sample(limit)


def test_a_source_without_block_gives_the_same_preview_from_its_first_elements() -> None:
    a = np.arange(7 * 3 * 5 * 6, dtype=np.float32).reshape(7, 3, 5, 6)
    ctx = tl.empty_context().register_variable("x", a)
    src = source_of(ctx.var_registry[0][1])
    plain = _HeadOnly(src)
    got = summarize_sources("t", [("x", plain)]).variables[0]
    want = summarize_sources("t", [("x", src)]).variables[0]
    assert got.preview == want.preview and got.grid == want.grid and got.first == want.first
    assert plain.read <= a.size


def test_a_source_without_block_reads_at_most_the_limit_and_says_so() -> None:
    a = np.zeros((7, 1 << 16), dtype=np.float32)  # slice 5 starts beyond the limit
    ctx = tl.empty_context().register_variable("x", a.reshape(7, 1, 1 << 16))
    plain = _HeadOnly(source_of(ctx.var_registry[0][1]))
    row = summarize_sources("t", [("x", plain)]).variables[0]
    assert row.preview is None and plain.read <= HEAD_READ_LIMIT
    assert "no preview: the source reads only the first elements" in to_html(
        summarize_sources("t", [("x", plain)])
    )


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []

    def handle_data(self, data: str) -> None:
        self.text.append(data.strip())


def _html_text(ctx: Any) -> list[str]:
    p = _Text()
    p.feed(to_html(ctx))
    return [t for t in p.text if t and not t.startswith(".tl-ctx")]  # not the <style>


def test_html_has_torchlean_header_pills_sections_and_row_pills() -> None:
    ctx = (
        tl.empty_context()
        .register_variable("w", np.ones((2, 4), np.float32))
        .register_variable("b", np.ones(2, np.float32))
        .register_gradient("w", np.ones((2, 4), np.float32))
    )
    text = _html_text(ctx)
    assert text[:5] == [
        "RuntimeContext: 2 variables, 1 gradient",
        "RuntimeContext",
        "vars=2",
        "grads=1",
        "next_id=2",
    ]
    assert text.count("var_registry") == 1 and "count=2" in text and "count=1" in text
    assert "shape=dim 2 (dim 4 (scalar))" in text and "size=8" in text
    assert "shape=dim 2 (scalar)" in text and "size=2" in text
    # anyTensorHtml's own header and the matrix body, in Lean's words
    for pill in (
        "shape=[2, 4]",
        "rank=2",
        "matrix 2×4",
        "rows=2",
        "clippedRows=false",
        "clippedCols=false",
    ):
        assert pill in text
    for pill in ("shape=[2]", "rank=1", "vector len=2", "showing=2", "clipped=false"):
        assert pill in text


def test_html_preview_of_big_and_high_rank_tensors_uses_lean_wording() -> None:
    ctx = (
        tl.empty_context()
        .register_variable("m", np.zeros((11, 13), np.float32))
        .register_variable("c", np.zeros((7, 3, 2, 2), np.float32))
        .register_variable("v", np.arange(13, dtype=np.int64))
    )
    text = _html_text(ctx)
    for words in (
        "matrix 11×13",
        "rows=10",
        "clippedRows=true",
        "clippedCols=true",
        "... (more rows)",
        "leading slices=6",
        "clipped=true",
        "sliceShape=[3, 2, 2]",
        "leading slices=3",
        "sliceShape=[2, 2]",
        "[5]",
        "... (more slices)",
        "Pretty (nested)",
        "Flat preview (first 64)",
        "[[0, 0], [0, 0]]",
        "vector len=13",
        "showing=12",
        "shape=[7, 3, 2, 2]",
        "rank=4",
        "size=84",
        "size=13",
    ):
        assert words in text, words
    flat = [t for t in text if t.startswith("[0, 0, 0") and t.endswith(", ...]")]
    assert flat and flat[0].count(",") == 64  # 64 values, then the cut
    assert "(empty?)" in _html_text(tl.empty_context().register_variable("e", np.zeros((0, 2, 2))))
