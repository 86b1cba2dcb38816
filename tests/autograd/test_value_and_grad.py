"""value_and_grad against analytic gradients and against plain torch / jax."""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from torchlean import RuntimeContext
from torchlean.autograd import differentiable_names, value_and_grad
from torchlean.errors import (
    BackendError,
    DTypeMismatchError,
    ShapeMismatchError,
    UnknownNameError,
)

W = np.array([[1.0, -2.0], [0.5, 3.0]], np.float32)
B = np.array([0.25, -1.0], np.float32)
X = np.array([[1.0, 2.0], [-1.0, 0.5], [3.0, 1.0]], np.float32)


def to(backend: str, a: np.ndarray) -> Any:
    return torch.tensor(a) if backend == "torch" else jnp.asarray(a)


def ctx_of(backend: str, **arrays: np.ndarray) -> RuntimeContext[Any]:
    return RuntimeContext.empty().register_variables({k: to(backend, v) for k, v in arrays.items()})


def quadratic(ctx: RuntimeContext[Any], x: Any) -> Any:
    # f = sum((x @ w + b)^2); df/dw = 2 x^T (x w + b); df/db = 2 sum_rows (x w + b)
    y = x @ ctx["w"] + ctx["b"]
    return (y * y).sum()


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_analytic_gradient_of_a_quadratic(backend: str) -> None:
    ctx = ctx_of(backend, w=W, b=B)
    value, new = value_and_grad(quadratic)(ctx, to(backend, X))
    y = X @ W + B
    np.testing.assert_allclose(np.asarray(value), (y * y).sum(), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(new.gradient("w")), 2 * X.T @ y, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(new.gradient("b")), 2 * y.sum(0), rtol=1e-6)
    assert new.gradient_names() == ["b", "w"]
    # variables are untouched and the original context has no gradients
    assert ctx.gradient_count() == 0
    np.testing.assert_array_equal(np.asarray(new["w"]), W)


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_unused_variable_gets_zero_gradient(backend: str) -> None:
    ctx = ctx_of(backend, w=W, b=B, unused=np.ones(3, np.float32))
    _, new = value_and_grad(quadratic)(ctx, to(backend, X))
    np.testing.assert_array_equal(np.asarray(new.gradient("unused")), np.zeros(3))


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_most_recent_entry_is_differentiated(backend: str) -> None:
    ctx = ctx_of(backend, w=W * 100, b=B).register_variable("w", to(backend, W))
    _, new = value_and_grad(quadratic)(ctx, to(backend, X))
    y = X @ W + B
    np.testing.assert_allclose(np.asarray(new.gradient("w")), 2 * X.T @ y, rtol=1e-6)
    assert new.gradient_count() == 2


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_replace_is_default_and_accumulate_adds(backend: str) -> None:
    ctx = ctx_of(backend, w=W, b=B)
    fn = value_and_grad(quadratic)
    _, once = fn(ctx, to(backend, X))
    _, replaced = fn(once, to(backend, X))
    assert replaced.gradient_count() == 2
    np.testing.assert_allclose(
        np.asarray(replaced.gradient("w")), np.asarray(once.gradient("w")), rtol=1e-6
    )
    _, summed = value_and_grad(quadratic, accumulate=True)(once, to(backend, X))
    assert summed.gradient_count() == 2
    np.testing.assert_allclose(
        np.asarray(summed.gradient("w")), 2 * np.asarray(once.gradient("w")), rtol=1e-6
    )


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_has_aux_and_frozen(backend: str) -> None:
    def loss(ctx: RuntimeContext[Any], x: Any) -> Any:
        y = x @ ctx["w"] + ctx["b"]
        return (y * y).sum(), {"y": y}

    ctx = ctx_of(backend, w=W, b=B)
    (value, aux), new = value_and_grad(loss, has_aux=True, frozen=["b*"])(ctx, to(backend, X))
    np.testing.assert_allclose(np.asarray(aux["y"]), X @ W + B, rtol=1e-6)
    assert new.gradient_names() == ["w"]
    if backend == "torch":
        assert not aux["y"].requires_grad and not value.requires_grad


def test_integer_variables_get_no_gradient() -> None:
    ctx = ctx_of("torch", w=W, b=B).register_variable("n", torch.tensor([1, 2]))
    assert differentiable_names(ctx) == ["w", "b"]


def test_gradients_are_usable_under_jax_jit() -> None:
    @jax.jit
    def grads(params: dict[str, Any], x: Any) -> dict[str, Any]:
        ctx = RuntimeContext.empty().register_variables(params)
        value, new = value_and_grad(quadratic)(ctx, x)
        return {"value": value, **new.state_dict(gradients=True)}

    out = grads({"w": jnp.asarray(W), "b": jnp.asarray(B)}, jnp.asarray(X))
    y = X @ W + B
    np.testing.assert_allclose(np.asarray(out["w"]), 2 * X.T @ y, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out["value"]), (y * y).sum(), rtol=1e-6)


