"""The ``torchlean`` command under fire (issue 10) and on files from the wild (issue 13):
outputs that are devices or pipes, inputs that never end, names that carry terminal
escapes, integers float64 cannot tell apart, files bigger than memory, amplified
layouts, metadata, nested checkpoints, Git LFS pointers."""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import torchlean.io as tio
from torchlean import empty_context
from torchlean.errors import FormatError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_helpers import run

SRC = Path(__file__).resolve().parents[2] / "src"


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }


def _cli(
    *argv: str | os.PathLike[str], memory: int | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m torchlean ARGV`` in a subprocess, under ``RLIMIT_AS`` of ``memory``
    bytes when given (set by the child itself: no fork of this process), killed after
    ``timeout`` seconds."""
    code = (
        "import resource, runpy, sys\n"
        f"limit = {memory!r}\n"
        "if limit is not None:\n"
        "    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))\n"
        "sys.argv = ['torchlean', *sys.argv[1:]]\n"
        "runpy.run_module('torchlean', run_name='__main__')\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, argv)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _save(path: Path, **tensors: Any) -> Path:
    ctx = empty_context()
    for name, value in tensors.items():
        ctx = ctx.register_variable(name, value)
    tio.save(ctx, path)
    return path


# ----------------------------------------------------------------------------- 3


def test_show_html_to_dash_writes_stdout(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = _save(tmp_path / "m.safetensors", w=np.ones(3, np.float32))
    code, out, _ = run(capsys, "show", path, "--html", "-")
    assert code == 0
    assert out.lstrip().startswith("<!DOCTYPE html>") and "wrote" not in out


def test_show_html_to_dev_stdout_writes_through_it(tmp_path: Path) -> None:
    path = _save(tmp_path / "m.safetensors", w=np.ones(3, np.float32))
    done = _cli("show", path, "--html", "/dev/stdout")
    assert done.returncode == 0, done.stderr
    assert "<!DOCTYPE html>" in done.stdout
    assert os.path.islink("/dev/stdout") or stat.S_ISCHR(os.stat("/dev/stdout").st_mode)


def test_convert_force_onto_a_fifo_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    src = _save(tmp_path / "m.safetensors", w=np.ones(3, np.float32))
    fifo = tmp_path / "out.npz"
    os.mkfifo(fifo)
    code, _, err = run(capsys, "convert", src, fifo, "--force")
    assert code == 2
    assert err == (
        f"torchlean convert: error: {fifo}: is a FIFO, not a regular file; a save writes a"
        " new regular file and would replace it, so nothing was written\n"
    )
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


# ----------------------------------------------------------------------------- 5


def test_show_of_a_float8_pt_prints_no_traceback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "fp8.pt"
    torch.save({"w": torch.tensor([0.5, 1.0]).to(torch.float8_e4m3fn)}, path)
    code, out, err = run(capsys, "show", path)
    assert code == 0 and err == ""
    assert "float8_e4m3fn" in out


def _sparse_safetensors(path: Path, numel: int) -> Path:
    """A valid safetensors file of one float32 tensor of ``numel`` zeros, written
    sparsely (no disk blocks for the zeros)."""
    header = json.dumps(
        {"w": {"dtype": "F32", "shape": [numel], "data_offsets": [0, 4 * numel]}}
    ).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        f.truncate(8 + len(header) + 4 * numel)
    return path


@pytest.mark.parametrize("command", ["diff", "convert"])
def test_a_file_bigger_than_memory_is_one_line(tmp_path: Path, command: str) -> None:
    big = _sparse_safetensors(tmp_path / "big.safetensors", 3 << 28)  # 3 GiB of zeros
    other = tmp_path / ("other.safetensors" if command == "diff" else "out.npz")
    if command == "diff":
        _save(other, w=np.zeros(2, np.float32))
    done = _cli(command, big, other, memory=6 << 30 >> 1)  # 3 GiB of address space
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr == (
        f"torchlean {command}: error: {big}: not enough memory to read it (3.0 GiB on disk);"
        " `torchlean show` and `torchlean check` read a safetensors file without loading it\n"
    )


# ----------------------------------------------------------------------------- 9


def test_check_expect_json_refuses_a_device(tmp_path: Path) -> None:
    path = _save(tmp_path / "m.safetensors", w=np.ones(3, np.float32))
    done = _cli("check", path, "--expect-json", "/dev/zero", memory=2 << 30, timeout=60)
    assert done.returncode == 2
    assert done.stderr == "torchlean check: error: /dev/zero: is a device, not a regular file\n"


def test_check_expect_json_refuses_a_fifo_without_waiting(tmp_path: Path) -> None:
    path = _save(tmp_path / "m.safetensors", w=np.ones(3, np.float32))
    fifo = tmp_path / "shapes.json"
    os.mkfifo(fifo)
    done = _cli("check", path, "--expect-json", fifo, timeout=60)
    assert done.returncode == 2
    assert done.stderr == f"torchlean check: error: {fifo}: is a FIFO, not a regular file\n"


def test_check_expect_json_of_a_binary_file_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = _save(tmp_path / "m.safetensors", w=np.ones(3, np.float32))
    binary = tmp_path / "shapes.json"
    binary.write_bytes(b'{"\x00\xff\xfe')
    code, _, err = run(capsys, "check", path, "--expect-json", binary)
    assert code == 2
    assert err == (
        f"torchlean check: error: {binary}: not a JSON text file (the byte at offset 3 is"
        " not UTF-8)\n"
    )


# ----------------------------------------------------------------------------- 11


def test_diff_compares_int64_exactly(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    a = _save(tmp_path / "a.safetensors", n=np.array([2**60, 7], np.int64))
    b = _save(tmp_path / "b.safetensors", n=np.array([2**60 + 1, 7], np.int64))
    code, out, _ = run(capsys, "diff", a, b)
    assert code == 0
    assert "changed:   `n` (2,): 1 of 2 values, max abs 1," in out
    c = _save(tmp_path / "c.safetensors", n=np.array([2**63 + 1, 7], np.uint64))
    d = _save(tmp_path / "d.safetensors", n=np.array([2**63, 7], np.uint64))
    code, out, _ = run(capsys, "diff", c, d)
    assert "1 of 2 values, max abs 1," in out
    e = _save(tmp_path / "e.safetensors", n=np.array([2**60 + 1, -1], np.int64))
    f = _save(tmp_path / "f.safetensors", n=np.array([2**60, 2**64 - 1], np.uint64))
    code, out, _ = run(capsys, "diff", e, f)  # int64 against uint64: no float64 on the way
    assert "(int64 -> uint64): 2 of 2 values, max abs 1.845e+19, max rel 1" in out


# ----------------------------------------------------------------------------- 15


def test_convert_errors_name_the_target_not_a_temporary_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    src = _save(tmp_path / "z.npz", z=np.ones(3, np.complex64))
    out = tmp_path / "z.json"
    code, _, err = run(capsys, "convert", src, out)
    assert code == 2
    assert err == (
        f"torchlean convert: error: {out}: tensor `z` has dtype complex64, which TorchLean's"
        " JSON cannot hold\n"
    )
    assert os.listdir(tmp_path) == ["z.npz"]


def test_two_converts_to_one_out_leave_one_whole_file(tmp_path: Path) -> None:
    a = _save(tmp_path / "a.safetensors", w=np.full(50_000, 1.0, np.float32))
    b = _save(tmp_path / "b.safetensors", w=np.full(50_000, 2.0, np.float32))
    out = tmp_path / "out.npz"
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "torchlean", "convert", str(src), str(out), "--force"],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for src in (a, b)
    ]
    for p in runs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert set(tio.load(out)["w"].tolist()) in ({1.0}, {2.0})
    assert sorted(os.listdir(tmp_path)) == ["a.safetensors", "b.safetensors", "out.npz"]


def test_convert_says_what_a_state_dict_format_drops(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ctx = empty_context().register_variable("w", np.zeros(2, np.float32))
    ctx = ctx.register_variable("w", np.ones(2, np.float32))
    src = tmp_path / "s.safetensors"
    tio.save(ctx, src)
    code, out, _ = run(capsys, "convert", src, tmp_path / "s.pt")
    assert code == 0
    assert out.splitlines()[0] == (
        "note: format torch keeps the latest variable of each name only: 1 shadowed entry"
        " (`w`) and next_id were not written"
    )


# ----------------------------------------------------------------------------- 16


def test_terminal_escapes_in_names_are_shown_escaped(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    evil = "w\x1b[2J\x1b]0;pwned\x07"
    a = _save(tmp_path / "a.safetensors", **{evil: np.ones(2, np.float32)})
    b = _save(tmp_path / "b.safetensors", **{evil: np.zeros(2, np.float32)})
    shapes = tmp_path / "shapes.json"
    shapes.write_text(json.dumps({"x": [2]}))
    outputs = []
    for argv in (
        ("show", a, "--width", "120"),
        ("diff", a, b),
        ("check", a, "--expect", b),
        ("check", a, "--expect-json", shapes),
        ("convert", a, tmp_path / "bad.json", "--to", "nope"),
    ):
        _, out, err = run(capsys, *argv)
        outputs.append(out + err)
    for text in outputs:
        assert "\x1b" not in text and "\x07" not in text
    assert "w\\x1b[2J\\x1b]0;pwned\\x07" in outputs[1]
    assert "unexpected: `w\\x1b[2J\\x1b]0;pwned\\x07` with shape (2,)" in outputs[3]


def test_error_lines_escape_control_characters() -> None:
    from torchlean.cli._main import error_text
    from torchlean.errors import FormatError

    assert error_text(FormatError("bad `a\x1b[31mb`")) == "bad `a\\x1b[31mb`"
    assert error_text(FileNotFoundError(2, "No such file", "x\x07.pt")) == (
        "x\\x07.pt: no such file"
    )


# ----------------------------------------------------------------------------- 17


def test_show_reads_a_tensor_many_entries_share_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.numpy import save_file

    n = 3000
    layout = {
        "version": 1,
        "next_id": n,
        "dtype": None,
        "variables": [[f"v{i}", "w"] for i in range(n)],
        "gradients": [],
    }
    path = tmp_path / "amplified.safetensors"
    save_file(
        {"w": np.arange(100_000, dtype=np.float32)},
        str(path),
        metadata={"torchlean": json.dumps(layout)},
    )
    reads = []
    real_read, real_blocks = tio.FileSummary.read, tio.FileSummary.blocks

    def read(self: Any, info: Any, n: int | None = None) -> Any:
        reads.append(info.name)
        return real_read(self, info, n)

    def blocks(self: Any, info: Any) -> Any:
        reads.append(info.name)
        return real_blocks(self, info)

    monkeypatch.setattr(tio.FileSummary, "read", read)
    monkeypatch.setattr(tio.FileSummary, "blocks", blocks)
    code, out, _ = run(capsys, "show", path, "--width", "100")
    assert code == 0 and f"{n} variables" in out
    assert len(reads) <= 4, len(reads)


# ------------------------------------------------------------------ issue 13


def test_show_help_example_works(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "show", "--help")
    example = next(
        line
        for line in out.splitlines()
        if line.strip().startswith("torchlean show") and "--format" in line
    )
    fmt = example.split("--format", 1)[1].split()[0]
    path = _save(tmp_path / "mlp.json", w=np.ones(2, np.float32))
    code, _, err = run(capsys, "show", path, "--format", fmt)
    assert code == 0, err


def test_metadata_is_shown_diffed_and_carried_by_convert(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from safetensors.numpy import save_file

    lora = tmp_path / "lora.safetensors"
    save_file(
        {"w": np.ones(2, np.float32)},
        str(lora),
        metadata={"ss_network_module": "networks.lora", "ss_rank": "8"},
    )
    code, out, _ = run(capsys, "show", lora)
    assert code == 0
    assert "Metadata (2)" in out and "ss_network_module: networks.lora" in out
    code, out, _ = run(capsys, "show", lora, "--json")
    assert json.loads(out)["metadata"] == {"ss_network_module": "networks.lora", "ss_rank": "8"}
    copy = tmp_path / "copy.safetensors"
    code, _, err = run(capsys, "convert", lora, copy)
    assert code == 0, err
    assert tio.inspect(copy).metadata == {
        "format": "pt",
        "ss_network_module": "networks.lora",
        "ss_rank": "8",
    }
    other = tmp_path / "other.safetensors"
    tio.save(tio.load(lora), other, metadata={"ss_rank": "16"})
    code, out, _ = run(capsys, "diff", lora, other)
    assert "metadata:  `ss_network_module` removed: networks.lora" in out
    assert "metadata:  `ss_rank` changed: 8 -> 16" in out
    code, out, _ = run(capsys, "convert", lora, tmp_path / "lora.npz")
    assert "note: " in out and "has no place for the metadata" in out


def _timm_checkpoint(path: Path) -> Path:
    sd = {"fc.weight": torch.ones(2, 3), "fc.bias": torch.zeros(2)}
    ema = {k: v + 1 for k, v in sd.items()}
    torch.save({"epoch": 3, "state_dict": sd, "state_dict_ema": ema}, path)
    return path


def test_pt_suffixes_and_key(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    timm = _timm_checkpoint(tmp_path / "model.pth.tar")
    assert tio.format_of(timm) == "torch"
    assert tio.load(timm)["fc.weight"].tolist() == [[1, 1, 1], [1, 1, 1]]
    assert tio.load(timm, key="state_dict_ema")["fc.bias"].tolist() == [1, 1]
    code, out, _ = run(capsys, "check", timm, "--expect", timm, "--key", "state_dict_ema")
    assert code == 0, out
    for suffix in (".bin", ".ckpt"):
        path = tmp_path / f"m{suffix}"
        torch.save({"state_dict": {"w": torch.ones(1)}, "epoch": 1}, path)
        assert tio.load(path)["w"].tolist() == [1.0]


def test_key_picks_a_nested_state_dict_and_flatten_names_it(tmp_path: Path) -> None:
    path = tmp_path / "deit.pth"
    torch.save({"model": {"head.weight": torch.ones(2)}, "args": None}, path)
    with pytest.raises(FormatError) as info:
        tio.load(path)
    assert str(info.value) == (
        f"{path}: entry `model` is a dict, not a tensor (and 1 more); a state_dict maps names"
        ' to tensors; it holds mappings under `model`: pick one with key="model" (torchlean'
        " --key model), or read them all as dotted names with flatten=True (--flatten)"
    )
    assert tio.load(path, key="model")["head.weight"].tolist() == [1, 1]
    nested = tmp_path / "dcp.pt"
    torch.save({"model": {"enc": {"w": torch.ones(1)}, "b": torch.zeros(1)}}, nested)
    assert [n for n, _ in tio.load(nested, flatten=True).latest_variables()] == [
        "model.enc.w",
        "model.b",
    ]
    assert tio.load(nested, key="model.enc")["w"].tolist() == [1.0]
    with pytest.raises(Exception) as info:
        tio.load(nested, key="model.dec")
    assert str(info.value) == (
        f"{nested}: key='model.dec': no entry `dec` under `model`; the keys there are `enc`, `b`"
    )
    st = _save(tmp_path / "w.safetensors", w=np.ones(1, np.float32))
    with pytest.raises(ValueError) as info:
        tio.load(st, key="model")
    assert str(info.value) == (
        "load: key= and flatten= pick a nested state dict, which formats torch have;"
        " format 'safetensors' has none"
    )


def test_a_namespace_in_a_checkpoint_names_add_safe_globals(tmp_path: Path) -> None:
    path = tmp_path / "timm.pth.tar"
    torch.save({"state_dict": {"w": torch.ones(1)}, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(Exception) as info:
        tio.load(path)
    assert str(info.value).endswith(
        "If you trust this file and argparse.Namespace is plain data, allow it before"
        " loading: torch.serialization.add_safe_globals([argparse.Namespace])"
    )
    with torch.serialization.safe_globals([argparse.Namespace]):
        assert tio.load(path)["w"].tolist() == [1.0]


def test_a_git_lfs_pointer_gets_a_hint(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_text(
        "version https://git-lfs.github.com/spec/v1\n"
        "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
        "size 548105171\n"
    )
    message = (
        f"{path}: this looks like a Git LFS pointer, not the file itself; run `git lfs"
        " pull` (in the repository it came from) to fetch the content"
    )
    for call in (tio.load, tio.inspect):
        with pytest.raises(Exception) as info:
            call(path)
        assert str(info.value) == message
    code, _, err = run(capsys, "show", path)
    assert code == 2 and err == f"torchlean show: error: {message}\n"


def test_save_writes_safetensors_metadata(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    ctx = empty_context().register_variable("w", np.ones(1, np.float32))
    tio.save(ctx, path, metadata={"author": "me"})
    assert tio.inspect(path).metadata == {"format": "pt", "author": "me"}
    with pytest.raises(ValueError, match="metadata key 'torchlean' is reserved"):
        tio.save(ctx, path, metadata={"torchlean": "x"})
    with pytest.raises(ValueError) as info:
        tio.save(ctx, tmp_path / "m.npz", metadata={"a": "b"})
    assert str(info.value) == (
        "save: metadata= is written by formats with a metadata header (safetensors);"
        " format 'npz' has none"
    )


def test_inspect_of_a_pt_maps_the_file(tmp_path: Path) -> None:
    path = tmp_path / "big.pt"
    torch.save({"w": torch.arange(1 << 20, dtype=torch.float32)}, path)
    summary = tio.inspect(path)
    assert summary.sliceable
    assert summary.head("w", 3).tolist() == [0.0, 1.0, 2.0]
    with summary.blocks(summary.info("w")) as read:
        assert read((slice(10, 12),)).tolist() == [10.0, 11.0]
