"""One step counter shared by the parameters that step together (jax, numpy): the
layout, torch's per-parameter numbers when parameters stop and start stepping, and
resuming (bit-exact) from files with either layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from torchlean import RuntimeContext, optim
from torchlean.train import load_checkpoint, save_checkpoint

SHAPES = {"w": (3, 2), "b": (2,)}


def values(seed: int = 0) -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}


def context(backend: str) -> RuntimeContext[Any]:
    items: dict[str, Any] = values()
    if backend == "jax":
        items = {k: jnp.asarray(v) for k, v in items.items()}
    elif backend == "torch":
        items = {k: torch.tensor(v) for k, v in items.items()}
    return RuntimeContext.empty().with_variables(items, adopt=True)


def gradients(step: int, names: tuple[str, ...]) -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(100 + step)
    grads = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    return {k: grads[k] for k in names}


def counters(state: RuntimeContext[Any]) -> list[str]:
    return sorted(n for n in state.variable_names() if n == "step" or n.startswith("step/"))


@pytest.mark.parametrize(
    ("backend", "kwargs", "expected"),
    [
        ("jax", {}, ["step"]),
        ("numpy", {}, ["step"]),
        ("torch", {}, ["step/b", "step/w"]),
        ("jax", {"groups": [{"params": "b", "lr": 0.5}]}, ["step/b", "step/w"]),
    ],
)
def test_init_shares_the_counter_where_the_library_takes_one(
    backend: str, kwargs: dict[str, Any], expected: list[str]
) -> None:
    state = optim.adamw(lr=0.1, **kwargs).init(context(backend))
    assert counters(state) == expected
    assert state.variable_names()[-1] == "count"


def torch_reference(schedule: list[tuple[str, ...]]) -> dict[str, np.ndarray[Any, Any]]:
    params = {k: torch.tensor(v, requires_grad=True) for k, v in values().items()}
    opt = torch.optim.AdamW(params.values(), lr=0.1, weight_decay=0.1)
    for i, names in enumerate(schedule):
        grads = gradients(i, names)
        for k, p in params.items():
            p.grad = torch.tensor(grads[k]) if k in grads else None
        opt.step()
    return {k: p.detach().numpy() for k, p in params.items()}


def run(
    backend: str,
    schedule: list[tuple[str, ...]],
    *,
    jit: bool = False,
) -> tuple[RuntimeContext[Any], RuntimeContext[Any], list[list[str]]]:
    opt = optim.adamw(lr=0.1, weight_decay=0.1)
    ctx = context(backend)
    state = opt.init(ctx)
    step = opt.step
    if jit:
        step = jax.jit(lambda c, s: opt.step(c, s, donate=False), donate_argnums=(0, 1))
    layouts = []
    for i, names in enumerate(schedule):
        grads = gradients(i, names)
        if backend == "jax":
            grads = {k: jnp.asarray(v) for k, v in grads.items()}
        ctx = ctx.clear_gradients().with_gradients(grads, adopt=True)
        ctx, state = step(ctx, state)
        layouts.append(counters(state))
    return ctx, state, layouts


@pytest.mark.parametrize(
    ("backend", "jit"), [("jax", False), ("numpy", False), ("jax", True)], ids=str
)
def test_frozen_then_unfrozen_parameters_count_as_in_torch(backend: str, jit: bool) -> None:
    # `b` frozen for three steps, then both step: torch's counter of `b` starts at 1
    schedule = [("w",)] * 3 + [("w", "b")] * 3
    ctx, state, layouts = run(backend, schedule, jit=jit)
    reference = torch_reference(schedule)
    for k in SHAPES:
        np.testing.assert_allclose(
            np.asarray(ctx[k]), reference[k], rtol=1e-5, atol=1e-5
        )  # the table tests' tolerance
    # `b` split off at the first step; every parameter has its own once they step apart
    assert layouts[0] == ["step", "step/b"]
    assert layouts[-1] == ["step", "step/b", "step/w"]
    assert float(np.asarray(state["step/b"])) == 3.0
    assert float(np.asarray(state["step/w"])) == 6.0
    assert int(np.asarray(state["count"])) == 6


def test_parameters_stepping_together_keep_one_counter() -> None:
    ctx, state, layouts = run("jax", [("w", "b")] * 4)
    assert layouts == [["step"]] * 4
    assert float(np.asarray(state["step"])) == 4.0
    reference = torch_reference([("w", "b")] * 4)
    for k in SHAPES:
        np.testing.assert_allclose(
            np.asarray(ctx[k]), reference[k], rtol=1e-5, atol=1e-5
        )  # the table tests' tolerance


def steps(opt: optim.Optimizer, ctx: Any, state: Any, first: int, n: int) -> tuple[Any, Any]:
    for i in range(first, first + n):
        grads = {k: jnp.asarray(v) for k, v in gradients(i, ("w", "b")).items()}
        ctx, state = opt.step(ctx.with_gradients(grads, adopt=True), state)
    return ctx, state


def same(a: RuntimeContext[Any], b: RuntimeContext[Any]) -> None:
    left = {n: np.asarray(at.t) for n, at in a.latest_variables()}
    right = {n: np.asarray(at.t) for n, at in b.latest_variables()}
    assert left.keys() == right.keys()
    for name, value in left.items():
        np.testing.assert_array_equal(value, right[name], err_msg=name)


@pytest.mark.parametrize("layout", ["shared", "per-parameter (older files)"])
def test_resuming_from_a_checkpoint_is_bit_exact(tmp_path: Path, layout: str) -> None:
    opt = optim.adamw(lr=0.1, weight_decay=0.1)
    ctx = context("jax")
    state = opt._init(ctx, shared=layout == "shared")
    ctx, state = steps(opt, ctx, state, 0, 2)
    save_checkpoint(tmp_path / "ckpt.safetensors", ctx, state, 2)
    whole_ctx, whole_state = steps(opt, ctx, state, 2, 3)
    # a fresh run's templates (init shares the counter) take the file's layout
    fresh = context("jax")
    loaded_ctx, loaded_state, at = load_checkpoint(
        tmp_path / "ckpt.safetensors", fresh, opt.init(fresh)
    )
    assert at == 2
    expected = ["step"] if layout == "shared" else ["step/b", "step/w"]
    assert counters(loaded_state) == expected
    loaded_ctx, loaded_state = steps(opt, loaded_ctx, loaded_state, 2, 3)
    same(loaded_ctx, whole_ctx)
    same(loaded_state, whole_state)


def test_both_layouts_give_the_same_numbers() -> None:
    opt = optim.adamw(lr=0.1, weight_decay=0.1)
    results = []
    for shared in (True, False):
        ctx = context("jax")
        ctx, _ = steps(opt, ctx, opt._init(ctx, shared=shared), 0, 4)
        results.append(ctx)
    for k in SHAPES:
        np.testing.assert_allclose(np.asarray(results[0][k]), np.asarray(results[1][k]), rtol=1e-6)


def test_an_optax_state_imports_as_one_shared_counter() -> None:
    tx = optax.adamw(0.1, weight_decay=0.1)
    params = {k: jnp.asarray(v) for k, v in values().items()}
    opt_state = tx.init(params)

    def optax_steps(params: Any, opt_state: Any, first: int, n: int) -> tuple[Any, Any]:
        for i in range(first, first + n):
            grads = {k: jnp.asarray(v) for k, v in gradients(i, ("w", "b")).items()}
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
        return params, opt_state

    params, opt_state = optax_steps(params, opt_state, 0, 3)
    ctx = RuntimeContext.from_pytree(params)
    opt, state = optim.import_optax_state(
        opt_state, ctx, optimizer=optim.adamw(lr=0.1, weight_decay=0.1)
    )
    assert counters(state) == ["step"]
    assert float(np.asarray(state["step"])) == 3.0 and int(np.asarray(state["count"])) == 3
    ctx, state = steps(opt, ctx, state, 3, 2)
    params, _ = optax_steps(params, opt_state, 3, 2)
    for k in SHAPES:
        np.testing.assert_allclose(np.asarray(ctx[k]), np.asarray(params[k]), rtol=1e-5, atol=1e-6)


def test_a_library_with_counters_per_parameter_splits_a_shared_one() -> None:
    # a shared state handed to torch contexts (read from a jax run's file, say)
    opt = optim.adamw(lr=0.1, weight_decay=0.1)
    ctx = context("torch")
    state = opt._init(ctx, shared=True)
    assert counters(state) == ["step"]
    for i in range(3):
        grads = {k: torch.tensor(v) for k, v in gradients(i, ("w", "b")).items()}
        ctx, state = opt.step(ctx.with_gradients(grads, adopt=True), state)
    assert counters(state) == ["step", "step/b", "step/w"]
    assert [float(state[f"step/{k}"]) for k in ("w", "b")] == [3.0, 3.0]
    reference = torch_reference([("w", "b")] * 3)
    for k in SHAPES:
        np.testing.assert_allclose(ctx[k].numpy(), reference[k], rtol=1e-5, atol=1e-5)
