"""``torchlean check --lean`` and ``convert model.pt model.json`` as TorchLean's adapter."""

from __future__ import annotations

import json
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

import torchlean.io as tio
from torchlean.errors import FormatError
from torchlean.io.lean_json import lean_view
from torchlean.io.torchlean_json import read_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_helpers import CNN, MLP, TRANSFORMER, run


@pytest.mark.parametrize("path", [MLP, CNN, TRANSFORMER])
def test_check_lean_lists_what_lean_sees(capsys: pytest.CaptureFixture[str], path: Path) -> None:
    code, out, _ = run(capsys, "check", path, "--lean")
    assert code == 0
    view = lean_view(path)
    assert out.splitlines() == view.format()
    for name, t in view.tensors.items():
        assert any(line.split()[:1] == [name] and str(t.shape) in line for line in out.splitlines())


def test_check_lean_names_each_problem_and_exits_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "w.json"
    path.write_text('{"params": {"w": [[1, 2], [3]], "b": [1.0]}, "b": [2], "name": "x"}')
    code, out, _ = run(capsys, "check", path, "--lean")
    assert code == 1
    assert "  b  (1,)" in out
    assert "not tensors (Lean's lookups skip them): name (string)" in out
    assert "b: the top-level field replaces params' `b` (array) with an array" in out
    assert "w[1]: no tensor shape reads it: ragged" in out


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b'\xef\xbb\xbf{"w": [1]}', "a UTF-8 byte-order mark: Lean does not skip it"),
        (b'{"w": [NaN]}', "NaN and Infinity are not JSON numbers for Lean"),
        (b'{"w": [1, 2,]}', "Lean.Json.parse fails"),
        (b'{"w": [1, "2"]}', "w[1]: no tensor shape reads it: expected a number, got a string"),
    ],
)
def test_check_lean_refuses_what_lean_refuses(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, data: bytes, problem: str
) -> None:
    path = tmp_path / "w.json"
    path.write_bytes(data)
    code, out, _ = run(capsys, "check", path, "--lean")
    assert code == 1
    assert problem in out


def test_check_lean_of_a_missing_file_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(capsys, "check", tmp_path / "nope.json", "--lean")
    assert code == 2
    assert "no such file" in err.lower()


# ---------------------------------------------------------------- .pt -> JSON


def checkpoints(tmp_path: Path) -> dict[str, Path]:
    sd = OrderedDict(
        [("module.fc.weight", torch.ones(2, 3)), ("module.fc.bias", torch.zeros(2)), ("step", 5)]
    )
    made = {
        "bare": sd,
        "state_dict": {"state_dict": sd, "epoch": 3},
        "model_state_dict": {"model_state_dict": sd, "optimizer": {"lr": 0.1}},
    }
    out = {}
    for name, obj in made.items():
        out[name] = tmp_path / f"{name}.pt"
        torch.save(obj, out[name])
    return out


@pytest.mark.parametrize("layout", ["bare", "state_dict", "model_state_dict"])
def test_convert_pt_to_json_as_torchlean_adapter(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, layout: str
) -> None:
    src = checkpoints(tmp_path)[layout]
    dst = tmp_path / f"{layout}.json"
    code, out, err = run(capsys, "convert", src, dst)
    assert code == 0, err
    assert "wrote" in out and "2 variables, checked" in out
    assert "left out: `step` (int, not a tensor)" in err
    if layout != "bare":
        assert "(beside `" in err
    doc = json.loads(dst.read_text())
    assert list(doc["params"]) == ["fc.weight", "fc.bias"]
    assert doc["meta"]["fc.weight"] == {"shape": [2, 3], "dtype": "torch.float32"}
    assert set(lean_view(dst).tensors) == {"fc.weight", "fc.bias"}


def test_read_checkpoint_keeps_module_when_asked(tmp_path: Path) -> None:
    ctx, left_out = read_checkpoint(checkpoints(tmp_path)["bare"], strip_module=False)
    assert [n for n, _ in ctx.latest_variables()] == ["module.fc.weight", "module.fc.bias"]
    assert left_out == ("`step` (int, not a tensor)",)


def test_read_checkpoint_says_which_key_a_stripped_name_replaced(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    torch.save({"module.a": torch.zeros(1), "a": torch.ones(1)}, path)
    ctx, left_out = read_checkpoint(path)
    assert np.asarray(ctx["a"]).tolist() == [1.0]
    assert left_out == ("`module.a` (replaced by `a`, also named `a`)",)


def test_read_checkpoint_refuses_what_the_adapter_refuses(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    torch.save([torch.ones(1)], path)
    with pytest.raises(FormatError, match="expected a state_dict or a checkpoint holding one"):
        read_checkpoint(path)


def test_plain_load_of_the_converted_file(tmp_path: Path) -> None:
    src = checkpoints(tmp_path)["bare"]
    ctx, _ = read_checkpoint(src)
    tio.save(ctx, tmp_path / "x.json")
    assert tio.load(tmp_path / "x.json")["fc.weight"].shape == (2, 3)
