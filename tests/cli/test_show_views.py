"""``torchlean show``'s terminal view options, sharded checkpoints on the command line,
and optional libraries that are not installed (one line, never a traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy

from torchlean import io
from torchlean.cli import _files
from torchlean.io import sharded

# The helpers beside this file (pytest runs with --import-mode=importlib).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_helpers import MLP, run

SNAPSHOTS = Path(__file__).resolve().parents[1] / "snapshots"
SRC = Path(__file__).resolve().parents[2] / "src"


def _snapshot(name: str, got: str) -> None:
    path = SNAPSHOTS / name
    if os.environ.get("TORCHLEAN_UPDATE_SNAPSHOTS") == "1":
        path.write_text(got)
    want = path.read_text()
    assert got == want, f"{name} changed; rerun with TORCHLEAN_UPDATE_SNAPSHOTS=1 and review it"


def _gpt(path: Path) -> Path:
    """A small GPT-2-shaped checkpoint with GPT-2's long names, deterministic values."""
    rng = np.random.default_rng(0)
    d = 24
    tensors: dict[str, np.ndarray[Any, Any]] = {
        "transformer.wte.weight": rng.standard_normal((100, d)).astype(np.float32),
        "transformer.wpe.weight": rng.standard_normal((32, d)).astype(np.float32),
    }
    for i in range(2):
        h = f"transformer.h.{i}"
        tensors[f"{h}.ln_1.weight"] = np.ones(d, np.float32)
        tensors[f"{h}.attn.c_attn.weight"] = rng.standard_normal((d, 3 * d)).astype(np.float32)
        tensors[f"{h}.attn.c_attn.bias"] = np.zeros(3 * d, np.float32)
        tensors[f"{h}.attn.c_proj.weight"] = rng.standard_normal((d, d)).astype(np.float16)
        tensors[f"{h}.mlp.c_fc.weight"] = rng.standard_normal((d, 4 * d)).astype(np.float32)
    tensors["transformer.ln_f.weight"] = np.ones(d, np.float32)
    safetensors.numpy.save_file(tensors, str(path))
    return path


# ---------------------------------------------------------------------- the terminal view


@pytest.mark.parametrize("width", [80, 120])
def test_snapshot_of_show_at_80_and_120_columns(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, width: int
) -> None:
    path = _gpt(tmp_path / "gpt.safetensors")
    code, out, err = run(capsys, "show", path, "--width", str(width))
    assert code == 0 and err == ""
    assert max(len(line) for line in out.splitlines()) <= width
    _snapshot(f"show_gpt_{width}.txt", out)


