"""The ``torchlean`` command, called through ``main(argv)``, on the TorchLean fixtures
and on files the tests write."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

# The helpers beside this file (pytest runs with --import-mode=importlib).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_helpers import CNN, MLP, TRANSFORMER, run

MLP_SHAPES = {
    "layers.0.weight": [3, 2],
    "layers.0.bias": [3],
    "layers.2.weight": [1, 3],
    "layers.2.bias": [1],
}


def _write_st(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    safetensors.numpy.save_file(tensors, str(path))
    return path


# ---------------------------------------------------------------------- help


def test_help_lists_every_subcommand_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for word in ("show", "convert", "check", "diff", "demo", "examples:"):
        assert word in out


@pytest.mark.parametrize("command", ["show", "convert", "check", "diff"])
def test_every_subcommand_has_help_with_examples(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    assert "examples:" in out and f"torchlean {command} " in out


def test_usage_error_is_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "show")
    assert code == 2 and "PATH" in err
    code, _, err = run(capsys, "frobnicate")
    assert code == 2 and "invalid choice" in err


def test_python_dash_m_torchlean(tmp_path: Path) -> None:
    src = Path(__file__).resolve().parents[2] / "src"
    done = subprocess.run(
        [sys.executable, "-m", "torchlean", "show", "--help"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "torchlean show" in done.stdout


def test_importing_the_cli_imports_no_torch_jax_or_ipython() -> None:
    src = Path(__file__).resolve().parents[2] / "src"
    code = (
        "import sys, torchlean.cli, torchlean.widgets;"
        "bad = [m for m in ('torch', 'jax', 'IPython') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# ---------------------------------------------------------------------- show


@pytest.mark.parametrize("fixture", [MLP, CNN, TRANSFORMER])
def test_show_fixture(capsys: pytest.CaptureFixture[str], fixture: Path) -> None:
    code, out, err = run(capsys, "show", fixture, "--width", "140")
    assert (code, err) == (0, "")
    assert fixture.name in out and "Variables (" in out and "no problems found" in out
    names = list(json.loads(fixture.read_text())["params"])
    for name in names:
        assert name in out


def test_show_json_of_the_mlp_fixture(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "show", MLP, "--json")
    assert code == 0
    d = json.loads(out)
    shapes = {v["name"]: v["shape"] for v in d["variables"]}
    assert shapes == MLP_SHAPES
    assert {v["dtype"] for v in d["variables"]} == {"float32"}
    assert [v["numel"] for v in d["variables"] if v["name"] == "layers.0.weight"] == [6]
    assert d["problems"] == [] and d["sampled"] is False
    bias = next(v for v in d["variables"] if v["name"] == "layers.2.bias")
    assert bias["first"] == [0.9832]


def test_show_json_reports_problems_and_sampling(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    big = np.arange(3 << 20, dtype=np.float32)
    bad = np.array([1.0, np.nan], dtype=np.float32)
    path = _write_st(tmp_path / "m.safetensors", {"big": big, "bad": bad})
    code, out, _ = run(capsys, "show", path, "--json")
    assert code == 0
    d = json.loads(out)
    rows = {v["name"]: v for v in d["variables"]}
    assert rows["big"]["stats"]["sampled"] is True and rows["big"]["numel"] == 3 << 20
    assert rows["bad"]["stats"]["nan"] == 1
    assert d["sampled"] is True
    assert [p["kind"] for p in d["problems"]] == ["non-finite"]
    assert "`bad`" in d["problems"][0]["message"]


def test_show_writes_the_notebook_view(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_html = tmp_path / "mlp.html"
    code, out, _ = run(capsys, "show", MLP, "--html", out_html)
    assert code == 0 and str(out_html) in out
    page = out_html.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert 'data-section="variables"' in page and 'data-section="gradients"' in page
    assert 'data-name="layers.0.weight"' in page and "(3, 2)" in page


def test_show_safetensors_written_by_the_test(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = _write_st(
        tmp_path / "w.safetensors",
        {"fc.weight": np.ones((4, 3), np.float32), "step": np.array([3], np.int64)},
    )
    code, out, _ = run(capsys, "show", path, "--width", "140")
    assert code == 0
    assert "fc.weight" in out and "(4, 3)" in out and "int64" in out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["show", "{tmp}/missing.safetensors"], "missing.safetensors: no such file"),
        # a folder reads as safetensors shards: here its one shard is garbage
        (["show", "{tmp}"], "garbage.safetensors: not a valid safetensors file"),
        (["show", "{tmp}/garbage.safetensors"], "garbage.safetensors"),
        (["show", "{mlp}", "--format", "nope"], "nope"),
        (["check", "{tmp}/missing.json", "--expect", "{mlp}"], "no such file"),
        (["diff", "{mlp}", "{tmp}/missing.json"], "no such file"),
        (["convert", "{tmp}/missing.json", "{tmp}/out.safetensors"], "no such file"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_code_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], needle: str
) -> None:
    (tmp_path / "garbage.safetensors").write_bytes(b"\xff" * 64)
    args = [a.format(tmp=tmp_path, mlp=MLP) for a in argv]
    code, out, err = run(capsys, *args)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"torchlean {argv[0]}: error: ")
    assert needle.lower() in err.lower()
    assert "Traceback" not in err and out == ""


# ---------------------------------------------------------------------- convert


def test_convert_json_to_safetensors_and_back(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    st = tmp_path / "mlp.safetensors"
    code, out, _ = run(capsys, "convert", MLP, st)
    assert code == 0 and "checked" in out and "4 variables" in out
    tensors = safetensors.numpy.load_file(str(st))
    assert {k: list(v.shape) for k, v in tensors.items()} == MLP_SHAPES
    params = json.loads(MLP.read_text())["params"]
    np.testing.assert_array_equal(
        tensors["layers.0.weight"], np.array(params["layers.0.weight"], dtype=np.float32)
    )
    assert [p.name for p in tmp_path.iterdir()] == ["mlp.safetensors"]  # no leftovers
    code, out, _ = run(capsys, "check", st, "--expect", MLP)
    assert code == 0 and "all 4 entries agree" in out


@pytest.mark.parametrize("where", ["data", "header"])
def test_convert_catches_a_corrupted_write(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """The written file is checked (its header, then its bytes streamed against the
    arrays written): a writer that changes one byte leaves no OUT behind."""
    import safetensors as st

    serialize = st.serialize_file

    def corrupting(specs: object, path: object, **kwargs: object) -> None:
        serialize(specs, path, **kwargs)  # type: ignore[arg-type]
        data = bytearray(Path(str(path)).read_bytes())
        if where == "data":
            data[-1] ^= 0x01  # the last byte of the last tensor
        else:
            n = int.from_bytes(data[:8], "little")
            header = data[8 : 8 + n].replace(b'"shape":[3,2]', b'"shape":[2,3]')
            assert header != data[8 : 8 + n]
            data[8 : 8 + n] = header
        Path(str(path)).write_bytes(bytes(data))

    monkeypatch.setattr(st, "serialize_file", corrupting)
    out = tmp_path / "mlp.safetensors"
    code, stdout, err = run(capsys, "convert", MLP, out)
    assert code == 2 and stdout == ""
    if where == "data":
        assert err == (
            f"torchlean convert: error: the conversion to {out} does not hold the same data,"
            " nothing written: variable `layers.2.weight` came back with different values\n"
        )
    else:
        assert err == (
            f"torchlean convert: error: the conversion to {out} does not hold the same data,"
            " nothing written: variable `layers.0.weight` came back with shape (2, 3),"
            " not (3, 2)\n"
        )
    assert list(tmp_path.iterdir()) == []


def test_convert_refuses_to_overwrite_without_force(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    st = tmp_path / "mlp.safetensors"
    st.write_bytes(b"keep")
    code, _, err = run(capsys, "convert", MLP, st)
    assert code == 2 and "--force" in err
    assert st.read_bytes() == b"keep"
    code, _, _ = run(capsys, "convert", MLP, st, "--force")
    assert code == 0 and st.read_bytes() != b"keep"


def test_convert_progress_bar(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "convert", CNN, tmp_path / "cnn.safetensors", "--progress", "always")
    assert code == 0 and "done" in err and "100%" in err
    code, _, err = run(capsys, "convert", CNN, tmp_path / "b.safetensors", "--progress", "never")
    assert code == 0 and err == ""


# ---------------------------------------------------------------------- check


def test_check_against_a_json_object_of_shapes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    shapes = tmp_path / "shapes.json"
    shapes.write_text(json.dumps(MLP_SHAPES))
    code, out, _ = run(capsys, "check", MLP, "--expect-json", shapes)
    assert code == 0 and "all 4 entries agree" in out
    wrong = dict(MLP_SHAPES, **{"layers.0.weight": [2, 3], "layers.4.weight": [1]})
    del wrong["layers.2.bias"]
    shapes.write_text(json.dumps(wrong))
    code, out, _ = run(capsys, "check", MLP, "--expect-json", shapes)
    assert code == 1
    lines = out.splitlines()
    assert "missing:    `layers.4.weight` (expected shape (1,))" in lines
    assert "unexpected: `layers.2.bias` with shape (1,)" in lines
    assert "mismatched: `layers.0.weight` has shape (3, 2) but (2, 3) is expected" in lines
    assert "3 problems" in lines[-1] and "1 missing, 1 unexpected, 1 mismatched" in lines[-1]


def test_check_accepts_per_tensor_meta_objects(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    shapes = tmp_path / "meta.json"
    shapes.write_text(
        json.dumps({k: {"shape": v, "dtype": "torch.float32"} for k, v in MLP_SHAPES.items()})
    )
    code, _, _ = run(capsys, "check", MLP, "--expect-json", shapes)
    assert code == 0


def test_check_against_another_checkpoint(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    other = _write_st(
        tmp_path / "other.safetensors",
        {"layers.0.weight": np.zeros((3, 2), np.float32), "extra": np.zeros(1, np.float32)},
    )
    code, out, _ = run(capsys, "check", MLP, "--expect", other)
    assert code == 1
    assert "unexpected: `layers.0.bias` with shape (3,)" in out
    assert "missing:    `extra` (expected shape (1,))" in out


@pytest.mark.parametrize(
    ("text", "needle"),
    [("[1, 2]", "a JSON object"), ('{"w": [3, -1]}', "`w`"), ("{", "not JSON")],
)
def test_check_rejects_a_bad_expect_json(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, needle: str
) -> None:
    shapes = tmp_path / "bad.json"
    shapes.write_text(text)
    code, _, err = run(capsys, "check", MLP, "--expect-json", shapes)
    assert code == 2 and needle in err and err.count("\n") == 1


# ---------------------------------------------------------------------- diff


def _pair(tmp_path: Path) -> tuple[Path, Path]:
    a = _write_st(
        tmp_path / "a.safetensors",
        {
            "same": np.arange(4, dtype=np.float32),
            "moved": np.array([1.0, -2.0, 4.0], np.float32),
            "gone": np.zeros(2, np.float32),
            "grown": np.zeros((2, 2), np.float32),
        },
    )
    b = _write_st(
        tmp_path / "b.safetensors",
        {
            "same": np.arange(4, dtype=np.float32),
            "moved": np.array([1.0, -1.0, 4.5], np.float32),
            "new": np.ones(3, np.float32),
            "grown": np.zeros((2, 3), np.float32),
        },
    )
    return a, b


def test_diff_lists_added_removed_reshaped_changed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    a, b = _pair(tmp_path)
    code, out, _ = run(capsys, "diff", a, b)
    assert code == 0
    lines = out.splitlines()
    assert "added:     `new` (3,)" in lines
    assert "removed:   `gone` (2,)" in lines
    assert "reshaped:  `grown` (2, 2) -> (2, 3)" in lines
    assert "changed:   `moved` (3,): 2 of 3 values, max abs 1, max rel 0.5" in lines
    assert lines[-1] == "1 added, 1 removed, 1 reshaped, 1 changed, 1 unchanged"


def test_diff_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    code, out, _ = run(capsys, "diff", a, b, "--json")
    assert code == 0
    d = json.loads(out)
    assert d["added"] == [["new", [3]]] and d["removed"] == [["gone", [2]]]
    assert d["reshaped"] == [["grown", [2, 2], [2, 3]]] and d["unchanged"] == ["same"]
    (c,) = d["changed"]
    assert (c["name"], c["changed"], c["max_abs"], c["max_rel"]) == ("moved", 2, 1.0, 0.5)


def test_diff_of_a_file_with_itself_finds_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "diff", CNN, CNN)
    assert (
        code == 0
        and out.splitlines()[-1] == "0 added, 0 removed, 0 reshaped, 0 changed, 6 unchanged"
    )


def test_diff_nan_against_nan_is_unchanged_and_nan_against_a_number_is_a_change(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    a = _write_st(tmp_path / "a.safetensors", {"x": np.array([np.nan, 1.0], np.float64)})
    b = _write_st(tmp_path / "b.safetensors", {"x": np.array([np.nan, np.nan], np.float64)})
    _, out, _ = run(capsys, "diff", a, a)
    assert "1 unchanged" in out
    _, out, _ = run(capsys, "diff", a, b, "--json")
    (c,) = json.loads(out)["changed"]
    assert (c["changed"], c["max_abs"]) == (1, "nan")


# ---------------------------------------------------------------------- demo


def test_demo_dispatches_the_rest_of_the_command_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[str]] = []

    def cli_main(argv: list[str]) -> int:
        seen.append(argv)
        print("demo ran")
        return 3

    fake = types.ModuleType("torchlean.demo")
    fake.cli_main = cli_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchlean.demo", fake)
    code, out, _ = run(capsys, "demo", "--steps", "2", "--help")
    assert (code, out, seen) == (3, "demo ran\n", [["--steps", "2", "--help"]])


def test_a_closed_pipe_is_exit_code_1_without_an_error_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchlean.cli import _commands

    def broken(args: object) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(_commands, "show", broken)
    code, _, err = run(capsys, "show", MLP)
    assert (code, err) == (1, "")


def test_a_closed_pipe_in_a_real_pipeline(tmp_path: Path) -> None:
    src = Path(__file__).resolve().parents[2] / "src"
    many = _write_st(
        tmp_path / "many.safetensors", {f"t{i}": np.ones(2, np.float32) for i in range(600)}
    )
    done = subprocess.run(  # the JSON (> 64 KiB) overflows the pipe after head leaves
        f"{sys.executable} -m torchlean show {many} --json | head -c 10 >/dev/null",
        shell=True,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.stderr == ""


def test_show_text_snapshot_of_the_mlp_fixture(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    for var in ("FORCE_COLOR", "COLUMNS", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(var, raising=False)
    code, out, _ = run(capsys, "show", MLP, "--width", "120")
    assert code == 0
    out = "\n".join(line.rstrip() for line in out.splitlines()) + "\n"
    snapshot = Path(__file__).resolve().parents[1] / "snapshots" / "show_mlp.txt"
    if os.environ.get("TORCHLEAN_UPDATE_SNAPSHOTS") == "1":
        snapshot.write_text(out, encoding="utf-8")
    assert out == snapshot.read_text(encoding="utf-8")
