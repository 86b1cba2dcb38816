"""Buffers and aliases survive every operation of a context, pytrees, pickle and files."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
import torch
from torch.utils import _pytree as torch_pytree

from torchlean import RuntimeContext, io
from torchlean.errors import FormatError, UnknownNameError


def ctx() -> RuntimeContext[Any]:
    return (
        RuntimeContext.from_state_dict(
            {
                "wte.weight": np.ones((3, 2), np.float32),
                "bn.running_mean": np.zeros(2, np.float32),
                "bn.num_batches_tracked": np.zeros((), np.int64),
            }
        )
        .mark_buffers(["bn.running_*", "bn.num_batches_tracked"])
        .tie("lm_head.weight", to="wte.weight")
    )


def roles(c: RuntimeContext[Any]) -> tuple[list[str], dict[str, str]]:
    return c.buffers(), c.aliases()


WANT = (["bn.running_mean", "bn.num_batches_tracked"], {"lm_head.weight": "wte.weight"})


def test_operations_keep_roles() -> None:
    c = ctx()
    ones = np.ones(2, np.float32)
    for derived in (
        c.with_variables({"bn.running_mean": ones}),
        c.set_variable("bn.running_mean", ones),
        c.register_variable("extra", ones),
        c.register_gradient("wte.weight", np.ones((3, 2), np.float32)),
        c.clear_gradients(),
        pickle.loads(pickle.dumps(c)),
    ):
        assert roles(derived) == WANT
    assert c.is_buffer("bn.running_mean") and not c.is_buffer("wte.weight")
    np.testing.assert_array_equal(c["lm_head.weight"], c["wte.weight"])  # the alias reads
    assert "lm_head.weight" not in c  # but names no entry
    assert c.mark_parameters("bn.running_mean").buffers() == ["bn.num_batches_tracked"]


def test_pytrees_keep_roles() -> None:
    c = ctx()
    leaves, spec = jax.tree_util.tree_flatten(c)
    assert roles(jax.tree_util.tree_unflatten(spec, leaves)) == WANT
    t = RuntimeContext.from_module(torch.nn.BatchNorm1d(2))
    leaves, tspec = torch_pytree.tree_flatten(t)
    assert torch_pytree.tree_unflatten(leaves, tspec).buffers() == t.buffers()
    text = torch_pytree.treespec_dumps(tspec)
    assert torch_pytree.treespec_loads(text) == tspec


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_files_keep_roles_and_old_files_load(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"c{suffix}"
    io.save(ctx(), path)
    assert roles(io.load(path)) == WANT
    plain = RuntimeContext.from_state_dict({"w": np.ones(2, np.float32)})
    io.save(plain, tmp_path / f"p{suffix}")
    assert roles(io.load(tmp_path / f"p{suffix}")) == ([], {})


def test_a_bad_roles_field_is_a_format_error(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    layout = {
        "version": 1,
        "next_id": 1,
        "dtype": None,
        "variables": [["w", "w"]],
        "gradients": [],
        "buffers": ["nope"],
    }
    path = tmp_path / "bad.safetensors"
    save_file({"w": np.ones(2, np.float32)}, path, metadata={"torchlean": json.dumps(layout)})
    with pytest.raises(FormatError, match="roles"):
        io.load(path)


def test_mistakes_are_named() -> None:
    c = ctx()
    with pytest.raises(
        UnknownNameError, match=r"mark_buffers: `bn\.runing_\*` matches no variable"
    ):
        c.mark_buffers("bn.runing_*")
    with pytest.raises(ValueError, match="is a variable itself"):
        c.tie("wte.weight", to="bn.running_mean")
    with pytest.raises(UnknownNameError, match=r"tie: no variable `wte\.weigth`"):
        c.tie("head", to="wte.weigth")
    with pytest.raises(TypeError, match="mark_buffers: expects a name or glob pattern"):
        c.mark_buffers(5)  # type: ignore[arg-type]
