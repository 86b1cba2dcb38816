"""Pinned texts of the views and of the ``torchlean`` command's errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import torchlean as tl
from torchlean.cli import _commands, main
from torchlean.widgets import summarize_sources
from torchlean.widgets._sources import source_of


def _err(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "nope.safetensors"
    assert _err(capsys, "show", str(path)) == (
        2,
        f"torchlean show: error: {path}: no such file or directory\n",
    )


def test_convert_will_not_overwrite(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    src, dst = tmp_path / "a.json", tmp_path / "b.safetensors"
    src.write_text('{"w": [1.0]}')
    dst.write_bytes(b"")
    assert _err(capsys, "convert", str(src), str(dst)) == (
        2,
        f"torchlean convert: error: {dst} exists already; pass --force to replace it\n",
    )
    assert _err(capsys, "convert", str(src), str(src), "--force") == (
        2,
        f"torchlean convert: error: IN and OUT are the same file: {src}\n",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "{path}: not JSON (Expecting property name enclosed in double quotes at line 1)"),
        ("[1]", "{path}: expected a JSON object of names to shapes, got a list"),
        (
            '{"w": [3, -1]}',
            "{path}: the shape of `w` must be a list of non-negative integers, got [3, -1]",
        ),
        (
            '{"w": "3x4"}',
            '{path}: the shape of `w` must be a list of non-negative integers, got "3x4"',
        ),
    ],
)
def test_expect_json_messages(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "shapes.json"
    path.write_text(text)
    with pytest.raises(tl.FormatError) as info:
        _commands.read_expect_json(path)
    assert str(info.value) == message.format(path=path)


def test_demo_missing(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchlean.demo", None)
    assert _err(capsys, "demo") == (
        2,
        "torchlean demo: error: the demo is not part of this installation"
        " (torchlean.demo is missing)\n",
    )


def test_conversion_that_changes_data() -> None:
    a = tl.RuntimeContext.from_state_dict(
        {"w": np.array([1.0, 2.0], np.float32), "b": np.zeros(3, np.float32)}
    )
    b = tl.RuntimeContext.from_state_dict({"w": np.array([1.0, 2.5], np.float32)})
    with pytest.raises(_commands.ConversionError) as info:
        _commands._compare_roundtrip(a, b, Path("out.safetensors"))
    assert str(info.value) == (
        "the conversion to out.safetensors does not hold the same data, nothing written:"
        " variables lost: `b`; variable `w` came back with different values"
    )


def test_widened_dtype_is_a_note() -> None:
    a = tl.RuntimeContext.from_state_dict({"w": np.array([1.5], np.float32)})
    b = tl.RuntimeContext.from_state_dict({"w": np.array([1.5], np.float64)})
    notes = _commands._compare_roundtrip(a, b, Path("out.json"))
    assert notes == ["note: variable `w` is stored as float64 (was float32)"]


def test_sampled_non_finite_problem() -> None:
    values = np.zeros(100, np.float32)
    values[::10] = np.nan
    ctx = tl.empty_context().register_variable("x", values)
    (name, at) = ctx.var_registry[0]
    s = summarize_sources("t", [(name, source_of(at))], sample_limit=50)
    assert [p.message for p in s.problems] == ["variable `x` has 10 NaN values in a sample of 50"]
    s = summarize_sources("t", [(name, source_of(at))])
    assert [p.message for p in s.problems] == ["variable `x` has 10 NaN values"]


def test_structural_problems_of_sources() -> None:
    ctx = (
        tl.empty_context()
        .register_variable("w", np.zeros((2, 2), np.float32))
        .register_gradient("w", np.zeros((2,), np.float64))
        .register_gradient("q", np.zeros((1,), np.float32))
    )
    v = [(n, source_of(at)) for n, at in ctx.var_registry]
    g = [(n, source_of(at)) for n, at in ctx.gradients]
    s = summarize_sources("t", v, g)
    assert [p.message for p in s.problems] == [
        "gradient `q` has no variable of that name",
        "gradient `w` has shape (2,) but its variable has shape (2, 2)",
        "gradient `w` has dtype float64 but its variable has dtype float32",
    ]


def test_text_view_footer_lines() -> None:
    from torchlean.widgets import to_text

    ctx = tl.empty_context().register_variable("x", np.arange(10.0))
    assert to_text(ctx).splitlines()[-1] == "no problems found"
    bad = ctx.register_gradient("y", np.zeros(1))
    assert to_text(bad).splitlines()[-2:] == [
        "! 1 problem:",
        "  - gradient `y` has no variable of that name",
    ]
