"""The table of formats: a new format is one module and one ``register_format`` call.

A toy text format, written here as a format module would be, is registered and
round-trips a context through ``io.save``, ``io.load`` (with ``expect=`` and
``strip_prefix=``, which the dispatcher provides for every format) and ``io.inspect``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import torchlean.io as tio
from torchlean import RuntimeContext, empty_context
from torchlean.errors import ExpectationError
from torchlean.io import _format
from torchlean.io._atomic import atomic_write_bytes
from torchlean.io._common import build_context, to_numpy

# ---------------------------------------------------------------- the toy format module
# One line per variable (the latest entry of each name, first registered first):
# ``name dims... : values...`` (float64).


def save_toy(ctx: RuntimeContext[Any], path: str | os.PathLike[str]) -> None:
    lines = []
    for name, at in ctx.latest_variables():
        a = to_numpy(at).astype(np.float64)
        dims = " ".join(str(d) for d in at.dims)
        values = " ".join(repr(float(x)) for x in a.reshape(-1))
        lines.append(f"{name} {dims} : {values}".replace("  ", " "))
    atomic_write_bytes(path, "\n".join(lines).encode())


def load_toy(path: str | os.PathLike[str], *, backend: str = "numpy") -> RuntimeContext[Any]:
    pairs = []
    for line in Path(path).read_text().splitlines():
        head, _, values = line.partition(" : ")
        name, *dims = head.split()
        array = np.array([float(x) for x in values.split()], np.float64)
        pairs.append((name, array.reshape(tuple(int(d) for d in dims))))
    return build_context(pairs[::-1], [], next_id=len(pairs), pin=None, backend=backend, path=path)


TOY = tio.Format(name="toy", suffixes=(".toy",), save=save_toy, load=load_toy)

# ---------------------------------------------------------------- the tests


@pytest.fixture()
def toy() -> Iterator[None]:
    """The toy format registered for one test; the table as it was afterwards."""
    before = dict(_format._TABLE)
    tio.register_format(TOY)
    yield
    _format._TABLE.clear()
    _format._TABLE.update(before)


def _ctx() -> RuntimeContext[Any]:
    ctx = empty_context().register_variable("module.w", np.arange(6.0).reshape(2, 3))
    return ctx.register_variable("module.b", np.array([0.5, -1.0]))


def test_a_registered_format_round_trips(toy: None, tmp_path: Path) -> None:
    path = tmp_path / "c.toy"
    tio.save(_ctx(), path)
    assert tio.format_of(path) == "toy"
    back = tio.load(path)
    assert list(back.state_dict()) == ["module.w", "module.b"]
    assert back["module.w"].tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    back = tio.load(path, strip_prefix="module.", expect={"w": (2, 3), "b": (2,)})
    assert list(back.state_dict()) == ["w", "b"]
    with pytest.raises(ExpectationError, match=r"mismatched `b`: expected shape \(3,\)"):
        tio.load(path, strip_prefix="module.", expect={"w": (2, 3), "b": (3,)})
    summary = tio.inspect(path)
    assert summary.format == "toy" and summary.next_id is None and summary.layout is None
    assert [(e.name, e.shape, e.dtype) for e in summary.entries] == [
        ("module.b", (2,), "float64"),
        ("module.w", (2, 3), "float64"),
    ]
    assert summary.head("module.w", 4).tolist() == [0.0, 1.0, 2.0, 3.0]
    assert tio.load(path, format="toy", backend="torch")["module.b"].tolist() == [0.5, -1.0]


def test_the_table_lists_registered_formats(toy: None, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"format must be one of safetensors, json, torch, npz,"):
        tio.format_of("x.npz", format="hdf5")
    with pytest.raises(
        ValueError,
        match=r"\.safetensors\.index\.json, \.dcp, \.orbax, \.toy or pass format= \(.*, toy\)",
    ):
        tio.save(_ctx(), tmp_path / "x.txt")
    tio.register_format(TOY)  # the very same record again: nothing changes


def test_without_registration_the_suffix_is_unknown(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cannot tell the format from the suffix \.toy"):
        tio.save(_ctx(), tmp_path / "c.toy")
