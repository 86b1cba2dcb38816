"""FileSummary.matches: an entry's stored bytes against an array, streamed from a
safetensors file through one small buffer (``convert``'s check of what it wrote)."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import torchlean as tl
from torchlean import io
from torchlean.io import safetensors as st_module


def _saved(tmp_path: Path, **arrays: np.ndarray) -> tuple[Path, dict[str, np.ndarray]]:
    ctx = tl.RuntimeContext.from_state_dict(arrays)
    path = tmp_path / "m.safetensors"
    io.save(ctx, path)
    return path, arrays


@pytest.mark.parametrize("chunk", [7, 64, 4 << 20])
def test_matches_reads_every_byte_in_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr(st_module, "CHUNK", chunk)
    rng = np.random.default_rng(0)
    path, arrays = _saved(
        tmp_path,
        w=rng.standard_normal((13, 11)).astype(np.float32),
        b=np.array([np.nan, -0.0, 1.0], np.float64),
        s=np.array(3, np.int64),
        e=np.zeros((0, 4), np.float32),
        h=np.arange(5, dtype=np.float32).astype(ml_dtypes.bfloat16),
    )
    fs = io.inspect(path)
    for name, array in arrays.items():
        info = fs.info(name)
        assert fs.matches(info, array), name
        if array.dtype.kind != "V":  # numpy's own dtypes: a big-endian copy matches too
            assert fs.matches(info, array.astype(array.dtype.newbyteorder(">")))
        if array.size:
            # the first byte (a full chunk, compared by memcmp) and the last (the last
            # chunk, full or not)
            for where in (0, -1):
                changed = array.copy()
                flat = changed.reshape(-1).view(np.uint8)
                flat[where] ^= 1
                assert not fs.matches(info, changed), (name, where)
    info = fs.info("w")
    assert not fs.matches(info, arrays["w"].astype(np.float64))  # another dtype
    assert not fs.matches(info, arrays["w"].reshape(11, 13))  # another shape
    assert not fs.matches(fs.info("b"), np.array([np.nan, 0.0, 1.0]))  # -0.0 is not 0.0


def test_matches_catches_bytes_changed_on_disk(tmp_path: Path) -> None:
    w = np.arange(1000, dtype=np.float32)
    path, _ = _saved(tmp_path, w=w)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x40
    path.write_bytes(bytes(data))
    fs = io.inspect(path)
    assert not fs.matches(fs.info("w"), w)


def test_matches_of_a_truncated_file_is_a_format_error(tmp_path: Path) -> None:
    w = np.arange(1000, dtype=np.float32)
    path, _ = _saved(tmp_path, w=w)
    fs = io.inspect(path)  # the header is read; the data is cut off afterwards
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 100)
    with pytest.raises(tl.FormatError, match=r"truncated while reading `w`: the file ends at"):
        fs.matches(fs.info("w"), w)


def test_matches_without_streaming_compares_the_whole_tensor(tmp_path: Path) -> None:
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = tmp_path / "m.npz"
    io.save(tl.RuntimeContext.from_state_dict({"w": w}), path)
    fs = io.inspect(path)
    assert fs.matches(fs.info("w"), w)
    assert not fs.matches(fs.info("w"), w + 1)


def test_matches_refuses_what_is_not_an_entry(tmp_path: Path) -> None:
    path, arrays = _saved(tmp_path, w=np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="matches: info must be a TensorInfo, got str"):
        io.inspect(path).matches("w", arrays["w"])  # type: ignore[arg-type]
