"""Round trips through every format and backend, exact to the bit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import torchlean.io as tio
from torchlean import RuntimeContext, empty_context
from torchlean.io._common import to_numpy

FULL = ["safetensors", "npz"]  # formats that keep the whole context
VARIABLES_ONLY = ["json", "pt"]


def entries(registry: Any) -> list[tuple[str, tuple[int, ...], str, bytes]]:
    return [(n, at.dims, at.dtype, to_numpy(at).tobytes()) for n, at in registry]


def same_context(a: RuntimeContext[Any], b: RuntimeContext[Any]) -> None:
    assert entries(a.var_registry) == entries(b.var_registry)
    assert entries(a.gradients) == entries(b.gradients)
    assert a.next_id == b.next_id
    assert a.dtype == b.dtype


def sample() -> RuntimeContext[Any]:
    ctx = empty_context()
    ctx = ctx.register_variable("fc.weight", np.arange(6, dtype=np.float32).reshape(2, 3))
    ctx = ctx.register_variable("fc.bias", np.array([0.1, -2.5], dtype=np.float32))
    ctx = ctx.register_variable("fc.weight", np.full((4,), 0.3, dtype=ml_dtypes.bfloat16))
    ctx = ctx.register_variable("scale", np.array(1.5, dtype=np.float16))
    ctx = ctx.register_variable("steps", np.array([3, 4], dtype=np.int64))
    ctx = ctx.register_variable("empty", np.zeros((0, 3), dtype=np.float32))
    ctx = ctx.register_gradient("fc.bias", np.array([1.0, 2.0], dtype=np.float32))
    ctx = ctx.register_gradient("fc.bias", np.array([3.0, 4.0], dtype=np.float32))
    return ctx


@pytest.mark.parametrize("fmt", FULL)
def test_whole_context_round_trips(tmp_path: Path, fmt: str) -> None:
    ctx = sample()
    path = tmp_path / f"ctx.{fmt}"
    tio.save(ctx, path)
    same_context(tio.load(path), ctx)


@pytest.mark.parametrize("fmt", FULL)
def test_pinned_dtype_round_trips(tmp_path: Path, fmt: str) -> None:
    ctx = RuntimeContext.empty(dtype="float32").register_variable("w", np.ones(3, np.float32))
    path = tmp_path / f"ctx.{fmt}"
    tio.save(ctx, path)
    back = tio.load(path)
    assert back.dtype == "float32"
    with pytest.raises(TypeError, match="float32 only"):
        back.register_variable("x", np.ones(2, np.float64))


@pytest.mark.parametrize("fmt", VARIABLES_ONLY)
def test_variables_round_trip(tmp_path: Path, fmt: str) -> None:
    ctx = sample()
    path = tmp_path / f"ctx.{fmt}"
    tio.save(ctx, path)
    back = tio.load(path)
    want = [(n, at.dims, at.dtype, to_numpy(at).tobytes()) for n, at in ctx.latest_variables()]
    got = [(n, at.dims, at.dtype, to_numpy(at).tobytes()) for n, at in back.latest_variables()]
    assert got == want
    assert back.next_id == len(want)


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax"])
@pytest.mark.parametrize("fmt", ["safetensors", "npz", "json", "pt"])
def test_backends(tmp_path: Path, fmt: str, backend: str) -> None:
    ctx = empty_context().register_variable("w", np.arange(4, dtype=np.float32))
    ctx = ctx.register_variable("h", np.full((2,), 0.5, dtype=ml_dtypes.bfloat16))
    path = tmp_path / f"ctx.{fmt}"
    tio.save(ctx, path)
    back = tio.load(path, backend=backend)
    for name, at in back.var_registry:
        assert at.backend == backend, name
    same_context(back, ctx) if fmt in FULL else None
    assert to_numpy(back.variable_entry("w")).tolist() == [0.0, 1.0, 2.0, 3.0]  # type: ignore[arg-type]


def test_saving_torch_and_jax_tensors(tmp_path: Path) -> None:
    import jax.numpy as jnp
    import torch

    ctx = empty_context().register_variable("t", torch.arange(3, dtype=torch.bfloat16))
    ctx = ctx.register_variable("j", jnp.ones((2, 2), dtype=jnp.float32))
    path = tmp_path / "mixed.safetensors"
    tio.save(ctx, path)
    back = tio.load(path, backend="torch")
    assert back["t"].dtype == torch.bfloat16
    assert back["t"].tolist() == [0.0, 1.0, 2.0]
    assert back["j"].tolist() == [[1.0, 1.0], [1.0, 1.0]]


def test_other_safetensors_tools_see_a_state_dict(tmp_path: Path) -> None:
    import safetensors.torch

    path = tmp_path / "ctx.safetensors"
    tio.save(sample(), path)
    sd = safetensors.torch.load_file(path)
    visible = {k for k in sd if not k.startswith("__torchlean__/")}
    assert visible == {"fc.weight", "fc.bias", "scale", "steps", "empty"}
    assert tuple(sd["fc.weight"].shape) == (4,)  # the most recent entry


def test_shared_tensor_is_stored_once(tmp_path: Path) -> None:
    ctx = empty_context().register_variable("w", np.ones(1000, np.float32))
    ctx = ctx.register_variable("w", np.ones(1000, np.float32)).set_variable(
        "w", np.zeros(1000, np.float32)
    )
    path = tmp_path / "ctx.safetensors"
    tio.save(ctx, path)
    assert path.stat().st_size < 4000 + 1000
    same_context(tio.load(path), ctx)


names = st.sampled_from(
    ["a", "b", "fc.weight", "module.x", "__torchlean__/v/0", "__metadata__", "é"]
)
dtypes = st.sampled_from(["float32", "float64", "float16", "bfloat16", "int32", "int64", "bool"])
shapes = st.lists(st.integers(0, 3), max_size=3).map(tuple)


@st.composite
def arrays(draw: Any) -> np.ndarray[Any, Any]:
    shape = draw(shapes)
    dtype = draw(dtypes)
    n = int(np.prod(shape))
    bits = draw(st.binary(min_size=n * 8, max_size=n * 8))
    raw = np.frombuffer(bits, dtype=np.uint8)[: n * np.dtype(tio_dtype(dtype)).itemsize]
    if dtype == "bool":
        return (raw % 2).astype(bool).reshape(shape)
    return raw.view(tio_dtype(dtype)).reshape(shape).copy()


def tio_dtype(name: str) -> Any:
    return ml_dtypes.bfloat16 if name == "bfloat16" else np.dtype(name)


@st.composite
def contexts(draw: Any) -> RuntimeContext[Any]:
    ctx = empty_context()
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["reg", "reg", "grad", "set"]))
        name = draw(names)
        value = draw(arrays())
        if op == "reg":
            ctx = ctx.register_variable(name, value)
        elif op == "grad":
            ctx = ctx.register_gradient(name, value)
        else:
            ctx = ctx.set_variable(name, value)
    return ctx


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ctx=contexts(), fmt=st.sampled_from(FULL))
def test_property_whole_context(tmp_path: Path, ctx: RuntimeContext[Any], fmt: str) -> None:
    path = tmp_path / f"p.{fmt}"
    tio.save(ctx, path)
    same_context(tio.load(path), ctx)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ctx=contexts())
def test_property_json_values_exact(tmp_path: Path, ctx: RuntimeContext[Any]) -> None:
    path = tmp_path / "p.json"
    with np.errstate(invalid="ignore"):
        finite = all(
            to_numpy(at).dtype.kind in "biu" or np.isfinite(to_numpy(at).astype(np.float64)).all()
            for _, at in ctx.latest_variables()
        )
    if not finite:
        with pytest.raises(tio_error(), match="finite numbers only"):
            tio.save(ctx, path)
        return
    tio.save(ctx, path)
    back = tio.load(path)
    want = [(n, at.dims, at.dtype, to_numpy(at).tobytes()) for n, at in ctx.latest_variables()]
    got = [(n, at.dims, at.dtype, to_numpy(at).tobytes()) for n, at in back.latest_variables()]
    assert got == want


def tio_error() -> type[Exception]:
    from torchlean.errors import FormatError

    return FormatError


@pytest.mark.parametrize("fmt", ["safetensors", "npz", "json", "pt"])
def test_loaded_numpy_arrays_cannot_be_written(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"c.{fmt}"
    tio.save(empty_context().register_variable("w", np.ones((2, 2), np.float32)), path)
    w = tio.load(path)["w"]
    with pytest.raises(ValueError, match="read-only"):
        w[0, 0] = 5.0
    with pytest.raises(ValueError, match="cannot set WRITEABLE flag"):
        w.setflags(write=True)


def test_torch_tensors_from_safetensors_are_watched(tmp_path: Path) -> None:
    from torchlean.errors import InPlaceModificationError

    path = tmp_path / "c.safetensors"
    tio.save(empty_context().register_variable("w", np.ones(3, np.float32)), path)
    ctx = tio.load(path, backend="torch")
    ctx["w"].add_(1.0)
    with pytest.raises(InPlaceModificationError):
        ctx.variable("w")
    assert tio.load(path)["w"].tolist() == [1.0, 1.0, 1.0]  # the file never changes


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ctx=contexts(), fmt=st.sampled_from(FULL))
def test_property_whole_context_as_torch(
    tmp_path: Path, ctx: RuntimeContext[Any], fmt: str
) -> None:
    path = tmp_path / f"p.{fmt}"
    tio.save(ctx, path)
    back = tio.load(path, backend="torch")
    assert all(at.backend == "torch" for _, at in back.var_registry + back.gradients)
    same_context(back, ctx)
    # and back again: a context of torch tensors saves to the same bits
    tio.save(back, path)
    same_context(tio.load(path), ctx)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ctx=contexts())
def test_property_pt_variables(tmp_path: Path, ctx: RuntimeContext[Any]) -> None:
    path = tmp_path / "p.pt"
    tio.save(ctx, path)
    back = tio.load(path)
    want = [(n, at.dims, at.dtype, to_numpy(at).tobytes()) for n, at in ctx.latest_variables()]
    got = [(n, at.dims, at.dtype, to_numpy(at).tobytes()) for n, at in back.latest_variables()]
    assert got == want
