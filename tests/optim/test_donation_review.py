"""Donation never touches what the caller owns: every registration route (torch, jax,
numpy memory behind torch), views, DLPack-shared and ``from_numpy`` memory, a flax nnx
module's arrays, and a torch ``tree_map`` that hands the step views of the caller's
tensors; ``adopt=True`` is the one opt-in, and a stale context names the step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.utils._pytree as torch_pytree

from torchlean import RuntimeContext, optim
from torchlean.autograd import value_and_grad
from torchlean.errors import InPlaceModificationError, TorchLeanError
from torchlean.train import CapturedStep, fit


def torch_loss(ctx: RuntimeContext[Any]) -> Any:
    return sum((ctx[n].float() ** 2).sum() for n in ctx.variable_names())


def jax_loss(ctx: RuntimeContext[Any]) -> Any:
    return sum((ctx[n] ** 2).sum() for n in ctx.variable_names())


def train(ctx: RuntimeContext[Any], loss: Callable[..., Any], how: str) -> RuntimeContext[Any]:
    opt = optim.adamw(lr=0.1)
    if how == "fit":
        return fit(ctx, loss, opt, lambda step: (), steps=3, progress=False).ctx
    state = opt.init(ctx)
    for _ in range(3):
        _, ctx = value_and_grad(loss)(ctx)
        ctx, state = opt.step(ctx, state)
    return ctx


TORCH_ROUTES: dict[str, Callable[[torch.Tensor], RuntimeContext[Any]]] = {
    "register_variable": lambda w: RuntimeContext.empty().register_variable("w", w),
    "from_state_dict": lambda w: RuntimeContext.from_state_dict({"w": w}),
    "with_variables": lambda w: RuntimeContext.empty().with_variables({"w": w}),
    "from_pytree": lambda w: RuntimeContext.from_pytree({"m": {"w": w}}),
    "set_variable": lambda w: RuntimeContext.from_state_dict({"w": torch.zeros(6)}).set_variable(
        "w", w
    ),
    "views": lambda w: RuntimeContext.from_state_dict({"a": w[:2], "b": w[2:].view(2, 2)}),
    "tree_map_detach": lambda w: torch_pytree.tree_map(
        lambda t: t.detach(), RuntimeContext.from_state_dict({"w": w})
    ),
    "tree_map_view": lambda w: torch_pytree.tree_map(
        lambda t: t.view(2, 3), RuntimeContext.from_state_dict({"w": w})
    ),
    "tree_map_from_dlpack": lambda w: torch_pytree.tree_map(
        torch.from_dlpack, RuntimeContext.from_state_dict({"w": w})
    ),
    "tree_map_from_numpy": lambda w: torch_pytree.tree_map(
        lambda t: torch.from_numpy(t.numpy()), RuntimeContext.from_state_dict({"w": w})
    ),
    "tree_map_strided": lambda w: torch_pytree.tree_map(
        lambda t: t.view(2, 3).t(), RuntimeContext.from_state_dict({"w": w})
    ),
    "state_dict_adopted": lambda w: RuntimeContext.empty().with_variables(
        RuntimeContext.from_state_dict({"w": w}).state_dict(), adopt=True
    ),
}


def captured(ctx: RuntimeContext[Any]) -> RuntimeContext[Any]:
    opt = optim.adamw(lr=0.1)
    step, state = CapturedStep(torch_loss, opt, warmup=1), opt.init(ctx)
    for _ in range(4):
        _, ctx, state = step(ctx, state, ())
    return ctx


@pytest.mark.parametrize("how", ["step", "fit", "captured"])
@pytest.mark.parametrize("route", sorted(TORCH_ROUTES))
def test_a_torch_tensor_registered_by_any_route_keeps_its_values(route: str, how: str) -> None:
    w = torch.arange(1.0, 7.0)
    before = w.clone()
    ctx = TORCH_ROUTES[route](w)
    new = captured(ctx) if how == "captured" else train(ctx, torch_loss, how)
    assert torch.equal(w, before)
    assert w._version == 0
    assert all(float(v.abs().sum()) < float(before.abs().sum()) for v in new.state_dict().values())


@pytest.mark.parametrize("how", ["step", "fit"])
@pytest.mark.parametrize("source", ["from_numpy", "dlpack_numpy", "dlpack_jax"])
def test_memory_shared_with_numpy_or_jax_keeps_its_values(source: str, how: str) -> None:
    held: Any
    if source == "from_numpy":
        held = np.arange(1.0, 7.0, dtype=np.float32)
        w = torch.from_numpy(held)
    elif source == "dlpack_numpy":
        held = np.arange(1.0, 7.0, dtype=np.float32)
        w = torch.from_dlpack(held)
    else:
        held = jnp.arange(1.0, 7.0, dtype=jnp.float32)
        w = torch.from_dlpack(held)
    train(RuntimeContext.from_state_dict({"w": w}), torch_loss, how)
    np.testing.assert_array_equal(np.asarray(held), np.arange(1.0, 7.0, dtype=np.float32))


def test_a_tensor_under_two_names_is_refused_and_left_as_it_was() -> None:
    w = torch.arange(1.0, 7.0)
    ctx = RuntimeContext.from_state_dict({"a": w, "b": w})
    with pytest.raises(TorchLeanError, match="variables `a` and `b` share one buffer"):
        train(ctx, torch_loss, "step")
    assert torch.equal(w, torch.arange(1.0, 7.0)) and w._version == 0


def test_a_module_registered_with_from_module_keeps_its_parameters() -> None:
    module = torch.nn.Linear(3, 2)
    before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    for how in ("step", "fit"):
        train(RuntimeContext.from_module(module), torch_loss, how)
    for k, v in module.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("how", ["step", "fit"])
def test_adopt_is_the_opt_in_and_the_stale_context_names_the_step(how: str) -> None:
    w = torch.arange(1.0, 7.0)
    given = RuntimeContext.empty().with_variables({"w": w}, adopt=True)
    view = torch_pytree.tree_map(lambda t: t, given)  # another context over w's buffer
    train(given, torch_loss, how)
    assert not torch.equal(w, torch.arange(1.0, 7.0))  # updated in place, as asked
    with pytest.raises(InPlaceModificationError, match=r"updated in place by (adamw\.step|fit)"):
        view["w"]


@pytest.mark.parametrize("how", ["step", "fit"])
def test_jax_arrays_are_never_deleted(how: str) -> None:
    w = jnp.arange(1.0, 7.0)
    routes = [
        RuntimeContext.from_state_dict({"w": w}),
        RuntimeContext.empty().register_variable("w", w),
        RuntimeContext.empty().with_variables({"w": w}),
        RuntimeContext.from_pytree({"m": [w]}),
        jax.tree_util.tree_map(lambda x: x, RuntimeContext.from_state_dict({"w": w})),
    ]
    for ctx in routes:
        train(ctx, jax_loss, how)
        assert not w.is_deleted()
        np.testing.assert_array_equal(np.asarray(w), np.arange(1.0, 7.0))


@pytest.mark.parametrize("how", ["step", "fit"])
def test_a_flax_nnx_module_keeps_its_arrays(how: str) -> None:
    from flax import nnx

    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    kernel = model.kernel.get_value()
    before = np.asarray(kernel).copy()
    ctx = RuntimeContext.from_pytree(nnx.state(model, nnx.Param))
    train(ctx, jax_loss, how)
    assert not kernel.is_deleted()
    np.testing.assert_array_equal(np.asarray(model.kernel.get_value()), before)


def test_an_imported_torch_optimizer_state_keeps_its_moments() -> None:
    module = torch.nn.Linear(3, 2)
    torch_opt = torch.optim.AdamW(module.parameters(), lr=0.1)
    module(torch.ones(1, 3)).sum().backward()
    torch_opt.step()
    before = {(id(p), k): v.clone() for p, s in torch_opt.state.items() for k, v in s.items()}
    ctx = RuntimeContext.from_module(module)
    opt, state = optim.import_torch_state(torch_opt, ctx, model=module)
    for _ in range(2):
        _, ctx = value_and_grad(torch_loss)(ctx)
        ctx, state = opt.step(ctx, state)
    for p, s in torch_opt.state.items():
        for k, v in s.items():
            assert torch.equal(v, before[id(p), k]), k


def test_a_registered_parameter_is_weakly_referenced_so_torch_will_not_swap_it() -> None:
    # the price of remembering the caller's memory (docs/arrays.md): pinned, so that a
    # change of it is a decision
    model = torch.nn.Linear(2, 2)
    ctx = RuntimeContext.from_state_dict(dict(model.named_parameters()))
    with pytest.raises(RuntimeError, match="weakref"):
        torch.utils.swap_tensors(model.weight, torch.nn.Parameter(torch.zeros(2, 2)))
    copied = torch.nn.Linear(2, 2)
    RuntimeContext.from_module(copied)  # copies: the module's own tensors stay swappable
    torch.utils.swap_tensors(copied.weight, torch.nn.Parameter(torch.zeros(2, 2)))
    assert float(copied.weight.detach().abs().sum()) == 0.0
    assert ctx["weight"].shape == (2, 2)
