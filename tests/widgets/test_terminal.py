"""The terminal view on a real model: 320 tensors of a ResNet-50 at 80 and 120 columns."""

from __future__ import annotations

import io
import json
import os
import re
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import rich.console

import torchlean as tl
from torchlean.widgets import Summary, rich_renderable, summarize, to_html, to_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from views_helpers import resnet50_state_dict, sample_context

SNAPSHOTS = Path(__file__).resolve().parents[1] / "snapshots"


@cache
def resnet() -> Summary:
    return summarize(tl.RuntimeContext.from_state_dict(resnet50_state_dict()))


def _snapshot(name: str, got: str) -> None:
    path = SNAPSHOTS / name
    if os.environ.get("TORCHLEAN_UPDATE_SNAPSHOTS") == "1":
        path.write_text(got, encoding="utf-8")
    want = path.read_text(encoding="utf-8")
    assert got == want, f"{name} changed; rerun with TORCHLEAN_UPDATE_SNAPSHOTS=1 and review it"


def test_the_model_has_320_tensors() -> None:
    s = resnet()
    assert len(s.variables) == 320
    t = s.totals()
    assert t.tensors == 320 and t.parameters == 25_610_205  # 25,557,032 + buffers
    assert {g.name: g.tensors for g in t.by_dtype} == {"float32": 267, "int64": 53}
    assert t.nbytes == 4 * 25_610_152 + 8 * 53


@pytest.mark.parametrize("width", [80, 100, 120])
@pytest.mark.parametrize("depth", [None, 1, 2, 3])
def test_every_line_fits_and_every_name_is_whole_on_one_line(width: int, depth: int | None) -> None:
    text = to_text(resnet(), width=width, depth=depth)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width
    if depth is None:
        names = [r.name for r in resnet().variables]
        firsts = [line.split()[0] for line in lines if line[:1].isalpha()]
        for name in names:  # one line per tensor, starting with the whole name
            assert firsts.count(name) == 1, name
        assert len(lines) < 320 + 20
    else:
        groups = resnet().groups(depth)
        for g in groups:
            assert sum(1 for line in lines if line.split()[:1] == [g.name]) == 1


def test_piped_output_is_80_columns_one_line_per_row() -> None:
    buffer = io.StringIO()
    console = rich.console.Console(file=buffer, color_system=None)  # not a terminal
    assert console.width == 80 or "COLUMNS" in os.environ
    console.print(rich_renderable(resnet(), filter="layer4.2.*"))
    lines = buffer.getvalue().splitlines()
    assert max(len(line) for line in lines) <= console.width
    rows = [line for line in lines if line.startswith("layer4.2.")]
    assert len(rows) == 18  # 3 convolutions and 3 batch norms of 5 tensors each


def test_constant_columns_are_said_once_in_the_title() -> None:
    text = to_text(resnet(), width=120, filter="layer1.0.conv*")
    assert "Variables (3) · dtype float32 · device cpu · grad no" in text
    header = next(line for line in text.splitlines() if line.startswith("name"))
    assert header.split() == ["name", "shape", "elements", "bytes", "values"]


def test_a_narrow_view_drops_columns_not_names() -> None:
    wide = to_text(resnet(), width=120, filter="layer4.0.downsample.*")
    narrow = to_text(resnet(), width=60, filter="layer4.0.downsample.*")

    def header(text: str) -> list[str]:
        return next(line for line in text.splitlines() if line.startswith("name")).split()

    assert "values" in header(wide) and "values" not in header(narrow)
    for name in ("layer4.0.downsample.1.num_batches_tracked", "layer4.0.downsample.0.weight"):
        assert re.search(rf"^{re.escape(name)}\s", narrow, re.M)


def test_filter_is_a_glob_and_a_module_prefix() -> None:
    s = resnet()
    assert len(s.select("layer1.0.*").variables) == 24
    assert len(s.select("layer1.0").variables) == 24  # a module prefix
    assert len(s.select("*.num_batches_tracked").variables) == 53
    assert [r.name for r in s.select("fc.*").variables] == ["fc.bias", "fc.weight"]
    assert s.select("nothing*").variables == ()
    text = to_text(s, filter="*.conv2.weight")
    assert "filter *.conv2.weight: 16 of 320 variables, 0 of 0 gradients" in text
    assert "total: " in text and " in 16 tensors," in text


