"""TorchLean fixtures, malformed files, atomic writes, and refusing unsafe pickles."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import torchlean.io as tio
from torchlean import empty_context
from torchlean.errors import FormatError, TorchLeanError

FIXTURES = Path(__file__).parents[1] / "fixtures" / "torchlean"
MALFORMED = Path(__file__).parent / "malformed"


@pytest.mark.parametrize(
    ("fixture", "shapes"),
    [
        (
            "mlp.json",
            {
                "layers.0.weight": (3, 2),
                "layers.0.bias": (3,),
                "layers.2.weight": (1, 3),
                "layers.2.bias": (1,),
            },
        ),
        (
            "cnn.json",
            {
                "conv1.weight": (2, 1, 3, 3),
                "conv1.bias": (2,),
                "conv2.weight": (2, 2, 3, 3),
                "conv2.bias": (2,),
                "fc.weight": (2, 8),
                "fc.bias": (2,),
            },
        ),
        (
            "transformer_encoder.json",
            {
                "Wq": (2, 2), "Wk": (2, 2), "Wv": (2, 2), "Wo": (2, 2), "W1": (2, 2), "b1": (2,),
                "W2": (2, 2), "b2": (2,), "norm1_gamma": (2,), "norm1_beta": (2,),
                "norm2_gamma": (2,), "norm2_beta": (2,),
            },
        ),
    ],
)  # fmt: skip
def test_fixtures_load(fixture: str, shapes: dict[str, tuple[int, ...]]) -> None:
    path = FIXTURES / fixture
    ctx = tio.load(path)
    state = ctx.state_dict()
    assert list(state) == list(shapes)
    assert {n: a.shape for n, a in state.items()} == shapes
    raw = json.loads(path.read_text())["params"]
    for name, value in raw.items():
        want = np.array(value, dtype=np.float64).astype(np.float32)
        assert state[name].dtype == np.float32
        assert state[name].tobytes() == want.tobytes(), name
    # expectations from the fixture's own shapes pass
    tio.load(path, expect=shapes)


def test_mlp_fixture_values() -> None:
    ctx = tio.load(FIXTURES / "mlp.json")
    assert ctx["layers.2.bias"].tolist() == [np.float32(0.9832008481025696)]
    assert ctx["layers.0.weight"][1, 0] == np.float32(-0.08230451494455338)


def test_three_layouts(tmp_path: Path) -> None:
    w = [[0.5, -1.0], [2.0, 3.0]]
    docs: list[Any] = [
        {"params": {"w": w}, "meta": {"format": "TorchLean.MLP", "dtype": "float32"}},
        {"params": {"w": w}, "meta": {"w": {"shape": [2, 2], "dtype": "torch.float32"}}},
        {"w": w},
    ]
    for i, doc in enumerate(docs):
        path = tmp_path / f"{i}.json"
        path.write_text(json.dumps(doc))
        assert tio.load(path)["w"].tolist() == w
    path = tmp_path / "f64.json"
    path.write_text(json.dumps({"params": {"w": [0.1]}, "meta": {"w": {"dtype": "torch.float64"}}}))
    assert tio.load(path)["w"].dtype == np.float64
    assert tio.load(path)["w"][0] == 0.1


def test_saved_json_is_what_tolist_and_json_dump_give(tmp_path: Path) -> None:
    import torch

    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 7)).astype(np.float32)
    a.reshape(-1)[:4] = [1e-40, -0.0, 3.4e38, 1e-7]
    ctx = empty_context().register_variable("w", a)
    path = tmp_path / "w.json"
    tio.save(ctx, path)
    doc = json.loads(path.read_text())
    assert doc["params"]["w"] == torch.from_numpy(a).tolist()
    assert doc["meta"] == {"w": {"shape": [5, 7], "dtype": "torch.float32"}}


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_json_refuses_non_finite_and_keeps_the_old_file(tmp_path: Path, bad: float) -> None:
    path = tmp_path / "w.json"
    path.write_text("previous")
    a = np.zeros((2, 3), np.float32)
    a[1, 2] = bad
    ctx = empty_context().register_variable("ok", np.ones(2, np.float32)).register_variable("w", a)
    with pytest.raises(FormatError, match=r"tensor `w` has .* at flat index 5 \(index \(1, 2\)\)"):
        tio.save(ctx, path)
    assert path.read_text() == "previous"
    assert os.listdir(tmp_path) == ["w.json"]


MALFORMED_CASES = {
    "truncated.json": "truncated JSON",
    "not_json.json": "not valid JSON",
    "empty.json": "empty file, not JSON",
    "ragged.json": r"tensor `w` has ragged nesting: \[1\] has 1 elements but \[0\] has 2",
    "ragged_depth.json": r"ragged nesting: a number at \[1\] where",
    "meta_shape.json": r"tensor `w` has shape \(2,\) but meta says \(3,\)",
    "duplicate_key.json": "duplicate key `w`",
    "non_numeric.json": r"tensor `w` has a non-numeric leaf at \[1\]: \"two\"",
    "bool_leaf.json": r"non-numeric leaf at \[1\]: true",
    "nan.json": "not valid JSON",
    "float_in_int.json": r"tensor `w` has dtype int64 but holds 1.5 at \[0\]",
    "unknown_dtype.json": "meta dtype `quaternion` is not a known dtype",
    "top_list.json": "expected a JSON object of tensors, got a list",
    "meta_unknown_name.json": "meta describes `v`, which is not in params",
    "not_zip.npz": "not a valid .npz archive",
    "not_torch.pt": r"not a valid PyTorch file \(Unsupported operand",
    "bad_header.safetensors": "not a valid safetensors file: .*header",
    "tiny.safetensors": "not a valid safetensors file: .*header too small",
    "truncated.safetensors": "not a valid safetensors file: .*not fully covered",
    "bad_layout.safetensors": r"variables\[0\] \(`w`\) refers to tensor `nope`, which is not in",
    "layout_version.safetensors": "torchlean layout version 99 is not supported",
    "layout_not_json.safetensors": "the torchlean metadata is not valid JSON",
}


def test_every_malformed_file_has_a_case() -> None:
    assert sorted(p.name for p in MALFORMED.iterdir()) == sorted(MALFORMED_CASES)


@pytest.mark.parametrize(("name", "message"), sorted(MALFORMED_CASES.items()))
def test_malformed(name: str, message: str) -> None:
    path = MALFORMED / name
    with pytest.raises(FormatError, match=message) as info:
        tio.load(path)
    assert str(info.value).startswith(str(path) + ": ")
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("fmt", ["safetensors", "json", "npz", "pt"])
def test_atomic_write_failure_keeps_the_old_file(
    tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = empty_context().register_variable("w", np.ones(4, np.float32))
    path = tmp_path / f"ctx.{fmt}"
    tio.save(ctx, path)
    before = path.read_bytes()

    real_replace = os.replace

    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    # fail in the middle: after the temporary file was written, before the rename
    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        tio.save(ctx.set_variable("w", np.zeros(4, np.float32)), path)
    monkeypatch.setattr(os, "replace", real_replace)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [path.name]


def test_atomic_write_failure_while_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchlean.io import _atomic

    path = tmp_path / "w.json"
    tio.save(empty_context().register_variable("w", np.ones(3, np.float32)), path)
    before = path.read_bytes()
    calls = []

    def broken_write(fd: int, data: Any) -> int:
        calls.append(fd)
        os.write(fd, bytes(data[:5]))  # half a file, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_atomic, "_write_all", broken_write)
    with pytest.raises(OSError, match="No space left"):
        tio.save(empty_context().register_variable("w", np.zeros(3, np.float32)), path)
    assert calls
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["w.json"]


class _Evil:
    def __init__(self, sentinel: str) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> Any:
        return (open, (self.sentinel, "w"))


def test_pickle_that_needs_more_is_refused_never_run(tmp_path: Path) -> None:
    import torch

    sentinel = tmp_path / "SENTINEL"
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2), "payload": _Evil(str(sentinel))}, path)
    assert not sentinel.exists()
    with pytest.raises(FormatError, match="refused to load: the pickle needs more") as info:
        tio.load(path)
    assert isinstance(info.value, TorchLeanError)
    assert not sentinel.exists()


def test_pt_wrappers_and_prefix(tmp_path: Path) -> None:
    import torch

    sd = {"module.fc.weight": torch.ones(2, 3), "module.fc.bias": torch.zeros(2)}
    for wrapper in ("state_dict", "model_state_dict"):
        path = tmp_path / f"{wrapper}.pth"
        torch.save({wrapper: sd, "epoch": 3}, path)
        ctx = tio.load(path, strip_prefix="module.")
        assert list(ctx.state_dict()) == ["fc.weight", "fc.bias"]
        assert ctx["fc.weight"].shape == (2, 3)
    path = tmp_path / "bare.pt"
    torch.save({"w": torch.ones(2), "epoch": 3}, path)
    with pytest.raises(FormatError, match="entry `epoch` is an int, not a tensor"):
        tio.load(path)


def test_npz_without_layout_and_pickles(tmp_path: Path) -> None:
    path = tmp_path / "plain.npz"
    np.savez(path, a=np.ones(2), b=np.arange(3))
    ctx = tio.load(path)
    assert list(ctx.state_dict()) == ["a", "b"]
    bad = tmp_path / "obj.npz"
    np.savez(bad, a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(FormatError, match=r"member `a.npy` is an object array"):
        tio.load(bad)


def test_plain_safetensors_file(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"a": np.ones(2, np.float32), "b": np.zeros((2, 2), np.float16)}, path)
    ctx = tio.load(path)
    assert sorted(ctx.state_dict()) == ["a", "b"]
    assert ctx.next_id == 2
    summary = tio.inspect(path)
    assert summary.layout is None
    assert summary.info("b").dtype == "float16"


def test_inspect_reads_header_and_heads(tmp_path: Path) -> None:
    ctx = empty_context().register_variable("w", np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    ctx = ctx.register_variable("w", np.arange(5, dtype=np.int64)).register_gradient(
        "w", np.ones(5, np.int64)
    )
    path = tmp_path / "c.safetensors"
    tio.save(ctx, path)
    s = tio.inspect(path)
    assert [(e.registry, e.name, e.shadowed, e.shape, e.dtype, e.nbytes) for e in s.entries] == [
        ("variable", "w", False, (5,), "int64", 40),
        ("variable", "w", True, (2, 3, 4), "float32", 96),
        ("gradient", "w", False, (5,), "int64", 40),
    ]
    assert s.next_id == 2
    assert s.head("w", 3).tolist() == [0, 1, 2]
    shadowed = s.entries[1]
    for n in (0, 1, 3, 4, 5, 13, 24, 100):
        assert s._read(shadowed, n).tolist() == list(range(min(n, 24))), n
    assert "(shadowed)" in str(s)
    with pytest.raises(KeyError, match="did you mean `w`"):
        s.tensor("ww")
    for fmt in ("json", "npz"):
        other = tmp_path / f"c.{fmt}"
        tio.save(ctx, other)
        assert tio.inspect(other).head("w", 2).tolist() == [0, 1]


def test_unknown_suffix() -> None:
    with pytest.raises(ValueError, match=r"cannot tell the format from the suffix \.weights"):
        tio.load("model.weights")


def test_inspect_a_multi_gigabyte_file_reads_the_header_only(tmp_path: Path) -> None:
    import struct

    # A sparse 3 GiB file: the data is never written, so reading it would be noticed
    # only as time; inspect must answer from the header and read a few bytes for head.
    shape = [1024, 1024, 768]
    size = 4 * 1024 * 1024 * 768
    header = json.dumps(
        {"big": {"dtype": "F32", "shape": shape, "data_offsets": [0, size]}}
    ).encode()
    path = tmp_path / "big.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + size)
    summary = tio.inspect(path)
    (info,) = summary.entries
    assert (info.name, info.shape, info.dtype, info.nbytes) == (
        "big",
        tuple(shape),
        "float32",
        size,
    )
    assert summary.head("big", 5).tolist() == [0.0] * 5
    assert "3.0 GiB" in str(summary)


def test_json_refuses_a_signalling_nan(tmp_path: Path) -> None:
    a = np.array([1.0, 0.0], np.float32)
    a.view(np.uint32)[1] = 0x7FA00000  # a signalling NaN: casting it raises FE_INVALID
    with pytest.raises(FormatError, match=r"tensor `w` has nan at flat index 1"):
        tio.save(empty_context().register_variable("w", a), tmp_path / "w.json")


def test_saved_files_get_ordinary_permissions(tmp_path: Path) -> None:
    """An atomic save does not leave the temporary file's private 0o600 mode behind."""
    ctx = empty_context().register_variable("w", np.zeros(2, np.float32))
    fresh = tmp_path / "fresh.safetensors"
    tio.save(ctx, fresh)
    mask = os.umask(0o022)
    os.umask(mask)
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~mask
    kept = tmp_path / "kept.npz"
    kept.write_bytes(b"")
    kept.chmod(0o640)
    tio.save(ctx, kept)
    assert kept.stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("fmt", ["safetensors", "json", "npz"])
def test_the_replaced_file_is_freed_on_a_thread_of_its_own(tmp_path: Path, fmt: str) -> None:
    """Freeing an overwritten file's blocks (tens of ms for a few hundred MB) is left to a
    thread that closes it after the rename; nothing stays open once it has."""
    from torchlean.io import _atomic

    path = tmp_path / f"w.{fmt}"
    tio.save(empty_context().register_variable("w", np.ones(3, np.float32)), path)
    for thread in list(_atomic.RELEASING):
        thread.join()
    _atomic.RELEASING.clear()
    fds = set(os.listdir("/proc/self/fd"))
    with open(path, "rb") as reader:  # an earlier reader still reads the old file
        old = reader.read()
        tio.save(empty_context().register_variable("w", np.zeros(3, np.float32)), path)
        assert _atomic.RELEASING  # the old file was held across the rename
        for thread in list(_atomic.RELEASING):
            thread.join()
        reader.seek(0)
        assert reader.read() == old
    assert set(os.listdir("/proc/self/fd")) == fds
    assert np.asarray(tio.load(path)["w"]).tolist() == [0.0, 0.0, 0.0]
    assert os.listdir(tmp_path) == [path.name]
