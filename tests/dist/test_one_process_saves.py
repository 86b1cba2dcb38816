"""Checkpoint folders saved by one process (no process group): no warning from DCP in
the background thread, the leftovers of a save that died half-way removed, an older
folder replaced."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

import _workers

from torchlean import io
from torchlean.io.distributed import LAYOUT_NAME, save_async


def _same_as_plain(path: Path) -> None:
    got = io.load(path, backend="torch")
    want = _workers.plain_context()
    assert [n for n, _ in got.var_registry] == [n for n, _ in want.var_registry]
    for (name, a), (_, b) in zip(got.var_registry, want.var_registry, strict=True):
        assert torch.equal(_workers.bits(a.t), _workers.bits(b.t)), name


def test_save_async_in_one_process_does_not_warn(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as the suite; the thread sees the same filters
        handle = save_async(_workers.plain_context(), tmp_path / "a")
        handle.wait(timeout=60)
        io.save(_workers.plain_context(), tmp_path / "b", distributed=True)
    assert handle.done()
    for name in ("a", "b"):
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
        _same_as_plain(tmp_path / name)


def test_leftovers_of_a_dead_save_are_removed(tmp_path: Path) -> None:
    partial = tmp_path / "c.partial"
    (partial / "junk").mkdir(parents=True)
    (partial / "shard-00007-model-00001-of-00001.safetensors").write_bytes(b"not a shard")
    io.save(_workers.plain_context(), tmp_path / "c", distributed=True)
    assert not partial.exists()
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "shard-00001-model-00001-of-00001.safetensors",
        LAYOUT_NAME,
    ]
    _same_as_plain(tmp_path / "c")
    handle = save_async(
        _workers.plain_context().register_variable("z", torch.ones(2)), tmp_path / "c"
    )
    handle.wait(timeout=60)
    assert io.load(tmp_path / "c", backend="torch").variable_entry("z") is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_whole_rows_are_read_straight_into_the_targets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A load reads each shard's rows from the file into the target (one read per
    request) where the bytes are contiguous; a 0-d tensor goes through DCP's own reader
    and an empty one reads nothing; every value comes back bitwise, in every dtype."""
    from torchlean.io import distributed
    from torchlean.io.safetensors import _File
    from torchlean.runtime import RuntimeContext

    gen = torch.Generator().manual_seed(0)
    values = {
        "w": torch.randn(9, 7, generator=gen),
        "h": torch.randn(5, 3, generator=gen).to(torch.bfloat16),
        "i": torch.arange(12, dtype=torch.int64).reshape(3, 2, 2),
        "s": torch.tensor(2.5, dtype=torch.float64),
        "e": torch.zeros(0, 3),
        "n": torch.tensor([float("nan"), -0.0, 1.0]),
    }
    ctx = RuntimeContext.empty().with_variables(list(values.items()))
    io.save(ctx, tmp_path / "c", distributed=True)
    reads: list[int] = []
    read_into = _File.read_into

    def counted(self: _File, offset: int, view: memoryview) -> int:
        reads.append(len(view))
        return read_into(self, offset, view)

    monkeypatch.setattr(_File, "read_into", counted)
    # a process alone reads through DCP's own path (its copy uses every core)
    alone = io.load(tmp_path / "c", backend="torch")
    assert reads == []
    # beside other ranks (as in a process group of several), the direct reads
    monkeypatch.setattr(distributed, "_shared_machine", lambda: True)
    shared = io.load(tmp_path / "c", backend="torch")
    for got in (alone, shared):
        for name, want in values.items():
            t = got.variable_entry(name).t
            assert t.dtype == want.dtype and t.shape == want.shape, name
            assert torch.equal(_workers.bits(t), _workers.bits(want)), name
    # w, h, i, n straight from the file (in one read each); s (0-d) by DCP; e: no bytes
    assert sorted(reads) == sorted([9 * 7 * 4, 5 * 3 * 2, 12 * 8, 3 * 4])