def test_grouping_counts_parameters_and_bytes_per_module_prefix() -> None:
    s = resnet()
    top = {g.name: g for g in s.groups(1)}
    assert list(top) == ["fc", "layer4", "layer3", "layer2", "layer1", "bn1", "conv1"]
    assert top["fc"].parameters == 2048 * 1000 + 1000 and top["fc"].nbytes == 4 * 2_049_000
    assert top["layer1"].tensors == 60 and top["layer3"].tensors == 114
    assert top["layer2"].dtypes == ("int64", "float32")
    assert sum(g.parameters for g in top.values()) == s.totals().parameters
    two = s.groups(2)
    assert len(two) == 16 + 2 + 5 + 1  # the 16 blocks; fc, bn1, conv1 have 2, 5, 1 tensors
    assert {g.name for g in two} >= {"layer3.5", "fc.weight", "conv1.weight"}
    assert [g.name for g in s.groups(0)] == [""] and s.groups(0)[0].tensors == 320
    text = to_text(s, depth=1)
    assert re.search(r"^layer3\s+114\s+7,118,867\s+27\.2 MiB\s+int64, float32$", text, re.M)


def test_totals_and_groups_are_in_the_json_summary() -> None:
    s = resnet()
    d = s.to_dict()
    assert d["totals"]["variables"] == {
        "tensors": 320,
        "parameters": 25_610_205,
        "nbytes": 4 * 25_610_152 + 8 * 53,
        "by_dtype": {
            "float32": {"tensors": 267, "parameters": 25_610_152, "nbytes": 4 * 25_610_152},
            "int64": {"tensors": 53, "parameters": 53, "nbytes": 8 * 53},
        },
    }
    assert d["totals"]["gradients"]["tensors"] == 0 and d["filter"] is None
    assert "groups" not in d and len(d["variables"]) == 320
    f = s.to_dict(filter="layer1", depth=2)
    assert f["filter"] == "layer1" and f["unfiltered"] == {"variables": 320, "gradients": 0}
    assert f["depth"] == 2 and [g["name"] for g in f["groups"]["variables"]] == [
        "layer1.2",
        "layer1.1",
        "layer1.0",
    ]
    assert f["totals"]["variables"]["tensors"] == 60 == len(f["variables"])
    json.dumps(f, allow_nan=False)


def test_totals_count_visible_entries_and_gradients() -> None:
    s = summarize(sample_context())
    t = s.totals()
    assert t.tensors == 5 and t.parameters == 500 + 4 + 1 + 40 + 3  # not the shadowed one
    g = s.totals("gradient")
    assert (g.tensors, g.parameters, g.nbytes) == (3, 43, 172)
    fc1 = {x.name: x for x in s.groups(1)}["fc1"]
    assert (fc1.tensors, fc1.with_gradient, fc1.problems) == (2, 2, 0)
    assert [x.problems for x in s.groups(1, "gradient")] == [1, 1]


def test_the_html_view_takes_the_filter() -> None:
    html = to_html(resnet(), filter="fc")
    assert html.count('<li class="tl-row"') == 2 and "vars=2" in html
    assert "filter <code>fc</code>: 2 of 320 variables" in html


@pytest.mark.parametrize("width", [80, 120])
def test_snapshot_of_the_sample_context(width: int) -> None:
    _snapshot(f"context_view_{width}.txt", to_text(sample_context(), width=width))


@pytest.mark.parametrize("width", [80, 120])
def test_snapshot_of_resnet_grouped(width: int) -> None:
    _snapshot(f"resnet50_depth2_{width}.txt", to_text(resnet(), width=width, depth=2))


@pytest.mark.parametrize("width", [80, 120])
def test_snapshot_of_resnet_filtered(width: int) -> None:
    text = to_text(resnet(), width=width, filter="layer4.0")
    _snapshot(f"resnet50_layer4.0_{width}.txt", text)


def test_rows_of_a_context_with_problems_are_marked_in_one_line() -> None:
    ctx = tl.empty_context().register_variable("a.b", np.array([np.nan, 1.0]))
    lines = to_text(ctx, width=80).splitlines()
    assert any(line.startswith("!  a.b ") and "NaN=1 inf=0" in line for line in lines)