def mlp_params(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "fc1.weight": rng.standard_normal((8, 4)).astype(np.float32) * 0.5,
        "fc1.bias": rng.standard_normal(8).astype(np.float32) * 0.1,
        "fc2.weight": rng.standard_normal((3, 8)).astype(np.float32) * 0.5,
        "fc2.bias": rng.standard_normal(3).astype(np.float32) * 0.1,
    }


def test_torch_mlp_matches_plain_torch() -> None:
    params = mlp_params(0)
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(16) % 3

    def loss(ctx: RuntimeContext[Any], x: Any, labels: Any) -> Any:
        h = torch.relu(x @ ctx["fc1.weight"].T + ctx["fc1.bias"])
        logits = h @ ctx["fc2.weight"].T + ctx["fc2.bias"]
        return torch.nn.functional.cross_entropy(logits, labels)

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    model.load_state_dict(
        {k.replace("fc1", "0").replace("fc2", "2"): torch.tensor(v) for k, v in params.items()}
    )
    expected = torch.nn.functional.cross_entropy(model(x), labels)
    expected.backward()

    ctx = RuntimeContext.from_state_dict({k: torch.tensor(v) for k, v in params.items()})
    value, new = value_and_grad(loss)(ctx, x, labels)
    torch.testing.assert_close(value, expected.detach())
    for name, p in model.named_parameters():
        ours = name.replace("0.", "fc1.").replace("2.", "fc2.")
        torch.testing.assert_close(new.gradient(ours), p.grad)


def test_jax_mlp_matches_plain_jax() -> None:
    params = {k: jnp.asarray(v) for k, v in mlp_params(0).items()}
    x = jnp.asarray(np.random.default_rng(1).standard_normal((16, 4)).astype(np.float32))
    labels = jnp.arange(16) % 3

    def plain(p: dict[str, Any], x: Any) -> Any:
        h = jax.nn.relu(x @ p["fc1.weight"].T + p["fc1.bias"])
        logits = h @ p["fc2.weight"].T + p["fc2.bias"]
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(16), labels])

    expected, grads = jax.value_and_grad(plain)(params, x)
    value, new = value_and_grad(lambda c, x: plain(c.state_dict(), x))(
        RuntimeContext.from_state_dict(params), x
    )
    np.testing.assert_allclose(np.asarray(value), np.asarray(expected), rtol=1e-6)
    for name in params:
        np.testing.assert_allclose(
            np.asarray(new.gradient(name)), np.asarray(grads[name]), rtol=1e-5, atol=1e-7
        )


def test_errors() -> None:
    ctx = ctx_of("torch", w=W, b=B)
    with pytest.raises(ShapeMismatchError, match=r"scalar loss \(shape \(\)\), got shape \(3, 2\)"):
        value_and_grad(lambda c, x: x @ c["w"])(ctx, torch.tensor(X))
    with pytest.raises(UnknownNameError, match=r"frozen pattern `enc\.\*` matches no variable"):
        value_and_grad(quadratic, frozen="enc.*")(ctx, torch.tensor(X))
    numpy_ctx = RuntimeContext.from_state_dict({"w": W})
    with pytest.raises(BackendError, match="variable `w` is a numpy array"):
        value_and_grad(lambda c: c["w"].sum())(numpy_ctx)
    mixed = ctx.register_variable("j", jnp.ones(2))
    with pytest.raises(BackendError, match="mix array libraries"):
        value_and_grad(lambda c: c["w"].sum())(mixed)


def test_accumulation_under_jax_jit() -> None:
    fn = jax.jit(value_and_grad(quadratic, accumulate=True))
    ctx = ctx_of("jax", w=W, b=B)
    _, once = fn(ctx, jnp.asarray(X))
    _, twice = fn(once, jnp.asarray(X))
    y = X @ W + B
    np.testing.assert_allclose(np.asarray(twice.gradient("b")), 4 * y.sum(0), rtol=1e-6)
    assert twice.gradient_count() == 2


