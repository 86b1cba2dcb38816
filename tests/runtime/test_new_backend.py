"""The recipe of docs/architecture.md, tried once: a toy array library in one module's
worth of code plus one :func:`register_library` call becomes a first-class value of a
context (storing, shape-checked lookups, views, checks, saving)."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import torchlean.io as tio
from torchlean import empty_context
from torchlean.errors import InPlaceModificationError
from torchlean.runtime import backends
from torchlean.runtime.backends import Backend, backend_named, backend_of, register_library


class ToyArray:
    """A minimal array library: a numpy buffer, a shape, a dtype and a write counter."""

    def __init__(self, data: Any) -> None:
        self._data = np.array(data, dtype=np.float32)
        self.version = 0

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._data.shape)

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._data.dtype

    def fill_(self, value: float) -> None:
        self._data[...] = value
        self.version += 1


class ToyBackend(Backend):
    name = "toy"
    versioned = True

    def freeze(self, x: Any) -> Any:
        return x  # stored without a copy, watched by its write counter

    def version(self, x: Any) -> int | None:
        return int(x.version)

    def check_intact(self, x: Any, version: int | None, what: str) -> None:
        if x.version != version:
            raise InPlaceModificationError(f"{what} was written after it was stored")

    def to_numpy(self, x: Any) -> np.ndarray[Any, Any]:
        return np.array(x._data)

    def from_numpy(self, array: np.ndarray[Any, Any], what: str) -> Any:
        return ToyArray(array)

    def add(self, a: Any, b: Any) -> Any:
        return ToyArray(a._data + b._data)


@pytest.fixture()
def toy() -> Iterator[types.ModuleType]:
    module = types.ModuleType("toyarrays")
    module.ToyArray = ToyArray  # type: ignore[attr-defined]
    sys.modules["toyarrays"] = module
    register_library(
        "toy",
        module="toyarrays",
        recognise=lambda x, mod: isinstance(x, mod.ToyArray),
        load=ToyBackend,
    )
    try:
        yield module
    finally:
        del sys.modules["toyarrays"]
        backends._LIBRARIES.pop("toy", None)
        backends._LOADED.pop("toy", None)
        backends.BY_TYPE.pop(ToyArray, None)


def test_a_registered_library_is_a_first_class_value(toy: types.ModuleType, tmp_path: Path) -> None:
    w = ToyArray([[1.0, 2.0], [3.0, 4.0]])
    ctx = empty_context().register_variable("w", w).register_gradient("w", ToyArray([[1, 1]] * 2))
    assert backend_of(w) is backend_named("toy")
    assert ctx.get_variable("w", (2, 2)) is w
    assert ctx.get_variable("w", (4,)) is None
    ((_, at),) = ctx.latest_variables()
    assert (at.backend, at.dtype, at.device) == ("toy", "float32", "cpu")
    assert ctx.check().problems == ()
    summed = ctx.accumulate_gradient("w", ToyArray([[1, 1]] * 2))
    assert summed.gradient("w")._data.tolist() == [[2.0, 2.0], [2.0, 2.0]]
    assert "w: [[1.000000, 2.000000], [3.000000, 4.000000]]" in ctx.context_to_string()
    tio.save(ctx, tmp_path / "toy.safetensors")
    back = tio.load(tmp_path / "toy.safetensors", backend="toy")
    assert isinstance(back["w"], ToyArray)
    assert back["w"]._data.tolist() == w._data.tolist()
    w.fill_(0.0)
    with pytest.raises(InPlaceModificationError, match="variable `w` was written"):
        ctx.variable("w")
