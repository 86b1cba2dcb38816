"""``io.inspect`` of a ``.pt`` zip file without torch (io/_torchzip.py) gives what the
torch path gives: the same entries, the same data, the same errors; ``torchlean show``
of one never imports torch."""

from __future__ import annotations

import io as pyio
import os
import random
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from torchlean import io
from torchlean.errors import FormatError
from torchlean.io import _torchzip
from torchlean.io import torch as tio
from torchlean.io._common import Descriptor
from torchlean.io._summary import FileSummary
from torchlean.runtime.backends import backend_named

HOSTILE = Path(__file__).parent / "hostile"
MALFORMED = Path(__file__).parent / "malformed"
SRC = Path(__file__).resolve().parents[2] / "src"


def _tied() -> dict[str, Any]:
    w = torch.randn(5, 3)
    return {"wte.weight": w, "lm_head.weight": w, "bias": torch.zeros(5)}


def _views() -> dict[str, Any]:
    qkv = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    return {"qkv": qkv, "k": qkv[2:4], "row": qkv[5], "col": qkv[:, 1], "t": qkv.t()}


def _nested() -> dict[str, Any]:
    return {
        "epoch": 3,
        "model": {"enc": {"w": torch.ones(2, 2)}, "b": torch.zeros(2)},
        "optimizer": {"state": {0: {"exp_avg": torch.zeros(2)}}, "lr": 0.1},
    }


CHECKPOINTS: dict[str, tuple[Any, dict[str, Any]]] = {
    "bf16": ({"w": torch.randn(3, 4).to(torch.bfloat16)}, {}),
    "float16": ({"w": torch.randn(7).half(), "s": torch.tensor(2.5).half()}, {}),
    "ints": (
        {
            "i8": torch.arange(-3, 3, dtype=torch.int8),
            "u8": torch.arange(6, dtype=torch.uint8),
            "i64": torch.arange(4),
            "i32": torch.arange(4, dtype=torch.int32).reshape(2, 2),
        },
        {},
    ),
    "bool": ({"mask": torch.tensor([True, False, True])}, {}),
    "float64 and complex": (
        {"d": torch.randn(3, dtype=torch.float64), "c": torch.randn(2, dtype=torch.complex64)},
        {},
    ),
    "new dtypes": (
        {
            "f8": torch.randn(4).to(torch.float8_e4m3fn),
            "f8b": torch.randn(4).to(torch.float8_e5m2),
            "u16": torch.arange(4).to(torch.uint16),
        },
        {},
    ),
    "tied": (_tied(), {}),
    "views with offsets": (_views(), {}),
    "empty and 0-d": (
        {"e": torch.zeros(0), "e2": torch.zeros(3, 0), "s": torch.tensor(7.0)},
        {},
    ),
    "parameters": (
        {"p": torch.nn.Parameter(torch.ones(2, 2)), "b": torch.ones(1, dtype=torch.int64)},
        {},
    ),
    "wrapped": ({"state_dict": {"a": torch.ones(2)}, "epoch": 1}, {}),
    "module": (torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU()).state_dict(), {}),
    "nested dotted key": (_nested(), {"key": "model.enc"}),
    "nested flatten": (_nested(), {"key": "model", "flatten": True}),
}


def _header(path: Path) -> Any:
    file = Descriptor(path)
    try:
        return _torchzip.read_header(file.fd, str(path))
    finally:
        file.close()


def _both(path: Path, **options: Any) -> tuple[FileSummary | None, FileSummary]:
    fast = tio._inspect_records(Descriptor(path), os.fspath(path), **_options(options))
    slow = tio._inspect_torch(Descriptor(path), os.fspath(path), **_options(options))
    return fast, slow


def _options(options: dict[str, Any]) -> dict[str, Any]:
    return {"key": options.get("key"), "flatten": options.get("flatten", False)}


def _same_data(fast: FileSummary, path: Path, options: dict[str, Any]) -> None:
    """Each entry's data, whole, its first elements and a block, as torch.load reads it."""
    pairs = dict(tio._state_dict(torch.load(path), str(path), **_options(options)))
    to_numpy = backend_named("torch").to_numpy
    for a in fast.entries:
        want = np.array(to_numpy(pairs[a.name].contiguous()), copy=True)
        for n in (None, 0, 1, 3):
            x = fast.read(a, n)
            y = want if n is None else want.reshape(-1)[:n]
            assert (x.dtype, x.shape) == (y.dtype, y.shape)
            assert x.tobytes() == y.tobytes()
        if a.shape:  # float8 too: read_block strides over same-width integers
            index = (slice(1, None, 2),)
            with fast.blocks(a) as block:
                assert block(index).tobytes() == want[index].tobytes()
                assert block(index).shape == want[index].shape


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_the_torch_free_summary_is_the_torch_one(tmp_path: Path, name: str) -> None:
    obj, options = CHECKPOINTS[name]
    path = tmp_path / "x.pt"
    torch.save(obj, path)
    fast, slow = _both(path, **options)
    assert fast is not None, "the file should be read without torch"
    assert fast.entries == slow.entries
    _same_data(fast, path, options)
    assert str(fast) == str(slow)
    assert str(io.inspect(path, **options)) == str(slow)


