"""``torchlean show`` reads a safetensors file lazily: header, previews, bounded samples."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import given
from hypothesis import strategies as st

import torchlean as tl
from torchlean import io
from torchlean.cli import _files
from torchlean.widgets._sources import block_index

# The helpers beside this file (pytest runs with --import-mode=importlib).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_helpers import run


def _no_full_load(*args: object, **kwargs: object) -> None:
    raise AssertionError("show must not load the whole file")


def test_show_never_loads_a_safetensors_file_whole(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = np.arange(3 << 20, dtype=np.float32).reshape(3 << 10, 1 << 10)
    path = tmp_path / "big.safetensors"
    safetensors.numpy.save_file({"big": big, "small": np.ones(3, np.float32)}, str(path))
    monkeypatch.setattr(io, "load", _no_full_load)
    code, out, _ = run(capsys, "show", path, "--json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)["variables"]}
    s = rows["big"]["stats"]
    assert s["sampled"] is True and 0 < s["counted"] <= 1 << 20
    assert s["min"] == 0.0 and s["max"] > 0.9 * big.size  # blocks spread to the end
    assert abs(s["mean"] - big.size / 2) < 0.05 * big.size
    assert rows["big"]["first"] == [0, 1, 2, 3, 4, 5]
    assert rows["small"]["stats"]["sampled"] is False
    code, out, _ = run(capsys, "check", path, "--expect", path)
    assert code == 0


def test_lazy_summary_of_a_saved_context_matches_the_in_memory_one(tmp_path: Path) -> None:
    ctx = (
        tl.empty_context()
        .register_variable("w", np.arange(12, dtype=np.float32).reshape(3, 4))
        .register_variable("b", np.array([1.0, np.nan], np.float32))
        .register_variable("w", np.zeros((2, 2), np.float32))
        .register_gradient("w", np.ones((2, 2), np.float32))
        .register_gradient("ghost", np.ones(1, np.float32))
    )
    path = tmp_path / "ctx.safetensors"
    io.save(ctx, path)
    lazy = _files.summary(path)
    from torchlean.widgets import summarize

    mem = summarize(ctx)
    # the file view lists entries in registration order; the context most recent first
    assert [r.name for r in lazy.variables] == [r.name for r in mem.variables][::-1]
    assert [r.shadowed for r in lazy.variables] == [r.shadowed for r in mem.variables][::-1]
    assert [r.first for r in lazy.variables] == [r.first for r in mem.variables][::-1]
    assert sorted(p.message for p in lazy.problems) == sorted(p.message for p in mem.problems)
    w = next(r for r in lazy.variables if r.name == "w" and not r.shadowed)
    assert w.has_gradient and w.gradient_norm == 2.0
    assert lazy.next_id == 3


@given(
    shape=st.lists(st.integers(1, 7), min_size=1, max_size=4).map(tuple),
    budget=st.integers(1, 50),
    data=st.data(),
)
def test_block_index_is_a_bounded_contiguous_block_at_the_start(
    shape: tuple[int, ...], budget: int, data: st.DataObject
) -> None:
    numel = math.prod(shape)
    start = data.draw(st.integers(0, numel - 1))
    index = block_index(shape, start, budget)
    flat = np.arange(numel).reshape(shape)
    block = flat[index].reshape(-1)
    assert 1 <= block.size <= budget
    assert np.array_equal(block, np.arange(block[0], block[0] + block.size))  # contiguous
    assert block[0] <= start  # begins at the start, rounded down to a block row
