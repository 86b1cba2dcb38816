"""Every public function rejects bad arguments with a clear error (one table).

Each row: the public name it covers, the call (given a folder ``d`` with a saved
context ``d/w.safetensors``), the error type, and the exact message (``{d}`` stands for
the folder). :func:`test_every_public_callable_has_a_row` walks the ``__all__`` of every
public module and fails for a public function, class or method that has no row and is
not in :data:`NO_ROW` (with the reason it needs none).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import torchlean
import torchlean.autograd as ag
import torchlean.cli as cli
import torchlean.demo as demo
import torchlean.io as tio
import torchlean.io.expect as ex
import torchlean.io.lean_json as lj
import torchlean.optim as opt
import torchlean.runtime as rt
import torchlean.runtime.backends as bk
import torchlean.runtime.check as ck
import torchlean.runtime.dtypes as dt
import torchlean.runtime.pytree as pt
import torchlean.spec as sp
import torchlean.train as tr
import torchlean.widgets as w
from torchlean import AnyTensor, RuntimeContext, Shape, empty_context
from torchlean.errors import (
    DTypeMismatchError,
    ExpectationError,
    InvalidShapeError,
    ShapeMismatchError,
    TorchLeanError,
    UnknownNameError,
)
from torchlean.io import distributed, npz, orbax, safetensors, sharded, torchlean_json
from torchlean.io import torch as io_torch

F32 = np.ones(3, np.float32)
CTX = empty_context().register_variable("w", F32)
GRAD = CTX.register_gradient("w", F32)
PINNED = empty_context(dtype="float32").register_variable("w", F32)
ARRAY = "expected an array (numpy.ndarray, torch.Tensor or jax.Array), got"
SUFFIXES = (
    ".safetensors, .json, .pt, .pth, .bin, .ckpt, .pth.tar, .npz, .safetensors.index.json,"
    " .dcp, .orbax or pass format= (safetensors, json, torch, npz, sharded, dcp, orbax)"
)
EXPECT = "must be a mapping of name to shape, a RuntimeContext or a torch nn.Module, got"


def _fit(**changes: Any) -> Any:
    kwargs: dict[str, Any] = {
        "ctx": CTX,
        "loss_fn": lambda c, b: 0.0,
        "optimizer": opt.sgd(),
        "data": [1],
        "steps": 1,
        "progress": False,
    }
    kwargs.update(changes)
    return tr.fit(**kwargs)


def _linear() -> Any:
    import torch

    return torch.nn.Linear(2, 2)


def _step(ctx: Any, state: Any = None, **kwargs: Any) -> Any:
    sgd = opt.sgd()
    return sgd.step(ctx, sgd.init(CTX) if state is None else state, **kwargs)


Row = tuple[str, Callable[[Path], Any], type[BaseException], str]
ROWS: list[Row] = [
    # -- runtime: batch edits, entries, backends, dtypes
    (
        "RuntimeContext.with_variables",
        lambda d: CTX.with_variables(5),  # type: ignore[arg-type]
        TypeError,
        "with_variables expects a mapping or an iterable of (name, array) pairs, got int",
    ),
    (
        "RuntimeContext.with_variables",
        lambda d: CTX.with_variables([("w",)]),  # type: ignore[list-item]
        TypeError,
        "variable entry 0 must be a (name, array) pair, got tuple ('w',)",
    ),
    (
        "RuntimeContext.with_variables",
        lambda d: PINNED.with_variables([("w", np.ones(3))]),
        DTypeMismatchError,
        "variable `w` has dtype float64 but this context holds float32 only;"
        " convert it first (no silent casts)",
    ),
    (
        "RuntimeContext.with_variables",
        lambda d: CTX.with_variables({"w": F32}, adopt=1),  # type: ignore[arg-type]
        TypeError,
        "with_variables: adopt must be a bool, got 1",
    ),
    (
        "RuntimeContext.with_gradients",
        lambda d: CTX.with_gradients([(1, F32)]),  # type: ignore[list-item]
        TypeError,
        "gradient name must be a str, got int 1",
    ),
    (
        "RuntimeContext.from_registries",
        lambda d: RuntimeContext.from_registries([("w", 1)]),
        TypeError,
        f"variable `w`: {ARRAY} builtins.int 1",
    ),
    (
        "RuntimeContext.from_registries",
        lambda d: RuntimeContext.from_registries([], next_id=-1),
        TypeError,
        "from_registries: next_id must be an int >= 0, got -1",
    ),
    (
        "RuntimeContext.variable_entry",
        lambda d: CTX.variable_entry(3),  # type: ignore[arg-type]
        TypeError,
        "variable name must be a str, got int 3",
    ),
    (
        "RuntimeContext.gradient_entry",
        lambda d: CTX.gradient_entry(None),  # type: ignore[arg-type]
        TypeError,
        "gradient name must be a str, got NoneType None",
    ),
    (
        "torchlean.runtime.backends.register_library",
        lambda d: bk.register_library(
            "", module="x", recognise=lambda x, m: False, load=bk.Backend
        ),
        TypeError,
        "register_library: name must be a non-empty str, got ''",
    ),
    (
        "torchlean.runtime.backends.backend_named",
        lambda d: bk.backend_named("cupy"),
        ValueError,
        "backend must be one of numpy, dtensor, torch, jax, got 'cupy'",
    ),
    (
        "torchlean.runtime.dtypes.dtype_name",
        lambda d: dt.dtype_name("float99"),
        TypeError,
        "not a dtype: 'float99'",
    ),
    (
        "torchlean.runtime.dtypes.numpy_dtype",
        lambda d: dt.numpy_dtype("nope"),
        TypeError,
        "not a dtype: 'nope'",
    ),
    (
        "torchlean.runtime.dtypes.itemsize",
        lambda d: dt.itemsize("nope"),
        TypeError,
        "not a dtype: 'nope'",
    ),
    # -- spec
    (
        "torchlean.Shape",
        lambda d: Shape((2, -1)),
        InvalidShapeError,
        "shape (2, -1) has a negative dimension -1 at index 1",
    ),
    (
        "torchlean.Shape",
        lambda d: Shape((2, 1.5)),
        InvalidShapeError,
        "shape (2, 1.5) has a non-integer dimension 1.5 at index 1",
    ),
    (
        "torchlean.Shape",
        lambda d: Shape((True,)),
        InvalidShapeError,
        "shape (True,) has a non-integer dimension True at index 0",
    ),
    (
        "torchlean.Shape",
        lambda d: Shape("ab"),
        TypeError,
        "expected a shape (a Shape or a sequence of ints), got str 'ab'",
    ),
    (
        "Shape.dim",
        lambda d: Shape.dim(-1, ()),
        InvalidShapeError,
        "shape dim has a negative dimension -1 at index 0",
    ),
    (
        "Shape.dim",
        lambda d: Shape.dim(2, "x"),
        TypeError,
        "expected a shape (a Shape or a sequence of ints), got str 'x'",
    ),
    (
        "Shape.of_list",
        lambda d: Shape.of_list([1, "a"]),
        InvalidShapeError,
        "shape (1, 'a') has a non-integer dimension 'a' at index 1",
    ),
    (
        "torchlean.spec.as_dims",
        lambda d: sp.as_dims(None),
        TypeError,
        "expected a shape (a Shape or a sequence of ints), got NoneType None",
    ),
    # -- AnyTensor and contexts
    (
        "torchlean.AnyTensor",
        lambda d: AnyTensor((2,), F32),
        ShapeMismatchError,
        "AnyTensor: the tensor has shape (3,) but the shape given is (2,)",
    ),
    (
        "torchlean.AnyTensor",
        lambda d: AnyTensor((3,), [1, 2, 3]),
        TypeError,
        f"{ARRAY} builtins.list [1, 2, 3]",
    ),
    (
        "torchlean.AnyTensor",
        lambda d: AnyTensor((-3,), F32),
        InvalidShapeError,
        "shape (-3,) has a negative dimension -3 at index 0",
    ),
    (
        "torchlean.empty_context",
        lambda d: empty_context(dtype="float99"),
        TypeError,
        "dtype must be a numpy, torch or jax dtype or a dtype name, got 'float99'",
    ),
    (
        "torchlean.RuntimeContext",
        lambda d: RuntimeContext(dtype=5),
        TypeError,
        "dtype must be a numpy, torch or jax dtype or a dtype name, got 5",
    ),
    (
        "RuntimeContext.empty",
        lambda d: RuntimeContext.empty(dtype="x"),
        TypeError,
        "dtype must be a numpy, torch or jax dtype or a dtype name, got 'x'",
    ),
    (
        "RuntimeContext.register_variable",
        lambda d: CTX.register_variable(3, F32),
        TypeError,
        "variable name must be a str, got int 3",
    ),
    (
        "RuntimeContext.register_variable",
        lambda d: CTX.register_variable("x", [1.0]),
        TypeError,
        f"variable `x`: {ARRAY} builtins.list [1.0]",
    ),
    (
        "RuntimeContext.register_variable",
        lambda d: PINNED.register_variable("x", np.ones(3, np.float64)),
        DTypeMismatchError,
        "variable `x` has dtype float64 but this context holds float32 only; convert it first"
        " (no silent casts)",
    ),
    (
        "torchlean.runtime.register_variable",
        lambda d: rt.register_variable(5, "w", F32),
        TypeError,
        "register_variable: ctx must be a RuntimeContext, got int 5",
    ),
    (
        "RuntimeContext.register_variables",
        lambda d: CTX.register_variables([("a",)]),
        TypeError,
        "register_variables: item 0 must be a (name, array) pair, got tuple ('a',)",
    ),
    (
        "RuntimeContext.register_variables",
        lambda d: CTX.register_variables(5),
        TypeError,
        "register_variables expects a mapping or an iterable of (name, array) pairs, got int",
    ),
    (
        "RuntimeContext.register_variables",
        lambda d: CTX.register_variables({1: F32}),
        TypeError,
        "variable name must be a str, got int 1",
    ),
    (
        "RuntimeContext.get_variable",
        lambda d: CTX.get_variable(1, (3,)),
        TypeError,
        "variable name must be a str, got int 1",
    ),
    (
        "RuntimeContext.get_variable",
        lambda d: CTX.get_variable("w", (-3,)),
        InvalidShapeError,
        "shape (-3,) has a negative dimension -3 at index 0",
    ),
    (
        "torchlean.runtime.get_variable",
        lambda d: rt.get_variable(CTX, "w", "3"),
        TypeError,
        "expected a shape (a Shape or a sequence of ints), got str '3'",
    ),
    (
        "RuntimeContext.set_variable",
        lambda d: CTX.set_variable("w", 5),
        TypeError,
        f"variable `w`: {ARRAY} builtins.int 5",
    ),
    (
        "RuntimeContext.set_variable",
        lambda d: PINNED.set_variable("w", np.ones(3, np.float16)),
        DTypeMismatchError,
        "variable `w` has dtype float16 but this context holds float32 only; convert it first"
        " (no silent casts)",
    ),
    (
        "torchlean.runtime.set_variable",
        lambda d: rt.set_variable(None, "w", F32),
        TypeError,
        "set_variable: ctx must be a RuntimeContext, got NoneType None",
    ),
    (
        "RuntimeContext.has_variable",
        lambda d: CTX.has_variable(1),
        TypeError,
        "variable name must be a str, got int 1",
    ),
    (
        "torchlean.runtime.has_variable",
        lambda d: rt.has_variable("w", "w"),
        TypeError,
        "has_variable: ctx must be a RuntimeContext, got str 'w'",
    ),
    (
        "RuntimeContext.register_gradient",
        lambda d: CTX.register_gradient(1, F32),
        TypeError,
        "gradient name must be a str, got int 1",
    ),
    (
        "RuntimeContext.register_gradient",
        lambda d: PINNED.register_gradient("w", np.ones(3, np.int32)),
        DTypeMismatchError,
        "gradient `w` has dtype int32 but this context holds float32 only; convert it first"
        " (no silent casts)",
    ),
    (
        "torchlean.runtime.register_gradient",
        lambda d: rt.register_gradient(CTX, "w", [1]),
        TypeError,
        f"gradient `w`: {ARRAY} builtins.list [1]",
    ),
    (
        "RuntimeContext.get_gradient",
        lambda d: GRAD.get_gradient("w", (1, -1)),
        InvalidShapeError,
        "shape (1, -1) has a negative dimension -1 at index 1",
    ),
    (
        "torchlean.runtime.get_gradient",
        lambda d: rt.get_gradient(GRAD, 7, (3,)),
        TypeError,
        "gradient name must be a str, got int 7",
    ),
    (
        "RuntimeContext.set_gradient",
        lambda d: GRAD.set_gradient("w", None),
        TypeError,
        f"gradient `w`: {ARRAY} builtins.NoneType None",
    ),
    (
        "torchlean.runtime.set_gradient",
        lambda d: rt.set_gradient([], "w", F32),
        TypeError,
        "set_gradient: ctx must be a RuntimeContext, got list []",
    ),
    (
        "RuntimeContext.has_gradient",
        lambda d: GRAD.has_gradient(None),
        TypeError,
        "gradient name must be a str, got NoneType None",
    ),
    (
        "RuntimeContext.accumulate_gradient",
        lambda d: GRAD.accumulate_gradient("w", 1.0),
        TypeError,
        f"gradient `w`: {ARRAY} builtins.float 1.0",
    ),
    (
        "RuntimeContext.accumulate_gradient",
        lambda d: GRAD.accumulate_gradient("w", np.ones(4, np.float32)),
        ShapeMismatchError,
        "cannot accumulate into gradient `w`: it has shape (3,) but the added gradient has"
        " shape (4,)",
    ),
    (
        "RuntimeContext.variable",
        lambda d: CTX.variable("w", (-1,)),
        InvalidShapeError,
        "shape (-1,) has a negative dimension -1 at index 0",
    ),
    (
        "RuntimeContext.variable",
        lambda d: CTX.variable(0),
        TypeError,
        "variable name must be a str, got int 0",
    ),
    (
        "RuntimeContext.variable",
        lambda d: CTX.variable("v"),
        UnknownNameError,
        "no variable `v` (the context has 1 variable name)",
    ),
    (
        "RuntimeContext.gradient",
        lambda d: GRAD.gradient(0),
        TypeError,
        "gradient name must be a str, got int 0",
    ),
    (
        "RuntimeContext.state_dict",
        lambda d: CTX.state_dict(gradients="yes"),
        TypeError,
        "state_dict: gradients must be a bool, got 'yes'",
    ),
    (
        "RuntimeContext.from_state_dict",
        lambda d: RuntimeContext.from_state_dict([1]),
        TypeError,
        "from_state_dict expects a mapping of name to array, got list",
    ),
    (
        "RuntimeContext.from_module",
        lambda d: RuntimeContext.from_module(5),
        TypeError,
        "from_module expects a torch nn.Module, got int",
    ),
    (
        "RuntimeContext.load_into",
        lambda d: CTX.load_into(object()),
        TypeError,
        "load_into expects a torch nn.Module, got object",
    ),
    (
        "torchlean.runtime.clear_gradients",
        lambda d: rt.clear_gradients(5),
        TypeError,
        "clear_gradients: ctx must be a RuntimeContext, got int 5",
    ),
    (
        "torchlean.runtime.context_size",
        lambda d: rt.context_size("x"),
        TypeError,
        "context_size: ctx must be a RuntimeContext, got str 'x'",
    ),
    (
        "torchlean.runtime.context_to_string",
        lambda d: rt.context_to_string(None),
        TypeError,
        "context_to_string: ctx must be a RuntimeContext, got NoneType None",
    ),
    (
        "torchlean.runtime.gradient_count",
        lambda d: rt.gradient_count([]),
        TypeError,
        "gradient_count: ctx must be a RuntimeContext, got list []",
    ),
    (
        "torchlean.runtime.gradient_names",
        lambda d: rt.gradient_names({}),
        TypeError,
        "gradient_names: ctx must be a RuntimeContext, got dict {}",
    ),
    (
        "torchlean.runtime.variable_names",
        lambda d: rt.variable_names(3),
        TypeError,
        "variable_names: ctx must be a RuntimeContext, got int 3",
    ),
    (
        "torchlean.runtime.is_valid_context",
        lambda d: rt.is_valid_context(3),
        TypeError,
        "is_valid_context: ctx must be a RuntimeContext, got int 3",
    ),
    (
        "torchlean.runtime.check.check_context",
        lambda d: ck.check_context(3),
        TypeError,
        "check_context: ctx must be a RuntimeContext, got int 3",
    ),
    (
        "torchlean.runtime.check.nonfinite_counts",
        lambda d: ck.nonfinite_counts(F32),
        TypeError,
        "nonfinite_counts expects an AnyTensor, got ndarray",
    ),
    (
        "torchlean.runtime.check.check_pair",
        lambda d: ck.check_pair(3, None, CTX.variable_entry("w")),  # type: ignore[arg-type]
        TypeError,
        "gradient name must be a str, got int 3",
    ),
    (
        "torchlean.runtime.check.check_entries",
        lambda d: ck.check_entries({"w": F32}),  # type: ignore[arg-type]
        TypeError,
        "check_entries: variables must be a sequence of (name, EntryFacts) pairs, got dict",
    ),
    (
        "torchlean.runtime.check.check_entries",
        lambda d: ck.check_entries([], [("w", F32)]),  # type: ignore[list-item]
        TypeError,
        "check_entries: gradients must hold (name, EntryFacts) pairs,"
        " got ('w', array([1., 1., 1.], dtype=float32))",
    ),
    (
        "torchlean.runtime.check.facts_of",
        lambda d: ck.facts_of(F32, "variable `w`"),  # type: ignore[arg-type]
        TypeError,
        "facts_of expects an AnyTensor, got ndarray",
    ),
    (
        "CheckReport.for_entry",
        lambda d: CTX.check().for_entry("vars", "w"),
        ValueError,
        "registry must be 'variable' or 'gradient', got 'vars'",
    ),
    (
        "torchlean.runtime.pytree.register",
        lambda d: pt.register("tensorflow"),
        ValueError,
        "unknown pytree library 'tensorflow'; expected 'jax' or 'torch'",
    ),
    (
        "EntryKey.get",
        lambda d: pt.EntryKey("variables", 0, "w").get(5),
        TypeError,
        "EntryKey.get: parent must be a RuntimeContext, got int 5",
    ),
    # -- io
    (
        "torchlean.io.save",
        lambda d: tio.save({"w": F32}, d / "x.safetensors"),
        TypeError,
        "save expects a RuntimeContext, got dict",
    ),
    (
        "torchlean.io.save",
        lambda d: tio.save(CTX, 5),
        TypeError,
        "save: path must be a str or os.PathLike, got int 5",
    ),
    (
        "torchlean.io.save",
        lambda d: tio.save(CTX, d / "x.txt"),
        ValueError,
        f"{{d}}/x.txt: cannot tell the format from the suffix .txt; use one of {SUFFIXES}",
    ),
    (
        "torchlean.io.save",
        lambda d: tio.save(CTX, d / "x.safetensors", format="hdf5"),
        ValueError,
        "format must be one of safetensors, json, torch, npz, sharded, dcp, orbax, got 'hdf5'",
    ),
    (
        "torchlean.io.save",
        lambda d: tio.save(CTX, d, format="npz"),
        IsADirectoryError,
        "[Errno 21] is a folder; save needs a file name: '{d}'",
    ),
    (
        "torchlean.io.save",
        lambda d: tio.save(CTX, d / "no" / "x.npz"),
        FileNotFoundError,
        "[Errno 2] could not save (No such file or directory); the previous file is unchanged:"
        " '{d}/no/x.npz'",
    ),
    (
        "torchlean.io.load",
        lambda d: tio.load(None),
        TypeError,
        "load: path must be a str or os.PathLike, got NoneType None",
    ),
    (
        "torchlean.io.load",
        lambda d: tio.load(d / "missing.safetensors"),
        FileNotFoundError,
        "[Errno 2] No such file or directory: '{d}/missing.safetensors'",
    ),
    (
        "torchlean.io.load",
        lambda d: tio.load(d / "w.safetensors", backend="tf"),
        ValueError,
        "backend must be one of numpy, dtensor, torch, jax, got 'tf'",
    ),
    (
        "torchlean.io.load",
        lambda d: tio.load(d / "w.safetensors", expect=5),
        TypeError,
        f"expect {EXPECT} int",
    ),
    (
        "torchlean.io.load",
        lambda d: tio.load(d / "w.safetensors", expect={"w": (-1,)}),
        InvalidShapeError,
        "expected entry `w`: shape (-1,) has a negative dimension -1 at index 0",
    ),
    (
        "torchlean.io.load",
        lambda d: tio.load(d / "w.safetensors", expect={"w": "abc"}),
        TypeError,
        "expected entry `w` must be a shape, a (shape, dtype) pair or an array, got 'abc'",
    ),
    (
        "torchlean.io.load",
        lambda d: tio.load(d / "w.safetensors", expect={1: (3,)}),
        TypeError,
        "expect: names must be str, got int 1",
    ),
    (
        "torchlean.io.load",
        lambda d: tio.load(d / "w.safetensors", strip_prefix=3),
        TypeError,
        "load: strip_prefix must be a str, got int 3",
    ),
    (
        "torchlean.io.load",
        lambda d: tio.load(d / "w.safetensors", dtypes="yes"),
        TypeError,
        "load: dtypes must be a bool, got str 'yes'",
    ),
    (
        "torchlean.io.load",
        lambda d: tio.load(d / "w.safetensors", key=3),
        TypeError,
        "load: key must be a str, got int 3",
    ),
    (
        "torchlean.io.load",
        lambda d: tio.load(d / "w.pt", key=""),
        ValueError,
        "load: key must not be empty",
    ),
    (
        "torchlean.io.load",
        lambda d: tio.load(d / "w.pt", flatten="yes"),
        TypeError,
        "load: flatten must be a bool, got str 'yes'",
    ),
    (
        "torchlean.io.load",
        lambda d: tio.load(d / "w.safetensors", key="model"),
        ValueError,
        "load: key= and flatten= pick a nested state dict, which formats torch have;"
        " format 'safetensors' has none",
    ),
    (
        "torchlean.io.save",
        lambda d: tio.save(CTX, d / "m.safetensors", metadata=["a"]),
        TypeError,
        "save_safetensors: metadata must be a mapping of str to str, got list",
    ),
    (
        "torchlean.io.save",
        lambda d: tio.save(CTX, d / "m.safetensors", metadata={"a": 1}),
        TypeError,
        "save_safetensors: metadata must map str to str, got 'a': int",
    ),
    (
        "torchlean.io.save",
        lambda d: tio.save(CTX, d / "m.npz", metadata={"a": "b"}),
        ValueError,
        "save: metadata= is written by formats with a metadata header (safetensors); format"
        " 'npz' has none",
    ),
    (
        "torchlean.io.inspect",
        lambda d: tio.inspect(d / "w.safetensors", flatten=1),
        TypeError,
        "inspect: flatten must be a bool, got int 1",
    ),
    (
        "torchlean.io.inspect",
        lambda d: tio.inspect(d / "x.weights"),
        ValueError,
        f"{{d}}/x.weights: cannot tell the format from the suffix .weights; use one of {SUFFIXES}",
    ),
    (
        "torchlean.io.inspect",
        lambda d: tio.inspect(5),
        TypeError,
        "inspect: path must be a str or os.PathLike, got int 5",
    ),
    (
        "torchlean.io.format_of",
        lambda d: tio.format_of("x.npz", format=3),
        ValueError,
        "format must be one of safetensors, json, torch, npz, sharded, dcp, orbax, got 3",
    ),
    (
        "torchlean.io.format_of",
        lambda d: tio.format_of(3),
        TypeError,
        "format_of: path must be a str or os.PathLike, got int 3",
    ),
    (
        "torchlean.io.check_expected",
        lambda d: tio.check_expected(CTX, 5),
        TypeError,
        f"expect {EXPECT} int",
    ),
    (
        "torchlean.io.check_expected",
        lambda d: tio.check_expected(5, {"w": (3,)}),
        TypeError,
        f"weights {EXPECT} int",
    ),
    (
        "torchlean.io.check_expected",
        lambda d: tio.check_expected(CTX, {"w": ((3,), "float99")}),
        TypeError,
        "expected entry `w`: not a dtype: 'float99'",
    ),
    ("torchlean.io.compare", lambda d: tio.compare(CTX, [1]), TypeError, f"expect {EXPECT} list"),
    (
        "torchlean.io.compare",
        lambda d: tio.compare(CTX, {"w": (3,)}, suggest=1),  # type: ignore[arg-type]
        TypeError,
        "compare: suggest must be a bool, got int 1",
    ),
    (
        "torchlean.io.expect.expected_specs",
        lambda d: ex.expected_specs(3),
        TypeError,
        f"expect {EXPECT} int",
    ),
    (
        "FileSummary.info",
        lambda d: tio.inspect(d / "w.safetensors").info("wz"),
        UnknownNameError,
        "{d}/w.safetensors: no variable `wz`; did you mean `w`?",
    ),
    (
        "FileSummary.tensor",
        lambda d: tio.inspect(d / "w.safetensors").tensor(5),
        TypeError,
        "variable name must be a str, got int 5",
    ),
    (
        "FileSummary.head",
        lambda d: tio.inspect(d / "w.safetensors").head("w", n=-1),
        ValueError,
        "head: n must be >= 0, got -1",
    ),
    (
        "FileSummary.read",
        lambda d: tio.inspect(d / "w.safetensors").read("w"),  # type: ignore[arg-type]
        TypeError,
        "read: info must be a TensorInfo, got str",
    ),
    (
        "FileSummary.read",
        lambda d: (s := tio.inspect(d / "w.safetensors")).read(s.entries[0], n=-1),
        ValueError,
        "read: n must be an int >= 0 or None, got -1",
    ),
    (
        "FileSummary.blocks",
        lambda d: tio.inspect(d / "w.safetensors").blocks(None),  # type: ignore[arg-type]
        TypeError,
        "blocks: info must be a TensorInfo, got NoneType",
    ),
    (
        "FileSummary.matches",
        lambda d: tio.inspect(d / "w.safetensors").matches("w", None),  # type: ignore[arg-type]
        TypeError,
        "matches: info must be a TensorInfo, got str",
    ),
    (
        "torchlean.io.Format",
        lambda d: tio.Format("toy", (".toy",), save=print, load=print, native_backend=3),  # type: ignore[arg-type]
        TypeError,
        "Format: native_backend must be a str, got int 3",
    ),
    (
        "torchlean.io.Format",
        lambda d: tio.Format("toy", (".TOY",), save=print, load=print),
        ValueError,
        "Format: each suffix must be a lower-case str starting with '.', got '.TOY'",
    ),
    (
        "torchlean.io.Format",
        lambda d: tio.Format("toy", (".toy",), save=print, load=5),  # type: ignore[arg-type]
        TypeError,
        "Format: load must be callable, got 5",
    ),
    (
        "torchlean.io.register_format",
        lambda d: tio.register_format("toy"),  # type: ignore[arg-type]
        TypeError,
        "register_format expects a Format, got str",
    ),
    (
        "torchlean.io.register_format",
        lambda d: tio.register_format(tio.Format("npz", (".toy",), save=print, load=print)),
        ValueError,
        "register_format: a format named 'npz' is registered already",
    ),
    (
        "torchlean.io.register_format",
        lambda d: tio.register_format(tio.Format("toy", (".pth",), save=print, load=print)),
        ValueError,
        "register_format: suffix .pth already means format 'torch'",
    ),
    (
        "torchlean.io.safetensors.save_safetensors",
        lambda d: safetensors.save_safetensors(5, d / "x.safetensors"),
        TypeError,
        "save_safetensors: ctx must be a RuntimeContext, got int 5",
    ),
    (
        "torchlean.io.save_sharded",
        lambda d: tio.save_sharded(CTX, d / "s", max_shard_size="5 apples"),
        ValueError,
        "max_shard_size must be a number of bytes with an optional unit (B, KB, MB, GB, TB,"
        " KiB, MiB, GiB, TiB), such as '5GB', got '5 apples'",
    ),
    (
        "torchlean.io.save_sharded",
        lambda d: sharded.save_sharded(5, d / "s"),  # type: ignore[arg-type]
        TypeError,
        "save_sharded: ctx must be a RuntimeContext, got int 5",
    ),
    (
        "torchlean.io.distributed.save_distributed",
        lambda d: distributed.save_distributed(1, d / "c"),  # type: ignore[arg-type]
        TypeError,
        "save_distributed: ctx must be a RuntimeContext, got int 1",
    ),
    (
        "torchlean.io.distributed.save_async",
        lambda d: distributed.save_async(1, d / "c"),  # type: ignore[arg-type]
        TypeError,
        "save_async: ctx must be a RuntimeContext, got int 1",
    ),
    (
        "torchlean.io.distributed.load_distributed",
        lambda d: distributed.load_distributed(d, like=3),  # type: ignore[arg-type]
        TypeError,
        "load_distributed: like must be a RuntimeContext, got int 3",
    ),
    (
        "torchlean.io.distributed.is_checkpoint_folder",
        lambda d: distributed.is_checkpoint_folder(1),  # type: ignore[arg-type]
        TypeError,
        "is_checkpoint_folder: path must be a str or os.PathLike, got int 1",
    ),
    (
        "torchlean.io.orbax.save_orbax",
        lambda d: orbax.save_orbax(1, d / "c"),  # type: ignore[arg-type]
        TypeError,
        "save_orbax: ctx must be a RuntimeContext, got int 1",
    ),
    (
        "torchlean.io.orbax.load_orbax",
        lambda d: orbax.load_orbax(d, like=3),  # type: ignore[arg-type]
        TypeError,
        "load_orbax: like must be a RuntimeContext, got int 3",
    ),
    (
        "torchlean.io.distributed.inspect_distributed",
        lambda d: distributed.inspect_distributed(None),  # type: ignore[arg-type]
        TypeError,
        "inspect_distributed: path must be a str or os.PathLike, got NoneType None",
    ),
    (
        "torchlean.io.orbax.save_async",
        lambda d: orbax.save_async(1, d / "c"),  # type: ignore[arg-type]
        TypeError,
        "save_async: ctx must be a RuntimeContext, got int 1",
    ),
    (
        "torchlean.io.orbax.inspect_orbax",
        lambda d: orbax.inspect_orbax(2),  # type: ignore[arg-type]
        TypeError,
        "inspect_orbax: path must be a str or os.PathLike, got int 2",
    ),
    (
        "torchlean.io.orbax.is_orbax_folder",
        lambda d: orbax.is_orbax_folder(1),  # type: ignore[arg-type]
        TypeError,
        "is_orbax_folder: path must be a str or os.PathLike, got int 1",
    ),
    (
        "torchlean.io.sharded.staged",
        lambda d: sharded.staged(CTX, d / "s", max_shard_size=0).__enter__(),
        ValueError,
        "max_shard_size must be at least 1 byte, got 0",
    ),
    (
        "torchlean.io.sharded.parse_size",
        lambda d: sharded.parse_size(True),
        TypeError,
        "max_shard_size must be an int or a str such as '5GB', got True",
    ),
    (
        "torchlean.io.sharded.load_sharded",
        lambda d: sharded.load_sharded(None),  # type: ignore[arg-type]
        TypeError,
        "load_sharded: path must be a str or os.PathLike, got NoneType None",
    ),
    (
        "torchlean.io.sharded.inspect_sharded",
        lambda d: sharded.inspect_sharded(d / "nothing-here"),
        FileNotFoundError,
        "[Errno 2] No such file or directory: '{d}/nothing-here'",
    ),
    (
        "torchlean.io.npz.save_npz",
        lambda d: npz.save_npz(CTX, None),
        TypeError,
        "save_npz: path must be a str or os.PathLike, got NoneType None",
    ),
    (
        "torchlean.io.torchlean_json.save_json",
        lambda d: torchlean_json.save_json([1], d / "x.json"),
        TypeError,
        "save_json: ctx must be a RuntimeContext, got list [1]",
    ),
    (
        "torchlean.io.torchlean_json.read_checkpoint",
        lambda d: torchlean_json.read_checkpoint(None),  # type: ignore[arg-type]
        TypeError,
        "read_checkpoint: path must be a str or os.PathLike, got NoneType None",
    ),
    (
        "torchlean.io.torch.save_pt",
        lambda d: io_torch.save_pt(5, d / "x.pt"),
        TypeError,
        "save_pt: ctx must be a RuntimeContext, got int 5",
    ),
    (
        "torchlean.io.torch.load_into",
        lambda d: io_torch.load_into(5, 5),
        TypeError,
        "load_into: ctx must be a RuntimeContext, got int 5",
    ),
    (
        "torchlean.io.torch.from_module",
        lambda d: io_torch.from_module(5),
        TypeError,
        "from_module expects a torch nn.Module, got int",
    ),
    # -- optim
    (
        "torchlean.optim.flatten",
        lambda d: opt.flatten(5),  # type: ignore[call-overload]
        TypeError,
        "flatten: ctx must be a RuntimeContext, got int 5",
    ),
    (
        "torchlean.optim.flatten",
        lambda d: opt.flatten(RuntimeContext.empty(), frozen=3),  # type: ignore[call-overload]
        TypeError,
        "flatten: frozen must be a name or glob pattern (str) or a sequence of them, got 3",
    ),
    (
        "torchlean.train.CapturedStep",
        lambda d: tr.CapturedStep(lambda c: 0, "sgd"),  # type: ignore[arg-type]
        TypeError,
        "CapturedStep: optimizer must be a torchlean Optimizer, got str",
    ),
    (
        "CapturedStep.eager",
        lambda d: tr.CapturedStep(lambda c: 0, opt.sgd()).eager(5, 5, ()),  # type: ignore[arg-type]
        TypeError,
        "value_and_grad(<lambda>): ctx must be a RuntimeContext, got int 5",
    ),
    ("torchlean.optim.sgd", lambda d: opt.sgd(lr=-1.0), ValueError, "invalid learning rate: -1.0"),
    (
        "torchlean.optim.sgd",
        lambda d: opt.sgd(lr="0.1"),
        TypeError,
        "lr must be a number, got str '0.1'",
    ),
    (
        "torchlean.optim.sgd",
        lambda d: opt.sgd(momentum=-0.5),
        ValueError,
        "invalid momentum value: -0.5",
    ),
    (
        "torchlean.optim.sgd",
        lambda d: opt.sgd(momentum="x"),
        TypeError,
        "momentum must be a number, got str 'x'",
    ),
    (
        "torchlean.optim.sgd",
        lambda d: opt.sgd(nesterov=True),
        ValueError,
        "nesterov momentum requires a momentum and zero dampening",
    ),
    (
        "torchlean.optim.adam",
        lambda d: opt.adam(betas=(1.5, 0.9)),
        ValueError,
        "invalid beta parameter at index 0: 1.5",
    ),
    (
        "torchlean.optim.adam",
        lambda d: opt.adam(betas=(0.9,)),
        TypeError,
        "betas must be a pair of numbers (beta1, beta2), got (0.9,)",
    ),
    (
        "torchlean.optim.adam",
        lambda d: opt.adam(lr=float("nan")),
        ValueError,
        "invalid learning rate: nan",
    ),
    ("torchlean.optim.adam", lambda d: opt.adam(eps=-1), ValueError, "invalid epsilon value: -1"),
    (
        "torchlean.optim.adamw",
        lambda d: opt.adamw(weight_decay=-1),
        ValueError,
        "invalid weight_decay value: -1",
    ),
    (
        "torchlean.optim.Hyper",
        lambda d: opt.Hyper(kind="rmsprop", lr=0.1),
        ValueError,  # type: ignore[arg-type]
        "optimizer kind must be sgd, adam or adamw, got 'rmsprop'",
    ),
    (
        "torchlean.optim.Optimizer",
        lambda d: opt.Optimizer(5),
        TypeError,  # type: ignore[arg-type]
        "Optimizer expects a Hyper (use sgd, adam or adamw), got int",
    ),
    (
        "Optimizer.init",
        lambda d: opt.sgd().init(5),
        TypeError,
        "optimizer init: ctx must be a RuntimeContext, got int 5",
    ),
    (
        "Optimizer.step",
        lambda d: _step(CTX.register_gradient("w", np.ones(4, np.float32))),
        ShapeMismatchError,
        "optimizer step: gradient `w` has shape (4,) but variable `w` has"
        " shape (3,); nothing was updated",
    ),
    (
        "Optimizer.step",
        lambda d: _step(CTX.register_gradient("w", np.ones(3, np.float64))),
        DTypeMismatchError,
        "optimizer step: gradient `w` is numpy float64 but variable `w` is"
        " numpy float32; nothing was updated",
    ),
    (
        "Optimizer.step",
        lambda d: _step(5),
        TypeError,
        "optimizer step: ctx must be a RuntimeContext, got int 5",
    ),
    (
        "Optimizer.step",
        lambda d: _step(GRAD, 5),
        TypeError,
        "optimizer step: state must be a RuntimeContext, got int 5",
    ),
    (
        "Optimizer.step",
        lambda d: _step(GRAD, donate="no"),
        TypeError,
        "optimizer step: donate must be a bool, got 'no'",
    ),
    (
        "Optimizer.step",
        lambda d: _step(GRAD, reduce_partial=1),
        TypeError,
        "optimizer step: reduce_partial must be a bool, got 1",
    ),
    (
        "torchlean.optim.constant",
        lambda d: opt.constant("x"),
        TypeError,
        "constant: value must be a number, got str 'x'",
    ),
    (
        "torchlean.optim.cosine_decay",
        lambda d: opt.cosine_decay(0.1, 1.5),
        ValueError,
        "decay_steps must be a positive int, got 1.5",
    ),
    (
        "torchlean.optim.linear_warmup",
        lambda d: opt.linear_warmup(0.1, -1),
        ValueError,
        "warmup_steps must be a positive int, got -1",
    ),
    (
        "torchlean.optim.warmup_cosine",
        lambda d: opt.warmup_cosine(0.1, 10, 5),
        ValueError,
        "total_steps (5) must be larger than warmup_steps (10)",
    ),
    # -- autograd
    (
        "torchlean.autograd.call_module",
        lambda d: ag.call_module(5, CTX),
        TypeError,
        "call_module expects a torch nn.Module, got int",
    ),
    (
        "torchlean.autograd.call_module",
        lambda d: ag.call_module(_linear(), 5),
        TypeError,
        "call_module: ctx must be a RuntimeContext, got int 5",
    ),
    (
        "torchlean.autograd.call_module",
        lambda d: ag.call_module(_linear(), CTX, state="y"),
        TypeError,  # type: ignore[arg-type]
        "call_module: state must be a bool, got str 'y'",
    ),
    (
        "torchlean.autograd.call_module",
        lambda d: ag.call_module(_linear(), CTX, (), [1]),
        TypeError,  # type: ignore[arg-type]
        "call_module: kwargs must be a dict or None, got list [1]",
    ),
    (
        "torchlean.autograd.call_module",
        lambda d: ag.call_module(_linear(), CTX),
        UnknownNameError,
        "call_module(Linear): the module has no parameter or buffer `w`; the context has no"
        " variable for `weight`, `bias` (pass strict=False to keep the module's own); build"
        " the context with RuntimeContext.from_module(module)",
    ),
    (
        "torchlean.autograd.value_and_grad",
        lambda d: ag.value_and_grad(5),
        TypeError,
        "value_and_grad: fn must be callable, got int 5",
    ),
    (
        "torchlean.autograd.value_and_grad",
        lambda d: ag.value_and_grad(lambda c: 0.0, frozen=5),
        TypeError,  # type: ignore[arg-type]
        "value_and_grad: frozen must be a name or glob pattern (str) or a sequence of them, got 5",
    ),
    (
        "torchlean.autograd.value_and_grad",
        lambda d: ag.value_and_grad(lambda c: 0.0, has_aux="y"),
        TypeError,  # type: ignore[arg-type]
        "value_and_grad: has_aux must be a bool, got str 'y'",
    ),
    (
        "torchlean.autograd.value_and_grad",
        lambda d: ag.value_and_grad(lambda c: 0.0)(5),
        TypeError,
        "value_and_grad(<lambda>): ctx must be a RuntimeContext, got int 5",
    ),
    (
        "torchlean.autograd.value_and_grad",
        lambda d: ag.value_and_grad(lambda c: 0.0, frozen=["zz"])(CTX),
        UnknownNameError,
        "value_and_grad: frozen pattern `zz` matches no variable (the context has 1 variable"
        " entries)",
    ),
    (
        "torchlean.autograd.value_and_grad",
        lambda d: ag.value_and_grad(lambda c: 0.0)(CTX),
        Exception,
        "value_and_grad: variable `w` is a numpy array, which has no autograd;"
        " register torch tensors or jax arrays instead",
    ),
    (
        "torchlean.autograd.value_and_grad",
        lambda d: ag.value_and_grad(lambda c: 0.0, reduce="max"),
        ValueError,
        "value_and_grad: reduce must be 'mean', 'sum' or None, got 'max'",
    ),
    (
        "torchlean.train.fit",
        lambda d: _fit(reduce="all"),
        ValueError,
        "fit: reduce must be 'mean', 'sum' or None, got 'all'",
    ),
    (
        "torchlean.train.fit",
        lambda d: _fit(distributed=True),
        ValueError,
        "fit: distributed=True writes checkpoint folders and needs a checkpoint_dir",
    ),
    (
        "torchlean.train.fit",
        lambda d: _fit(distributed="yes", checkpoint_dir=d),
        TypeError,
        "fit: distributed must be a bool, got str 'yes'",
    ),
    (
        "torchlean.train.fit",
        lambda d: _fit(reduce_partial=1),
        TypeError,
        "fit: reduce_partial must be a bool, got int 1",
    ),
    (
        "torchlean.autograd.differentiable_names",
        lambda d: ag.differentiable_names(5),
        TypeError,
        "differentiable_names: ctx must be a RuntimeContext, got int 5",
    ),
    # -- train
    (
        "torchlean.train.fit",
        lambda d: _fit(ctx=5),
        TypeError,
        "fit: ctx must be a RuntimeContext, got int 5",
    ),
    (
        "torchlean.train.fit",
        lambda d: _fit(loss_fn=5),
        TypeError,
        "fit: loss_fn must be callable, got int 5",
    ),
    (
        "torchlean.train.fit",
        lambda d: _fit(optimizer="sgd"),
        TypeError,
        "fit: optimizer must be a torchlean.optim.Optimizer (sgd, adam, adamw), got str",
    ),
    (
        "torchlean.train.fit",
        lambda d: _fit(data=5),
        TypeError,
        "fit: data must be an iterable of batches or a callable, got int",
    ),
    (
        "torchlean.train.fit",
        lambda d: _fit(steps=-1),
        ValueError,
        "fit: steps must be >= 0, got -1",
    ),
    (
        "torchlean.train.fit",
        lambda d: _fit(steps=1.5),
        TypeError,
        "fit: steps must be an int, got float 1.5",
    ),
    (
        "torchlean.train.fit",
        lambda d: _fit(eval_every=-1),
        ValueError,
        "fit: eval_every must be >= 0, got -1",
    ),
    (
        "torchlean.train.fit",
        lambda d: _fit(checkpoint_every=5),
        ValueError,
        "checkpoint_every needs a checkpoint_dir",
    ),
    (
        "torchlean.train.fit",
        lambda d: _fit(frozen=5),
        TypeError,
        "fit: frozen must be a str or an iterable of str, got 5",
    ),
    (
        "torchlean.train.fit",
        lambda d: _fit(epochs=1),
        TypeError,
        "fit: pass exactly one of steps= and epochs=",
    ),
    (
        "torchlean.train.fit",
        lambda d: _fit(accumulate=0),
        ValueError,
        "fit: accumulate must be >= 1, got 0",
    ),
    (
        "torchlean.train.fit",
        lambda d: _fit(steps=None, epochs=1, data=iter([1])),
        TypeError,
        "fit: epochs= needs data with a length that can be iterated again (a DataLoader,"
        " a list), got list_iterator; pass steps= for a stream",
    ),
    (
        "torchlean.train.fit",
        lambda d: _fit(steps=None, epochs=1, data=[1, 2, 3], accumulate=4),
        ValueError,
        "fit: epochs=1 over data of 3 batches make no step of accumulate=4 micro-batches"
        " (nothing would be trained); pass more epochs, a smaller accumulate, or steps=",
    ),
    (
        "torchlean.train.fit",
        lambda d: _fit(keep_last=2),
        ValueError,
        "keep_last needs a checkpoint_dir",
    ),
    (
        "RuntimeContext.from_pytree",
        lambda d: RuntimeContext.from_pytree({"a": {"b": F32}, "a.b": F32}),
        TorchLeanError,
        "from_pytree: the leaves at ['a']['b'] and ['a.b'] both have the dotted name `a.b`;"
        " rename one of the keys (a key with a dot in it reads as a nested path)",
    ),
    (
        "RuntimeContext.mark_buffers",
        lambda d: CTX.mark_buffers(5),
        TypeError,
        "mark_buffers: expects a name or glob pattern (str) or an iterable of them, got 5",
    ),
    (
        "RuntimeContext.mark_parameters",
        lambda d: CTX.mark_parameters("zz*"),
        UnknownNameError,
        "mark_parameters: `zz*` matches no variable (the context has 1 variable name)",
    ),
    (
        "RuntimeContext.is_buffer",
        lambda d: CTX.is_buffer(5),
        TypeError,
        "variable name must be a str, got int 5",
    ),
    (
        "RuntimeContext.tie",
        lambda d: CTX.tie(5, to="w"),
        TypeError,
        "alias name must be a str, got int 5",
    ),
    (
        "RuntimeContext.copy_roles",
        lambda d: CTX.copy_roles(5),
        TypeError,
        "copy_roles: other must be a RuntimeContext, got int 5",
    ),
    (
        "torchlean.runtime.context.with_roles",
        lambda d: rt.context.with_roles(CTX, buffers=["nope"]),
        UnknownNameError,
        "buffers and aliases must name variables of the context; unknown: `nope`",
    ),
    (
        "torchlean.optim.clip_gradients",
        lambda d: opt.clip_gradients(CTX, -1),
        ValueError,
        "clip_gradients: max_norm must be a number > 0, got -1",
    ),
    (
        "torchlean.optim.adam",
        lambda d: opt.adam(groups=[{"params": "w", "betas": (0.9, 1.0)}]),
        ValueError,
        "groups[0]: invalid beta parameter at index 1: 1.0",
    ),
    (
        "torchlean.optim.adam",
        lambda d: opt.adam(groups=[{"params": "w", "betas": ("0.9", 0.99)}]),
        TypeError,
        "groups[0]: betas must be a pair of numbers (beta1, beta2), got ('0.9', 0.99)",
    ),
    (
        "torchlean.optim.sgd",
        lambda d: opt.sgd(
            momentum=0.9,
            groups=[{"params": "w"}, {"params": "b", "nesterov": True, "dampening": 0.1}],
        ),
        ValueError,
        "groups[1]: nesterov momentum requires a momentum and zero dampening (the group has"
        " momentum=0.9, dampening=0.1)",
    ),
    (
        "torchlean.optim.sgd",
        lambda d: opt.sgd(groups=5),
        TypeError,
        'groups must be a list of mappings such as {"params": "encoder.*", "lr": 1e-4}, got 5',
    ),
    (
        "torchlean.optim.adamw",
        lambda d: opt.adamw(clip=0),
        ValueError,
        "clip must be > 0 (a maximum gradient norm), got 0",
    ),
    (
        "torchlean.optim.import_torch_state",
        lambda d: opt.import_torch_state(5, CTX, names=["w"]),
        TypeError,
        "import_torch_state: source must be a torch.optim optimizer or its state_dict() (a"
        ' mapping with "state" and "param_groups"), got int 5',
    ),
    (
        "torchlean.optim.import_torch_state",
        lambda d: opt.import_torch_state({"state": {}, "param_groups": []}, CTX, names=["w"]),
        TypeError,
        'import_torch_state: a torch.optim state_dict() is a mapping with "state" and a'
        " non-empty \"param_groups\" list, got keys ['param_groups', 'state']",
    ),
    (
        "torchlean.optim.import_torch_state",
        lambda d: opt.import_torch_state({}, CTX, names=["w"], count=-1),
        TypeError,
        "import_torch_state: count must be an int >= 0 or None, got -1",
    ),
    (
        "torchlean.optim.import_optax_state",
        lambda d: opt.import_optax_state((), CTX, optimizer="adam"),  # type: ignore[arg-type]
        TypeError,
        "import_optax_state: optimizer must be a torchlean.optim.Optimizer (adam or adamw with"
        " optax's hyperparameters), got str",
    ),
    (
        "torchlean.optim.import_optax_state",
        lambda d: opt.import_optax_state((), CTX, optimizer=opt.adam()),
        ExpectationError,
        "import_optax_state: expected one optax ScaleByAdamState (mu, nu, count) in the state,"
        " found 0 in tuple",
    ),
    (
        "torchlean.train.save_checkpoint",
        lambda d: tr.save_checkpoint(d / "c.safetensors", CTX, CTX, -1),
        ValueError,
        "save_checkpoint: step must be >= 0, got -1",
    ),
    (
        "torchlean.train.save_checkpoint",
        lambda d: tr.save_checkpoint(d / "c.safetensors", 5, CTX, 1),
        TypeError,
        "save_checkpoint: ctx must be a RuntimeContext, got int 5",
    ),
    (
        "torchlean.train.load_checkpoint",
        lambda d: tr.load_checkpoint(d / "w.safetensors", CTX, None),
        TypeError,
        "load_checkpoint: state must be a RuntimeContext, got NoneType None",
    ),
    (
        "torchlean.train.latest_checkpoint",
        lambda d: tr.latest_checkpoint(5),
        TypeError,
        "latest_checkpoint: folder must be a str or os.PathLike, got int 5",
    ),
    # -- widgets
    (
        "torchlean.widgets.summarize",
        lambda d: w.summarize(5),
        TypeError,
        "summarize: ctx must be a RuntimeContext, got int 5",
    ),
    (
        "torchlean.widgets.summarize",
        lambda d: w.summarize(CTX, sample_limit=-1),
        ValueError,
        "sample_limit must be a positive int, got -1",
    ),
    (
        "torchlean.widgets.summarize_sources",
        lambda d: w.summarize_sources(5, []),
        TypeError,
        "summarize_sources: title must be a str, got int",
    ),
    (
        "torchlean.widgets.summarize_sources",
        lambda d: w.summarize_sources("t", 5),
        TypeError,
        "summarize_sources: variables must be a sequence of (name, source) pairs, got int",
    ),
    (
        "torchlean.widgets.to_text",
        lambda d: w.to_text(5),
        TypeError,
        "expected a RuntimeContext or a widgets.Summary to show, got int",
    ),
    (
        "torchlean.widgets.to_text",
        lambda d: w.to_text(CTX, width=-5),
        ValueError,
        "to_text: width must be an int of at least 20, got -5",
    ),
    (
        "torchlean.widgets.to_text",
        lambda d: w.to_text(CTX, filter=5),
        TypeError,
        "to_text: filter must be a glob str such as 'layer1.*', got int 5",
    ),
    (
        "torchlean.widgets.to_text",
        lambda d: w.to_text(CTX, depth=-1),
        ValueError,
        "to_text: depth must be an int >= 0 or None, got -1",
    ),
    (
        "torchlean.widgets.to_text",
        lambda d: w.to_text(CTX, depth="2"),
        TypeError,
        "to_text: depth must be an int >= 0 or None, got str '2'",
    ),
    (
        "torchlean.widgets.rich_renderable",
        lambda d: w.rich_renderable(CTX, filter=["layer1.*"]),
        TypeError,
        "rich_renderable: filter must be a glob str such as 'layer1.*', got list ['layer1.*']",
    ),
    (
        "torchlean.widgets.rich_renderable",
        lambda d: w.rich_renderable(CTX, depth=True),
        TypeError,
        "rich_renderable: depth must be an int >= 0 or None, got bool True",
    ),
    (
        "torchlean.widgets.to_html",
        lambda d: w.to_html(CTX, filter=b"x*"),
        TypeError,
        "to_html: filter must be a glob str such as 'layer1.*', got bytes b'x*'",
    ),
    (
        "torchlean.widgets.to_html_page",
        lambda d: w.to_html_page(CTX, filter=3),
        TypeError,
        "to_html_page: filter must be a glob str such as 'layer1.*', got int 3",
    ),
    (
        "Summary.to_dict",
        lambda d: w.summarize(CTX).to_dict(depth=-2),
        ValueError,
        "to_dict: depth must be an int >= 0 or None, got -2",
    ),
    (
        "Summary.to_dict",
        lambda d: w.summarize(CTX).to_dict(filter=1.5),
        TypeError,
        "to_dict: filter must be a glob str such as 'layer1.*', got float 1.5",
    ),
    (
        "Summary.select",
        lambda d: w.summarize(CTX).select(7),
        TypeError,
        "select: filter must be a glob str such as 'layer1.*', got int 7",
    ),
    (
        "Summary.groups",
        lambda d: w.summarize(CTX).groups(-1),
        ValueError,
        "groups: depth must be an int >= 0 or None, got -1",
    ),
    (
        "Summary.totals",
        lambda d: w.summarize(CTX).totals("variables"),  # type: ignore[arg-type]
        ValueError,
        "registry must be 'variable' or 'gradient', got 'variables'",
    ),
    (
        "torchlean.widgets.to_html",
        lambda d: w.to_html([]),
        TypeError,
        "expected a RuntimeContext or a widgets.Summary to show, got list",
    ),
    (
        "torchlean.widgets.to_html_page",
        lambda d: w.to_html_page(None),
        TypeError,
        "expected a RuntimeContext or a widgets.Summary to show, got NoneType",
    ),
    (
        "torchlean.widgets.rich_renderable",
        lambda d: w.rich_renderable("ctx"),
        TypeError,
        "expected a RuntimeContext or a widgets.Summary to show, got str",
    ),
    # -- cli and demo
    (
        "torchlean.cli.main",
        lambda d: cli.main("show"),
        TypeError,
        "main: argv must be a sequence of str or None, got 'show'",
    ),
    (
        "torchlean.demo.cli_main",
        lambda d: demo.cli_main(5),
        TypeError,  # type: ignore[arg-type]
        "cli_main: argv must be a list of str, got 5",
    ),
    (
        "torchlean.demo.run",
        lambda d: demo.run(steps=-1),
        ValueError,
        "demo run: steps must be >= 1, got -1",
    ),
    (
        "torchlean.demo.run",
        lambda d: demo.run(backend="tf", steps=1),
        ValueError,
        "the demo runs on backend 'torch' or 'jax', got 'tf'",
    ),
    (
        "torchlean.demo.init_mlp",
        lambda d: demo.init_mlp("numpy"),
        ValueError,
        "the demo runs on backend 'torch' or 'jax', got 'numpy'",
    ),
    (
        "torchlean.demo.two_moons",
        lambda d: demo.two_moons(-1),
        ValueError,
        "two_moons: n must be >= 2, got -1",
    ),
    (
        "torchlean.io.lean_json.parse",
        lambda d: lj.parse(5),
        TypeError,
        "parse: data must be bytes or str, got int",
    ),
    (
        "torchlean.io.lean_json.lean_view",
        lambda d: lj.lean_view(5),
        TypeError,
        "lean_view: source must be a str or os.PathLike, got int 5",
    ),
    (
        "torchlean.io.lean_json.lean_view",
        lambda d: lj.lean_view(d / "missing.json"),
        FileNotFoundError,
        "[Errno 2] No such file or directory: '{d}/missing.json'",
    ),
    (
        "torchlean.io.lean_json.float_of_scientific",
        lambda d: lj.float_of_scientific(-1, True, 0),
        ValueError,
        "float_of_scientific: mantissa and exponent are natural numbers, got -1 and 0",
    ),
]

# Public callables with no row, and why none is needed.
NO_ROW: dict[str, str] = {
    "RuntimeContext.buffers": "no arguments",
    "RuntimeContext.tree_shape": "no arguments",
    "RuntimeContext.to_pytree": "any tree is a template (like=None: the recorded one)",
    "RuntimeContext.aliases": "no arguments",
    "torchlean.runtime.context.owned_by_caller": "any object is an argument (False is its answer)",
    "torchlean.io.expect.tied_names": "any object is an argument ({} is its answer)",
    "torchlean.train.StepInfo": "a record fit builds after each step",
    # the array-library interface: the runtime calls it with values it has validated
    **{
        f"{cls.__name__}.{m}": "the Backend interface, called by the runtime on checked values"
        for cls in (
            bk.Backend,
            bk.NUMPY.__class__,
            importlib.import_module("torchlean.runtime.backends.torch").TorchBackend,
            importlib.import_module("torchlean.runtime.backends.jax").JaxBackend,
            importlib.import_module("torchlean.runtime.backends.dtensor").DTensorBackend,
        )
        for m, v in vars(cls).items()
        if not m.startswith("_") and callable(v)
    },
    "torchlean.runtime.backends.Backend": "a base class to subclass, not called with data",
    "torchlean.runtime.backends.torch.TorchBackend": "built by the runtime (backend_named)",
    "torchlean.runtime.backends.jax.JaxBackend": "built by the runtime (backend_named)",
    "torchlean.runtime.backends.dtensor.DTensorBackend": "built by the runtime (backend_named)",
    "torchlean.io.distributed.AsyncSave": "returned by save_async, not built by users",
    "AsyncSave.done": "no arguments",
    "torchlean.io.orbax.OrbaxSave": "returned by orbax.save_async, not built by users",
    "OrbaxSave.done": "no arguments",
    "OrbaxSave.wait": "no arguments",
    "AsyncSave.wait": "timeout goes to threading.Thread.join as it is",
    "torchlean.runtime.backends.numpy.NumpyBackend": "built once by the runtime",
    "torchlean.runtime.backends.numpy.is_immutable": "called by the runtime on numpy arrays",
    "torchlean.runtime.backends.backend_of": "any object is an argument (TypeError is its answer)",
    "torchlean.runtime.backends.libraries": "no arguments",
    "torchlean.runtime.backends.read_checked": "called by the runtime on its own entries",
    "torchlean.runtime.any_tensor.fresh_entry": "called by the runtime on values it took",
    "torchlean.runtime.any_tensor.restamp": "called by the runtime's registries only",
    "torchlean.runtime.context.donate": "called by the optimizers on contexts they checked",
    "torchlean.runtime.context.claim": "called by the optimizers and fit on contexts they checked",
    "torchlean.runtime.context.is_donated": "any context is an argument",
    "torchlean.runtime.context.require_context": "any object is an argument (TypeError answers)",
    "torchlean.runtime.dtypes.bits_dtype": "called by the backends with a table's item size",
    "torchlean.runtime.dtypes.is_extended_float": "any name is an argument",
    "torchlean.runtime.dtypes.render_array": "called by the views on numpy arrays they read",
    "torchlean.runtime.printing.context_to_string": "behind RuntimeContext.context_to_string",
    "torchlean.runtime.printing.pretty_tensor": "behind RuntimeContext.context_to_string",
    "torchlean.runtime.printing.lean_scalar": "any value is an argument (prints its str)",
    # the model of Lean's importer: any JSON value is an argument; Lean's answer for a
    # value of the wrong kind is none (None here) or a problem in the view
    **{
        f"torchlean.io.lean_json.{name}": "any JSON value is an argument (Lean answers none)"
        for name in ("parse_tensor", "unwrap_params", "load_weights", "get_tensor", "lean_import")
    },
    "JsonNumber.to_float": "no arguments",
    "LeanView.arrays": "no arguments",
    "LeanView.format": "no arguments",
    "RuntimeContext.latest_variables": "no arguments",
    "RuntimeContext.latest_gradients": "no arguments",
    # no arguments (besides the context itself, which the method is called on)
    **{
        f"RuntimeContext.{m}": "no arguments"
        for m in (
            "variable_names",
            "context_size",
            "clear_gradients",
            "gradient_names",
            "gradient_count",
            "is_valid_context",
            "check",
            "context_to_string",
        )
    },
    "Shape.scalar": "no arguments",
    "Shape.pretty": "no arguments",
    "CheckReport.raise_if_problems": "no arguments",
    "ExpectReport.raise_if_bad": "no arguments",
    "torchlean.runtime.pytree.registered": "no arguments",
    # records the library builds and returns (frozen dataclasses); not entry points
    **{
        name: "a result record the library returns"
        for name in (
            "torchlean.CheckReport",
            "torchlean.runtime.Problem",
            "torchlean.runtime.check.EntryFacts",
            "torchlean.io.ExpectReport",
            "torchlean.io.lean_json.JsonNumber",
            "torchlean.io.lean_json.LeanFinding",
            "torchlean.io.lean_json.LeanTensor",
            "torchlean.io.lean_json.LeanView",
            "torchlean.io.FileSummary",
            "torchlean.io.Mismatch",
            "torchlean.io.TensorInfo",
            "torchlean.widgets.Group",
            "torchlean.widgets.Preview",
            "torchlean.widgets.Row",
            "torchlean.widgets.Totals",
            "torchlean.widgets.Stats",
            "torchlean.widgets.Summary",
            "Group.to_dict",
            "Totals.to_dict",
            "torchlean.train.FitResult",
            "torchlean.demo.DemoResult",
            "torchlean.runtime.pytree.EntryKey",
            "torchlean.runtime.pytree.Layout",
        )
    },
    # typing protocols: describe what a caller passes, not callable entry points
    "torchlean.runtime.ArrayLike": "a typing Protocol",
    "torchlean.widgets.TensorSource": "a typing Protocol",
    "TensorSource.head": "a typing Protocol",
    "TensorSource.sample": "a typing Protocol",
    # count is any scalar (a jax tracer under jit); it is handed to the schedule as is
    "Optimizer.lr_at": "takes any scalar by design",
    # loaders of the format modules: reached through io.load / io.inspect, which check
    # path, format and backend first; hostile files are the subject of tests/io (fuzzing)
    "torchlean.io.safetensors.load_safetensors": "a loader behind io.load",
    "torchlean.io.safetensors.inspect_safetensors": "a loader behind io.inspect",
    "torchlean.io.safetensors.check_layout": "the layout check inside the loaders",
    "torchlean.io.npz.load_npz": "a loader behind io.load",
    "torchlean.io.torchlean_json.load_json": "a loader behind io.load",
    "torchlean.io.torchlean_json.parse_document": "a loader behind io.load",
    "torchlean.io.torch.load_pt": "a loader behind io.load",
    "torchlean.io.torch.inspect_pt": "a summary behind io.inspect",
}


def _public_modules() -> list[str]:
    names = ["torchlean"]
    for m in pkgutil.walk_packages(torchlean.__path__, "torchlean."):
        if not any(part.startswith("_") for part in m.name.split(".")):
            names.append(m.name)
    return names


def _public_callables() -> dict[str, Any]:
    """Every public function, class and (public, own) method, by one canonical name."""
    found: dict[int, tuple[str, Any]] = {}
    for module_name in _public_modules():
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if inspect.isclass(obj) and issubclass(obj, BaseException):
                continue  # the errors themselves
            if inspect.isfunction(obj) or inspect.isclass(obj):
                found.setdefault(id(obj), (f"{module_name}.{name}", obj))
    out = {name: obj for name, obj in found.values()}
    for obj in list(out.values()):
        if not inspect.isclass(obj):
            continue
        for attr, value in vars(obj).items():
            if attr.startswith("_"):
                continue
            func = value.__func__ if isinstance(value, (classmethod, staticmethod)) else value
            if inspect.isfunction(func):
                out[f"{obj.__name__}.{attr}"] = func
    return out


def _resolve(name: str) -> Any:
    head, _, attr = name.rpartition(".")
    if head and head[0].isupper():  # Class.method
        classes = {o.__name__: o for o in _public_callables().values() if inspect.isclass(o)}
        value = vars(classes[head])[attr]
        return value.__func__ if isinstance(value, (classmethod, staticmethod)) else value
    return getattr(importlib.import_module(head), attr)


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    tio.save(CTX, tmp_path / "w.safetensors")
    return tmp_path


@pytest.mark.parametrize(
    ("name", "call", "kind", "message"),
    ROWS,
    ids=[f"{i}-{row[0]}" for i, row in enumerate(ROWS)],
)
def test_bad_argument(
    folder: Path,
    name: str,
    call: Callable[[Path], Any],
    kind: type[BaseException],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(kind) as info:
        call(folder)
    assert str(info.value) == message.replace("{d}", str(folder))
    assert capsys.readouterr().out == ""  # nothing ran (no progress, no output)


def test_every_row_names_a_public_callable() -> None:
    public = _public_callables()
    unknown = sorted({name for name, *_ in ROWS if name not in public})
    assert unknown == []
    for name in {row[0] for row in ROWS}:
        assert _resolve(name) is public[name]


def test_every_public_callable_has_a_row() -> None:
    public = _public_callables()
    covered = {row[0] for row in ROWS}
    missing = sorted(n for n in public if n not in covered and n not in NO_ROW)
    assert missing == []
    stale = sorted(n for n in NO_ROW if n not in public or n in covered)
    assert stale == []