def test_errors_of_the_state_dict_are_the_torch_path_s(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    torch.save(_nested(), path)
    for options in ({}, {"key": "model.nope"}, {"key": "epoch"}, {"flatten": True}):
        with pytest.raises(FormatError) as fast:
            io.inspect(path, **options)
        with pytest.raises(FormatError) as slow:
            tio._inspect_torch(Descriptor(path), os.fspath(path), **_options(options))
        assert str(fast.value) == str(slow.value)


def _outcome(run: Any) -> Any:
    try:
        summary = run()
    except Exception as e:  # the outcome compared is any error
        return (type(e).__name__, str(e))
    return tuple(summary.entries)


def _pt_files() -> list[Path]:
    suffixes = tio.FORMAT.suffixes
    return sorted(
        p
        for folder in (HOSTILE, MALFORMED)
        for p in folder.iterdir()
        if any(p.name.endswith(s) for s in suffixes)
    )


@pytest.mark.parametrize("path", _pt_files(), ids=lambda p: p.name)
def test_hostile_files_give_what_the_torch_path_gives(path: Path) -> None:
    fast = _outcome(lambda: io.inspect(path))
    slow = _outcome(
        lambda: tio._inspect_torch(Descriptor(path), os.fspath(path), key=None, flatten=False)
    )
    assert fast == slow


def _mutants(data: bytes, seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        b = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(b))
            b[at] = rng.randrange(256)
        out.append(bytes(b))
    return out


def _with_pickle(path: Path, pickle: bytes, out: Path) -> None:
    """``path`` with its data.pkl replaced (stored, CRC right), the rest unchanged."""
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = pickle if info.filename.endswith("/data.pkl") else src.read(info)
            dst.writestr(info, data)


def _torch_path(path: Path) -> FileSummary:
    return tio._inspect_torch(Descriptor(path), os.fspath(path), key=None, flatten=False)


def _compare_mutants(tmp_path: Path, mutants: list[Path]) -> int:
    """For each mutant the torch-free reader vouches for, ``io.inspect`` gives what the
    torch path gives; returns how many it vouched for. (Files it leaves to torch are
    read by torch alone; torch itself can answer such a file differently twice when
    miniz reads uninitialised memory, so they are not compared.)"""
    vouched = 0
    for path in mutants:
        if _header(path) is not None:
            vouched += 1
            fast = _outcome(lambda p=path: io.inspect(p))  # type: ignore[misc]
            assert fast == _outcome(lambda p=path: _torch_path(p)), path.name  # type: ignore[misc]
        path.unlink()
    return vouched


def test_mutated_pickles_give_what_the_torch_path_gives(tmp_path: Path) -> None:
    """Bytes of the pickle changed at random (a valid zip around it): the torch-free
    reader gives torch's entries, or leaves the file to torch."""
    base = tmp_path / "base.pt"
    torch.save({**_views(), **_tied(), "h": torch.ones(2).half()}, base)
    with zipfile.ZipFile(base) as zf:
        pickle = zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl")))
    paths = []
    for i, mutant in enumerate(_mutants(pickle, seed=13, count=300)):
        paths.append(tmp_path / f"m{i}.pt")
        _with_pickle(base, mutant, paths[-1])
    assert _compare_mutants(tmp_path, paths) > 5  # names, values, sizes changed


def test_mutated_files_give_what_the_torch_path_gives(tmp_path: Path) -> None:
    """Bytes of the whole file (zip headers, directory, data) changed at random."""
    base = tmp_path / "base.pt"
    torch.save({"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3).half()}, base)
    paths = []
    for i, mutant in enumerate(_mutants(base.read_bytes(), seed=7, count=300)):
        paths.append(tmp_path / f"m{i}.pt")
        paths[-1].write_bytes(mutant)
    assert _compare_mutants(tmp_path, paths) > 50


def _quantized() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # quantized tensors are deprecated
        return torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8)


def test_what_torch_adds_is_left_to_torch(tmp_path: Path) -> None:
    """Files the torch-free reader does not vouch for: legacy (non-zip) files, other
    pickle protocols, tensors out of their storage, quantized and sparse tensors."""
    cases = {
        "legacy": ({"w": torch.ones(2)}, {"_use_new_zipfile_serialization": False}),
        "protocol 4": ({"w": torch.ones(2)}, {"pickle_protocol": 4}),
        "sparse": ({"w": torch.eye(3).to_sparse()}, {}),
        "quantized": ({"w": _quantized()}, {}),
        "conjugate view": ({"c": torch.randn(2, dtype=torch.complex64).conj()}, {}),
    }
    for name, (obj, options) in cases.items():
        path = tmp_path / "x.pt"
        torch.save(obj, path, **options)
        assert _header(path) is None, name
        assert _outcome(lambda p=path: io.inspect(p)) == _outcome(  # type: ignore[misc]
            lambda p=path: _torch_path(p)  # type: ignore[misc]
        ), name


def test_a_tensor_past_its_storage_is_left_to_torch(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    torch.save({"w": torch.ones(4)}, path)
    with zipfile.ZipFile(path) as zf:
        name = next(n for n in zf.namelist() if n.endswith("/data.pkl"))
        pickle = zf.read(name)
    # the size (4,) becomes (9,): past the 16-byte storage
    bad = pickle.replace(b"K\x04\x85", b"K\x09\x85", 1)
    assert bad != pickle
    _with_pickle(path, bad, tmp_path / "bad.pt")
    bad_path = tmp_path / "bad.pt"
    assert _header(bad_path) is None
    with pytest.raises(FormatError, match="not a valid PyTorch file"):
        io.inspect(bad_path)


def test_the_globals_are_torch_s() -> None:
    """Every global the torch-free reader knows is one torch's weights_only unpickler
    allows, with the same dtype."""
    from torch._weights_only_unpickler import _get_allowed_globals

    allowed = _get_allowed_globals()
    for name, known in _torchzip._GLOBALS.items():
        assert name in allowed, name
        if known.kind == "storage" and name != "torch.storage.UntypedStorage":
            assert str(allowed[name].dtype) == f"torch.{known.dtype}", name
        if known.kind == "dtype":
            assert allowed[name] is getattr(torch, known.dtype)
            assert allowed[name].itemsize == _torchzip.ITEMSIZE[known.dtype]


_SHOW = """
import runpy, sys
sys.argv = ["torchlean", *sys.argv[1:]]
try:
    runpy.run_module("torchlean", run_name="__main__")
except SystemExit as e:
    code = e.code
else:
    code = 0
print("torch imported:", "torch" in sys.modules, "exit:", code)
"""


@pytest.mark.parametrize("command", ["show", "check"])
def test_show_of_a_pt_file_never_imports_torch(tmp_path: Path, command: str) -> None:
    path = tmp_path / "x.pt"
    torch.save({**_views(), "h": torch.randn(3, 3).to(torch.bfloat16)}, path)
    env = dict(os.environ, PYTHONPATH=str(SRC))
    done = subprocess.run(
        [sys.executable, "-c", _SHOW, command, str(path)]
        + (["--expect", str(path)] if command == "check" else []),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("torch imported: False exit: 0\n"), done.stdout
    assert "qkv" in done.stdout or command == "check"


def test_a_preview_reads_the_stored_bytes(tmp_path: Path) -> None:
    """Data comes from the file: a record's bytes changed on disk are what is read."""
    path = tmp_path / "x.pt"
    torch.save({"w": torch.zeros(4)}, path)
    summary = io.inspect(path)
    raw = pyio.BytesIO(path.read_bytes())
    with zipfile.ZipFile(raw) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith("/data/0"))
    data = bytearray(path.read_bytes())
    at = info.header_offset
    names, extra = (
        int.from_bytes(data[at + 26 : at + 28], "little"),
        int.from_bytes(data[at + 28 : at + 30], "little"),
    )
    start = at + 30 + names + extra
    data[start : start + 4] = np.float32(2.5).tobytes()
    path.write_bytes(bytes(data))  # same inode: the summary's open file sees it
    assert summary.tensor("w").tolist() == [2.5, 0.0, 0.0, 0.0]


def test_the_torch_path_reads_the_right_bytes_beside_empty_tensors(tmp_path: Path) -> None:
    # the torch path finds where each storage lies in the file from mapped addresses;
    # with empty storages several starts fitted and a 0-d tensor read the zip header
    from torchlean.io._common import Descriptor
    from torchlean.io.torch import _inspect_torch

    state = {
        "a": torch.zeros(0),
        "b": torch.zeros((0, 3)),
        "s": torch.tensor(7.0),
        "v": torch.arange(5.0),
    }
    path = tmp_path / "empty.pt"
    torch.save(state, path)
    summary = _inspect_torch(Descriptor(path), str(path), key=None, flatten=False)
    for info in summary.variables:
        assert summary.read(info, None).tolist() == state[info.name].tolist()