def test_loss_reaching_no_variable_is_an_error() -> None:
    import torch

    from torchlean.errors import TorchLeanError
    from torchlean.runtime import RuntimeContext

    captured = torch.ones(3, requires_grad=True)
    ctx = RuntimeContext.empty().with_variables([("w", torch.ones(3)), ("b", torch.ones(2))])

    def loss(c: RuntimeContext[Any]) -> Any:
        return (captured * 2).sum()

    with pytest.raises(TorchLeanError) as e:
        value_and_grad(loss)(ctx)
    assert str(e.value) == (
        "value_and_grad(loss): the loss depends on none of the variables `w`, `b`, so every"
        " gradient would be zero; it depends on other tensors that require grad instead:"
        " parameters captured from outside the context, or a module that manages its own"
        " parameters (an FSDP2 module, after fully_shard, swaps its own sharded parameters"
        " in and ignores those functional_call passes: call functional_call on an unsharded"
        " module of the same class (built under torch.device('meta'), or a copy made before"
        " fully_shard) with the context's DTensors redistributed to Replicate() in the loss;"
        " docs/distributed.md, FSDP2); compute the loss from the context the"
        " function receives (ctx.get_variable / functional_call on it), not from tensors"
        " captured outside it"
    )
    with pytest.raises(TorchLeanError, match="so every gradient would be zero; compute"):
        value_and_grad(lambda c: torch.tensor(1.0))(ctx)


class _Marked(torch.Tensor):
    """A tensor subclass: the backward pass then goes through torch.autograd.grad."""


@pytest.mark.parametrize("kind", ["plain", "subclass", "complex"])
def test_engine_fast_path_agrees_with_autograd_grad(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The torch backend calls the autograd engine itself for plain tensors and a real
    loss (an unused variable gets zeros); a subclass and a complex loss go through
    torch.autograd.grad itself."""
    from torchlean.runtime.backends import torch as torch_backend

    w, b = torch.tensor(W), torch.tensor(B)
    if kind == "subclass":
        w = w.as_subclass(_Marked)
    ctx = RuntimeContext.empty().register_variables({"w": w, "b": b, "u": torch.ones(2)})
    x = torch.tensor(X)

    def loss(c: RuntimeContext[Any], x: torch.Tensor) -> Any:
        y = x @ c["w"] + c["b"]
        if kind == "complex":
            return (y * y).sum().to(torch.complex64)
        return (y * y).sum()

    value_and_grad(quadratic)(ctx_of("torch", w=W, b=B), torch.tensor(X))
    assert torch_backend._ENGINE[0] is not None  # this torch runs the fast path
    calls: list[int] = []
    grad = torch.autograd.grad

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counted)
    if kind == "complex":
        with pytest.raises(RuntimeError, match="real scalar outputs"):
            value_and_grad(loss)(ctx, x)
        return
    value, new = value_and_grad(loss)(ctx, x)
    assert bool(calls) == (kind == "subclass")  # (a subclass dispatches it once more)
    lw, lb = torch.tensor(W).requires_grad_(), torch.tensor(B).requires_grad_()
    want = grad(((x @ lw + lb) ** 2).sum(), [lw, lb])
    assert torch.equal(torch.as_tensor(new.gradient("w")), want[0])
    assert torch.equal(new.gradient("b"), want[1])
    assert torch.equal(new.gradient("u"), torch.zeros(2))  # unused: zeros
    assert not new.gradient("w").requires_grad and not value.requires_grad


@pytest.mark.parametrize("library", ["torch", "jax", "jax-jit"])
def test_a_new_state_of_another_dtype_or_shape_is_refused(library: str) -> None:
    # before: stored as returned, silently: an int counter became float32, a running
    # statistic of shape (2,) became (1,) (and a jitted loop retraced at every step)
    make = torch.tensor if library == "torch" else jnp.asarray
    counter = "int64" if library == "torch" else "int32"
    ctx = RuntimeContext.from_state_dict(
        {"w": make([1.0, 2.0]), "n": make(0), "m": make([0.0, 0.0])}
    ).mark_buffers(["n", "m"])

    def run(new: Any) -> Any:
        fn = value_and_grad(lambda c: (c["w"].sum(), new(c)), has_state=True)
        return (jax.jit(fn) if library == "jax-jit" else fn)(ctx)

    with pytest.raises(
        DTypeMismatchError,
        match=re.escape(
            "value_and_grad(<lambda>): the new state would change a variable's shape or"
            f" dtype: `n` is float32 (), the context holds {counter} (); return each in the"
            " dtype and shape it has (x.astype(...) / x.to(...))"
        ),
    ):
        run(lambda c: {"n": c["n"] + 0.5})
    with pytest.raises(
        ShapeMismatchError,
        match=re.escape("`m` is float32 (1,), the context holds float32 (2,)"),
    ):
        run(lambda c: {"m": c["w"][:1] * 0})
    _, out = run(lambda c: {"m": c["m"] + 1, "n": c["n"] + 1})
    assert int(out["n"]) == 1 and out["m"].shape == (2,)
