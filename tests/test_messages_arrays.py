"""Pinned error messages of the array backends and the pytree integration."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from torchlean import empty_context
from torchlean.errors import (
    BackendError,
    DTypeMismatchError,
    InPlaceModificationError,
)
from torchlean.runtime import pytree
from torchlean.runtime.backends import OPAQUE
from torchlean.runtime.dtypes import dtype_name


def exactly(text: str) -> str:
    return "^" + re.escape(text) + "$"


def test_in_place_write_of_a_variable():
    t = torch.ones(2)
    ctx = empty_context().register_variable("fc1.weight", t)
    t.add_(1)
    with pytest.raises(InPlaceModificationError) as e:
        ctx["fc1.weight"]
    assert str(e.value) == (
        "variable `fc1.weight` was modified in place after it was stored in a context"
        " (its version counter went from 0 to 1); contexts never change, so the value can"
        " no longer be trusted. Register a copy (tensor.clone()) if you need to keep"
        " writing to it"
    )


def test_in_place_write_of_a_gradient_seen_by_context_to_string():
    g = torch.ones(2)
    ctx = empty_context().register_gradient("b", g)
    g.zero_()
    g.zero_()
    with pytest.raises(InPlaceModificationError, match=r"^gradient `b` was modified .* 0 to 2\)"):
        ctx.context_to_string()


def test_accumulate_on_another_device():
    ctx = empty_context().register_gradient("w", torch.ones(2))
    with pytest.raises(BackendError) as e:
        ctx.accumulate_gradient("w", torch.ones(2, device="meta"))
    assert str(e.value) == (
        "cannot accumulate into gradient `w`: it is on cpu but the added gradient is on meta"
    )


def test_pinned_library():
    ctx = empty_context(dtype=torch.float32)
    with pytest.raises(DTypeMismatchError) as e:
        ctx.register_variable("w", jnp.ones(2))
    assert (
        str(e.value)
        == "variable `w` is a jax array but this context holds torch float32 arrays only"
    )


def test_not_an_array():
    with pytest.raises(TypeError) as e:
        empty_context().register_variable("s", jax.ShapeDtypeStruct((2,), jnp.float32))
    assert str(e.value) == (
        "variable `s`: expected an array (numpy.ndarray, torch.Tensor or jax.Array),"
        " got jax.ShapeDtypeStruct ShapeDtypeStruct(shape=(2,), dtype=float32)"
    )


def test_no_data_to_read():
    at = empty_context().register_variable("w", torch.empty(2, 3, device="meta")).var_registry[0][1]
    with pytest.raises(
        BackendError, match=exactly("<meta tensor float32 (2, 3)> has no data to read")
    ):
        at._backend.to_numpy(at.t)
    with pytest.raises(BackendError, match=exactly("_Shown <object> is not an array")):
        OPAQUE.to_numpy(_Shown())


class _Shown:
    def __repr__(self) -> str:
        return "<object>"


def test_unknown_pytree_library():
    with pytest.raises(
        ValueError, match=exactly("unknown pytree library 'tf'; expected 'jax' or 'torch'")
    ):
        pytree.register("tf")  # type: ignore[arg-type]


def test_not_a_dtype():
    with pytest.raises(TypeError, match=exactly("not a dtype: 'float33'")):
        dtype_name("float33")


def test_wrong_number_of_leaves():
    treedef = jax.tree_util.tree_structure(empty_context().register_variable("w", np.ones(1)))
    with pytest.raises(ValueError, match="a context with this layout has 1 leaves, got 2"):
        pytree._unflatten(treedef.node_data()[1], [1, 2])