def test_piped_and_narrow_rows_stay_one_line_with_whole_names(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    path = _gpt(tmp_path / "gpt.safetensors")
    names = list(io.inspect(path).variables)
    for width in ([], ["--width", "40"]):  # piped: rich's 80 columns; then very narrow
        code, out, _ = run(capsys, "show", path, *width)
        assert code == 0
        lines = out.splitlines()
        assert max(len(line) for line in lines) <= (40 if width else 80)
        for e in names:  # each entry is one line that holds its whole name
            holding = [line for line in lines if line.split()[:1] == [e.name]]
            assert len(holding) == 1, (e.name, out)


def test_filter_and_depth(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = _gpt(tmp_path / "gpt.safetensors")
    code, out, _ = run(capsys, "show", path, "--filter", "transformer.h.1", "--width", "120")
    assert code == 0
    assert "transformer.h.1.attn.c_attn.weight" in out
    assert "transformer.h.0." not in out and "transformer.wte" not in out
    code, out, _ = run(capsys, "show", path, "--depth", "3", "--width", "120")
    assert code == 0
    modules = [line.split()[0] for line in out.splitlines() if line.startswith("transformer.")]
    # first seen in the file's order (safetensors sorts by dtype, then name)
    assert modules == [
        "transformer.h.0",
        "transformer.h.1",
        "transformer.ln_f.weight",
        "transformer.wpe.weight",
        "transformer.wte.weight",
    ]
    code, out, err = run(capsys, "show", path, "--depth", "-1")
    assert code == 2 and "--depth: expected an integer >= 0, got '-1'" in err
    code, out, err = run(capsys, "show", path, "--width", "10")
    assert code == 2 and "--width: expected at least 20 columns, got '10'" in err


def test_json_carries_totals_groups_and_the_filter(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = _gpt(tmp_path / "gpt.safetensors")
    fs = io.inspect(path)
    code, out, _ = run(capsys, "show", path, "--json", "--depth", "2")
    assert code == 0
    d = json.loads(out)
    totals = d["totals"]["variables"]
    assert totals["tensors"] == len(fs.variables)
    assert totals["parameters"] == sum(e.numel for e in fs.variables)
    assert totals["nbytes"] == fs.nbytes
    assert set(totals["by_dtype"]) == {"float32", "float16"}
    assert [g["name"] for g in d["groups"]["variables"]] == [
        "transformer.h",
        "transformer.ln_f",
        "transformer.wpe",
        "transformer.wte",
    ]
    code, out, _ = run(capsys, "show", path, "--json", "--filter", "*.c_attn.*")
    d = json.loads(out)
    assert d["filter"] == "*.c_attn.*" and len(d["variables"]) == 4
    assert d["totals"]["variables"]["tensors"] == 4


def test_the_preview_of_a_wide_matrix_reads_only_its_corner(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wide = np.arange(300 * 4000, dtype=np.float32).reshape(300, 4000)
    path = tmp_path / "wide.safetensors"
    safetensors.numpy.save_file({"wide": wide}, str(path))
    reads: list[tuple[slice, ...]] = []
    block = _files._FileSource.block

    def spy(self: Any, index: tuple[slice, ...]) -> Any:
        reads.append(index)
        got = block(self, index)
        assert np.array_equal(got, wide[index])
        return got

    def no_head(self: Any, n: int) -> Any:
        raise AssertionError("the preview reads blocks, not the first elements")

    monkeypatch.setattr(_files._FileSource, "block", spy)
    monkeypatch.setattr(_files._FileSource, "head", no_head)
    code, out, _ = run(capsys, "show", path, "--json")
    assert code == 0
    assert reads and all(i[0].stop <= 10 and i[1].stop <= 12 for i in reads)
    assert (slice(0, 10), slice(0, 12)) in reads  # the 10x12 corner of the grid
    row = json.loads(out)["variables"][0]
    assert row["first"] == [0, 1, 2, 3, 4, 5]


def test_the_help_examples_name_real_formats(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "show", "--help")
    assert code == 0 and "--format json" in out and "--filter" in out and "--depth" in out
    code, out, _ = run(capsys, "show", MLP, "--format", "json", "--width", "100")
    assert code == 0 and "layers.0.weight" in out


# ---------------------------------------------------------------------- sharded checkpoints


def test_show_check_diff_and_convert_of_a_sharded_checkpoint(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    single = _gpt(tmp_path / "gpt.safetensors")
    folder = tmp_path / "gpt"
    code, out, err = run(capsys, "convert", single, folder, "--max-shard-size", "8KB")
    assert (code, err) == (0, "")
    assert out == f"wrote {folder}: 13 variables, checked\n"
    index = folder / "model.safetensors.index.json"
    shards = sorted(folder.glob("*.safetensors"))
    weight_map = json.loads(index.read_text())["weight_map"]
    assert len(shards) == len(set(weight_map.values())) > 2 and len(weight_map) == 13

    # show and check read the headers only
    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("show must not load a shard whole")

    with monkeypatch.context() as m:
        m.setattr(io, "load", no_load)
        m.setattr(sharded, "load_safetensors", no_load)
        for target in (index, folder):
            code, out, _ = run(capsys, "show", target, "--width", "120")
            assert code == 0 and "transformer.h.1.mlp.c_fc.weight" in out
            assert out.startswith(f"{target.name} (sharded, ")
            code, out, _ = run(capsys, "check", target, "--expect", single)
            assert code == 0 and "all 13 entries agree" in out

    code, out, _ = run(capsys, "diff", single, index)
    assert code == 0 and out.endswith("0 changed, 13 unchanged\n")
    back = tmp_path / "back.safetensors"
    code, out, _ = run(capsys, "convert", folder, back)
    assert code == 0
    a = safetensors.numpy.load_file(str(single))
    b = safetensors.numpy.load_file(str(back))
    assert a.keys() == b.keys()
    assert all(a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes() for k in a)

    code, out, _ = run(capsys, "convert", MLP, tmp_path / "m.safetensors.index.json")
    assert code == 0 and (tmp_path / "m-00001-of-00001.safetensors").exists()


@pytest.mark.parametrize(
    ("out", "size", "message"),
    [
        (
            "x.npz",
            "1KB",
            "--max-shard-size writes sharded safetensors (a folder or a"
            " *.safetensors.index.json), not npz",
        ),
        (
            "x",
            "lots",
            "--max-shard-size: max_shard_size must be a number of bytes with an"
            " optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), such as '5GB', got 'lots'",
        ),
    ],
)
def test_convert_max_shard_size_mistakes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, out: str, size: str, message: str
) -> None:
    code, stdout, err = run(capsys, "convert", MLP, tmp_path / out, "--max-shard-size", size)
    assert code == 2 and stdout == ""
    assert err == f"torchlean convert: error: {message}\n"
    assert not (tmp_path / out).exists()


def test_a_failed_read_back_leaves_no_shard(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchlean.cli import _commands

    def differ(*args: object, **kwargs: object) -> list[str]:
        raise _commands.ConversionError("the read-back differs")

    monkeypatch.setattr(_commands, "_compare_roundtrip", differ)
    monkeypatch.setattr(_commands, "_compare_written", differ)
    code, _, err = run(capsys, "convert", MLP, tmp_path / "out", "--max-shard-size", "1KB")
    assert code == 2 and "the read-back differs" in err
    assert os.listdir(tmp_path / "out") == []


def test_a_shard_path_traversal_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"w": "../../etc/passwd"}}))
    code, out, err = run(capsys, "show", index)
    assert code == 2 and out == ""
    assert err == (
        f"torchlean show: error: {index}: refused shard name '../../etc/passwd' (for `w`):"
        " a shard must be a file name in the index's folder, not a path\n"
    )


# ---------------------------------------------------------------------- missing libraries


def _without(module: str, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``torchlean ARGV`` in a fresh interpreter where ``module`` cannot be imported."""
    code = (
        "import sys, warnings\n"
        "warnings.simplefilter('ignore')\n"
        f"sys.modules[{module!r}] = None  # import {module} raises ImportError\n"
        "from torchlean.cli import main\n"
        f"sys.exit(main({list(argv)!r}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "COLUMNS": "80"}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def test_the_demo_without_matplotlib_trains_writes_and_says_what_to_install(
    tmp_path: Path,
) -> None:
    done = _without(
        "matplotlib", "demo", "--steps", "3", "--out", "out", "--no-progress", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert (
        "loss curve and decision boundary (PNG):     not drawn: matplotlib is not installed"
        " (pip install 'torchlean[all]')\n"
    ) in done.stdout
    assert sorted(os.listdir(tmp_path / "out")) == ["checkpoint.safetensors", "weights.json"]
    weights = io.load(tmp_path / "out" / "weights.json")
    assert [n for n, _ in weights.latest_variables()] == [
        "fc1.weight",
        "fc1.bias",
        "fc2.weight",
        "fc2.bias",
        "fc3.weight",
        "fc3.bias",
    ]


def test_a_missing_torch_is_one_line_naming_what_to_install(tmp_path: Path) -> None:
    import torch

    # a legacy (non-zip) file needs torch; a zip one is shown without it (tests/io)
    torch.save({"w": torch.ones(2)}, tmp_path / "w.pt", _use_new_zipfile_serialization=False)
    done = _without("torch", "show", "w.pt", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    assert (
        done.stderr
        == "torchlean show: error: torch is not installed: pip install 'torchlean[torch]'\n"
    )
    done = _without("torch", "demo", "--steps", "1", "--out", "out", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == (
        "torchlean demo: error: torch is not installed (needed for the demo's torch"
        " backend): pip install 'torchlean[torch]'\n"
    )
