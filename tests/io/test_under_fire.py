"""Holds under fire (issue 10): loads racing saves, saves over what is not a file,
saves of what could not be read back, aliases in ``.pt`` files, mapped files, loaded
arrays that must stay read-only, ``load_into`` all or nothing.

Each test failed before the fix it guards (see docs/reliability.md for the figures).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import torchlean.io as tio
from torchlean import RuntimeContext, empty_context
from torchlean.errors import BackendError, FormatError, InPlaceModificationError
from torchlean.io._common import to_numpy

sys.path.insert(0, str(Path(__file__).parent))
from _race_writer import contexts

SRC = Path(__file__).parents[2] / "src"
WRITER = Path(__file__).with_name("_race_writer.py")


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }


def _context_of(ctx: RuntimeContext[Any]) -> tuple[Any, ...]:
    """Everything a load gives: registries (names, values), next_id, as plain data."""
    return (
        tuple((n, to_numpy(at).tobytes()) for n, at in ctx.var_registry),
        ctx.next_id,
    )


# ----------------------------------------------------------------------------- 1


@pytest.mark.parametrize(
    ("suffix", "backend"),
    [("safetensors", "numpy"), ("safetensors", "torch"), ("npz", "numpy"), ("pt", "numpy")],
)
def test_a_load_during_atomic_saves_sees_a_or_b_never_a_mix(
    tmp_path: Path, suffix: str, backend: str
) -> None:
    a, b = contexts()
    if suffix == "pt":  # a state_dict: the latest variables only
        a = empty_context().with_variables(list(a.latest_variables()))
        b = empty_context().with_variables(list(b.latest_variables()))
    path = tmp_path / f"race.{suffix}"
    tio.save(a, path)
    want = {_context_of(tio.load(path)), _context_of(tio.load(path := path))}
    tio.save(b, path)
    want.add(_context_of(tio.load(path)))
    assert len(want) == 2
    stop = tmp_path / "stop"
    writer = subprocess.Popen(
        [sys.executable, str(WRITER), str(path), str(stop)], env=_env(), cwd=tmp_path
    )
    seen: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 4.0
        loads = 0
        while loads < 3000 and time.monotonic() < deadline:
            try:
                got = _context_of(tio.load(path, backend=backend))
            except FileNotFoundError:  # never: the rename replaces the name atomically
                seen["missing"] = seen.get("missing", 0) + 1
                continue
            kind = "ok" if got in want else "mixed"
            seen[kind] = seen.get(kind, 0) + 1
            loads += 1
    finally:
        stop.touch()
        writer.wait(timeout=60)
    assert seen.get("ok", 0) >= 20, seen
    assert set(seen) == {"ok"}, seen


def test_inspect_reads_later_from_the_file_it_inspected(tmp_path: Path) -> None:
    a, b = contexts()
    path = tmp_path / "w.safetensors"
    tio.save(a, path)
    summary = tio.inspect(path)
    tio.save(b, path)  # renamed over the name: the summary keeps the file it opened
    assert summary.tensor("a.weight").tolist() == np.full((64, 64), 1.0).tolist()
    assert summary.head("a.bias", 3).tolist() == [1.5, 1.5, 1.5]
    with summary.blocks(summary.info("a.weight")) as read:
        assert read((slice(2, 4), slice(1, 3))).tolist() == [[1.0, 1.0], [1.0, 1.0]]


# ----------------------------------------------------------------------------- 3


def _small() -> RuntimeContext[Any]:
    return empty_context().register_variable("w", np.arange(4, dtype=np.float32))


@pytest.mark.parametrize("suffix", ["safetensors", "npz", "pt", "json"])
def test_save_refuses_a_fifo_and_leaves_it_a_fifo(tmp_path: Path, suffix: str) -> None:
    fifo = tmp_path / f"pipe.{suffix}"
    os.mkfifo(fifo)
    with pytest.raises(OSError) as info:
        tio.save(_small(), fifo)
    assert str(info.value) == (
        f"[Errno 22] is a FIFO, not a regular file; a save writes a new regular file and"
        f" would replace it, so nothing was written: '{fifo}'"
    )
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert os.listdir(tmp_path) == [fifo.name]


def test_save_follows_a_symlink_and_keeps_the_link(tmp_path: Path) -> None:
    real = tmp_path / "real.safetensors"
    link = tmp_path / "link.safetensors"
    tio.save(empty_context(), real)
    link.symlink_to(real.name)
    tio.save(_small(), link)
    assert link.is_symlink() and os.readlink(link) == real.name
    assert tio.load(real)["w"].tolist() == [0, 1, 2, 3]
    dangling = tmp_path / "dangling.npz"
    dangling.symlink_to("made.npz")
    tio.save(_small(), dangling)
    assert dangling.is_symlink() and tio.load(tmp_path / "made.npz")["w"].tolist() == [0, 1, 2, 3]


def test_save_to_dev_null_leaves_it_a_device() -> None:
    with pytest.raises(OSError, match=r"is a device, not a regular file"):
        tio.save(_small(), "/dev/null", format="npz")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert not [n for n in os.listdir("/dev") if n.startswith(".null.")]


# ----------------------------------------------------------------------------- 4


def test_npz_round_trips_every_narrow_float(tmp_path: Path) -> None:
    import ml_dtypes

    for dtype in (ml_dtypes.float8_e5m2, ml_dtypes.float8_e4m3fn, ml_dtypes.bfloat16):
        a = np.array([0.5, -2.0, 3.0], dtype=dtype)
        path = tmp_path / f"{np.dtype(dtype).name}.npz"
        tio.save(empty_context().register_variable("w", a), path)
        for backend in ("numpy", "torch"):
            at = tio.load(path, backend=backend).variable_entry("w")
            assert at.dtype == a.dtype.name
            assert to_numpy(at).astype(np.float32).tolist() == [0.5, -2, 3]


def test_safetensors_round_trips_fnuz_floats(tmp_path: Path) -> None:
    import ml_dtypes

    a = np.array([0.5, -2.0], dtype=ml_dtypes.float8_e4m3fnuz)
    path = tmp_path / "w.safetensors"
    tio.save(empty_context().register_variable("w", a), path)
    assert tio.load(path)["w"].dtype == a.dtype


@pytest.mark.parametrize("suffix", ["safetensors", "npz", "pt"])
@pytest.mark.parametrize(
    ("array", "shown"),
    [
        (np.array(["ab", "c"]), "str64"),
        (np.array(["2020-01-01"], dtype="datetime64[D]"), "datetime64[D]"),
    ],
)
def test_save_refuses_dtypes_no_format_reads_back(
    tmp_path: Path, suffix: str, array: Any, shown: str
) -> None:
    path = tmp_path / f"s.{suffix}"
    what = {"safetensors": "safetensors", "npz": "npz", "pt": "a PyTorch file"}[suffix]
    with pytest.raises(FormatError) as info:
        tio.save(empty_context().register_variable("s", array), path)
    assert str(info.value) == (
        f"{path}: cannot save: variable `s` has dtype {shown}, which {what} cannot store;"
        " nothing was written"
    )
    assert not path.exists()


def test_safetensors_refuses_complex128(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    with pytest.raises(FormatError) as info:
        tio.save(empty_context().register_variable("c", np.ones(2, np.complex128)), path)
    assert str(info.value) == (
        f"{path}: cannot save: variable `c` has dtype complex128, which safetensors cannot"
        " store; nothing was written"
    )


def test_npz_refuses_a_nul_in_a_name(tmp_path: Path) -> None:
    path = tmp_path / "n.npz"
    with pytest.raises(FormatError) as info:
        tio.save(empty_context().register_variable("a\x00b", np.ones(2)), path)
    assert str(info.value) == (
        f"{path}: cannot save: variable `a\\x00b` has a NUL character in its name, which"
        " npz cannot store (a zip member name ends at NUL); nothing was written"
    )
    tio.save(empty_context().register_variable("a\x00b", np.ones(2)), tmp_path / "n.safetensors")
    assert tio.load(tmp_path / "n.safetensors").var_registry[0][0] == "a\x00b"


def test_a_lone_surrogate_never_reaches_a_writer(tmp_path: Path) -> None:
    # a context refuses the name when it is stored, so no format's writer sees one
    with pytest.raises(ValueError, match="lone surrogate"):
        empty_context().register_variable("a\udcffb", np.ones(2))
    assert list(tmp_path.iterdir()) == []


def test_a_pt_with_a_surrogate_name_is_a_format_error(tmp_path: Path) -> None:
    path = tmp_path / "u.pt"
    torch.save({"a\udcffb": torch.ones(2)}, path)
    with pytest.raises(FormatError) as info:
        tio.load(path)
    assert str(info.value).startswith(f"{path}: variable name 'a\\udcffb' has a lone surrogate")


def test_pt_saves_conjugate_negative_and_retyped_views(tmp_path: Path) -> None:
    t = torch.tensor([1 + 2j, 3j])
    ctx = empty_context().register_variable("c", t.conj()).register_variable("n", t.conj().imag)
    ctx = ctx.register_variable("r", t.real)
    path = tmp_path / "v.pt"
    tio.save(ctx, path)
    back = tio.load(path)
    assert back["c"].tolist() == [1 - 2j, -3j]
    assert back["n"].tolist() == [-2.0, -3.0]
    assert back["r"].tolist() == [1.0, 0.0]


# ----------------------------------------------------------------------------- 5


_VALID_PT = {
    "float8_e4m3fn": lambda: torch.tensor([0.5, 1.0]).to(torch.float8_e4m3fn),
    "float8_e5m2": lambda: torch.tensor([0.5, 1.0]).to(torch.float8_e5m2),
    "complex32": lambda: torch.tensor([1 + 1j, 2]).to(torch.complex32),
    "sparse": lambda: torch.eye(2).to_sparse(),
    "conj": lambda: torch.tensor([1 + 2j, 3j]).conj(),
}


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental:UserWarning")
@pytest.mark.parametrize(
    ("kind", "dtype"),
    [
        ("float8_e4m3fn", "float8_e4m3fn"),
        ("float8_e5m2", "float8_e5m2"),
        ("complex32", "complex64"),
        ("sparse", "float32"),
        ("conj", "complex64"),
    ],
)
def test_valid_pt_files_load_in_both_libraries(tmp_path: Path, kind: str, dtype: str) -> None:
    tensor = _VALID_PT[kind]()
    path = tmp_path / "w.pt"
    torch.save({"w": tensor}, path)
    assert tio.load(path)["w"].dtype.name == dtype
    got = tio.load(path, backend="torch")
    expected = tensor.to_dense() if tensor.layout != torch.strided else tensor.resolve_conj()
    assert torch.equal(got["w"].to_dense().to(torch.complex64), expected.to(torch.complex64))
    assert tio.inspect(path).info("w").shape == tuple(tensor.shape)


# ----------------------------------------------------------------------------- 6


def test_tied_weights_from_a_pt_share_a_version_counter(tmp_path: Path) -> None:
    w = torch.arange(6.0).reshape(2, 3)
    path = tmp_path / "tied.pt"
    torch.save({"wte": w, "lm_head": w}, path)
    ctx = tio.load(path, backend="torch")
    ctx["wte"].add_(1)  # a write through one of the two
    with pytest.raises(InPlaceModificationError):
        ctx["lm_head"]


def test_overlapping_views_from_a_pt_share_a_version_counter(tmp_path: Path) -> None:
    qkv = torch.arange(12.0)
    path = tmp_path / "views.pt"
    torch.save({"qkv": qkv, "k": qkv[2:6]}, path)
    ctx = tio.load(path, backend="torch")
    assert ctx["k"].tolist() == [2.0, 3.0, 4.0, 5.0]
    ctx["k"].mul_(0)
    with pytest.raises(InPlaceModificationError):
        ctx["qkv"]


# ----------------------------------------------------------------------------- 14


def test_load_into_is_all_or_nothing_with_a_meta_tensor() -> None:
    module = torch.nn.Linear(3, 2)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    ctx = empty_context().register_variable("weight", torch.ones(2, 3))
    ctx = ctx.register_variable("bias", torch.empty(2, device="meta"))
    with pytest.raises(BackendError) as info:
        tio.torch.load_into(ctx, module)
    assert str(info.value) == (
        "load_into: nothing was copied, the module is unchanged: variable `bias` is a meta"
        " tensor (it has no data)"
    )
    for k, v in module.state_dict().items():
        assert torch.equal(v, before[k])


def test_load_into_refuses_a_module_on_the_meta_device() -> None:
    with torch.device("meta"):
        module = torch.nn.Linear(3, 2)
    ctx = empty_context().register_variable("weight", torch.ones(2, 3))
    ctx = ctx.register_variable("bias", torch.ones(2))
    with pytest.raises(BackendError, match=r"the module's `weight` is a meta tensor"):
        tio.torch.load_into(ctx, module)


def test_load_into_copies_a_sparse_tensor_densely() -> None:
    module = torch.nn.Linear(2, 2)
    ctx = empty_context().register_variable("weight", torch.eye(2).to_sparse())
    ctx = ctx.register_variable("bias", torch.zeros(2))
    tio.torch.load_into(ctx, module)
    assert torch.equal(module.weight.detach(), torch.eye(2))


# ----------------------------------------------------------------------------- 18


@pytest.mark.parametrize("suffix", ["safetensors", "npz", "pt"])
def test_a_torch_load_is_not_mapped_to_the_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"m.{suffix}"
    tio.save(empty_context().register_variable("w", np.arange(4096, dtype=np.float32)), path)
    code = (
        "import sys, torch, torchlean.io as tio\n"
        f"ctx = tio.load({str(path)!r}, backend='torch')\n"
        f"data = bytearray(open({str(path)!r}, 'rb').read())\n"
        f"with open({str(path)!r}, 'r+b') as f:\n"  # rewritten in place, same inode
        "    f.write(bytes(len(data)))\n"
        "assert ctx['w'].sum().item() == sum(range(4096)), 'the context changed'\n"
        f"os_ = __import__('os'); os_.truncate({str(path)!r}, 0)\n"
        "print(float(ctx['w'].sum()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(float(sum(range(4096))))


# ----------------------------------------------------------------- read-only arrays


@pytest.mark.parametrize("suffix", ["safetensors", "npz", "pt", "json"])
def test_loaded_numpy_arrays_can_never_be_made_writeable(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"r.{suffix}"
    tio.save(empty_context().register_variable("w", np.ones(3, np.float32)), path)
    a = tio.load(path)["w"]
    chain = []
    while isinstance(a, np.ndarray):
        chain.append(a)
        a = a.base
    assert type(a) is bytes
    for array in chain:
        with pytest.raises(ValueError, match="cannot set WRITEABLE flag"):
            array.setflags(write=True)
