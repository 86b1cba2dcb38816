"""Pytrees in and out under fire: flax linen (dict and FrozenDict), flax nnx ``State``,
haiku-style dicts, tuples, lists, namedtuples, ``None`` and empty subtrees, int keys,
the same array at two leaves, every dtype; and every collision of dotted names refused
with both key paths named."""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from torchlean import RuntimeContext
from torchlean.errors import TorchLeanError

Pair = namedtuple("Pair", "w b")


def assert_exact(back: Any, tree: Any) -> None:
    """Same structure, node types, and per leaf the same type, dtype and values."""
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(tree)
    assert type(back) is type(tree)
    got, want = jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(tree)
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        if hasattr(b, "dtype"):
            assert type(a) is type(b) and a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        else:
            assert a is b


def trees() -> dict[str, Any]:
    from flax import nnx
    from flax.core import freeze

    x, y = jnp.arange(6.0).reshape(2, 3), jnp.arange(3, dtype=jnp.int8)
    model = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Linear(3, 1, rngs=nnx.Rngs(1)))
    return {
        "linen dict": {"params": {"Dense_0": {"kernel": x, "bias": x[0]}}},
        "linen FrozenDict": freeze({"params": {"Dense_0": {"kernel": x, "bias": x[0]}}}),
        "haiku": {"mlp/~/linear_0": {"w": x, "b": y}},
        "nnx State": nnx.state(model),
        "nnx Params": nnx.state(model, nnx.Param),
        "containers": (x, [y, None, Pair(x, y)], {"none": None, "empty": {}, "list": []}),
        "int keys": {0: x, 1: {2: y}},
        "same array twice": {"a": x, "b": x, "c": [x]},
        "dtypes": {
            "bf16": jnp.ones(3, jnp.bfloat16),
            "f16": jnp.ones(3, jnp.float16),
            "u8": jnp.arange(3, dtype=jnp.uint8),
            "bool": jnp.array([True, False]),
            "scalar": jnp.float32(2.5),
        },
        "numpy": {"w": np.arange(4.0), "i": np.arange(3, dtype=np.int64)},
        "static leaves": {"w": x, "act": jax.nn.relu, "n": 3, "s": "name"},
    }


@pytest.mark.parametrize("name", sorted(trees()))
def test_round_trips_are_exact(name: str) -> None:
    tree = trees()[name]
    ctx = RuntimeContext.from_pytree(tree)
    assert_exact(ctx.to_pytree(), tree)
    # and through a pytree map of the context (the structure travels with the roles)
    assert_exact(jax.tree_util.tree_map(lambda a: a, ctx).to_pytree(), tree)


def test_names_are_the_dotted_key_paths() -> None:
    ctx = RuntimeContext.from_pytree(trees()["containers"])
    assert ctx.variable_names()[::-1] == ["0", "1.0", "1.2.w", "1.2.b"]
    assert RuntimeContext.from_pytree({0: jnp.ones(1), 1: {2: jnp.ones(1)}}).variable_names()[
        ::-1
    ] == ["0", "1.2"]


def test_the_same_array_at_two_leaves_is_two_variables() -> None:
    x = jnp.ones(3)
    ctx = RuntimeContext.from_pytree({"a": x, "b": x})
    ctx = ctx.with_variables({"a": jnp.zeros(3)})
    back = ctx.to_pytree()
    np.testing.assert_array_equal(back["a"], np.zeros(3))
    np.testing.assert_array_equal(back["b"], np.ones(3))


@pytest.mark.parametrize(
    ("tree", "paths", "name"),
    [
        ({"a.b": 1.0, "a": {"b": 2.0}}, "['a']['b'] and ['a.b']", "a.b"),
        ({"a": [1.0], "a.0": 2.0}, "['a'][0] and ['a.0']", "a.0"),
        ({"l": Pair(1.0, 2.0), "l.w": 3.0}, "['l'].w and ['l.w']", "l.w"),
        ({"a": {1: 1.0}, "a.1": 2.0}, "['a'][1] and ['a.1']", "a.1"),
    ],
)
def test_dotted_name_collisions_name_both_key_paths(tree: Any, paths: str, name: str) -> None:
    tree = jax.tree_util.tree_map(jnp.asarray, tree)
    with pytest.raises(TorchLeanError) as info:
        RuntimeContext.from_pytree(tree)
    assert str(info.value) == (
        f"from_pytree: the leaves at {paths} both have the dotted name `{name}`; rename one"
        " of the keys (a key with a dot in it reads as a nested path)"
    )


def test_keys_jax_cannot_sort_are_a_clear_error() -> None:
    message = (
        "jax cannot flatten this tree (Comparator raised exception while sorting pytree"
        " dictionary keys.); a dict's keys must be sortable (all strings, or all ints), as"
        " jax.tree_util requires"
    )
    tree = {1: jnp.ones(1), "1": jnp.ones(1)}
    with pytest.raises(TorchLeanError) as info:
        RuntimeContext.from_pytree(tree)
    assert str(info.value) == "from_pytree: " + message
    with pytest.raises(TorchLeanError) as info:
        RuntimeContext.from_pytree({"a": jnp.ones(1)}).to_pytree(like=tree)
    assert str(info.value) == "to_pytree: " + message


def test_like_with_a_leaf_the_context_lacks_names_it() -> None:
    ctx = RuntimeContext.from_pytree({"a": jnp.ones(2)})
    with pytest.raises(TorchLeanError) as info:
        ctx.to_pytree(like={"x": [jnp.ones(2)]})
    assert str(info.value) == (
        "to_pytree: the tree `like` has leaf ['x'][0] (variable `x.0`), which the context lacks"
    )
    assert_exact(ctx.to_pytree(like={"a": jnp.zeros(2)}), {"a": jnp.ones(2)})


@pytest.mark.parametrize("order", [("a.b", "a"), ("a", "a.b.c")])
def test_names_that_cannot_split_into_dicts_are_refused_not_dropped(
    order: tuple[str, str],
) -> None:
    ctx = RuntimeContext.from_state_dict({n: jnp.ones(1) for n in order})
    with pytest.raises(TorchLeanError) as info:
        ctx.to_pytree()
    assert str(info.value) == (
        f"to_pytree: the context has variables `a` and `{max(order, key=len)}`, so `a` would"
        " be both an array and a dict of nested dicts split at the dots; pass like= a tree"
        " with this structure, or rename one"
    )


def test_without_a_structure_int_keys_come_back_as_strings() -> None:
    ctx = RuntimeContext.from_state_dict(
        RuntimeContext.from_pytree({0: jnp.ones(1), 1: [jnp.zeros(1)]}).state_dict()
    )
    back = ctx.to_pytree()
    assert sorted(back) == ["0", "1"] and sorted(back["1"]) == ["0"]
