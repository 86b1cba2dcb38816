"""The exact texts of the errors raised by autograd, optim and train."""

from __future__ import annotations

import re

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from torchlean import RuntimeContext, optim
from torchlean.autograd import value_and_grad
from torchlean.errors import (
    BackendError,
    DonatedContextError,
    DTypeMismatchError,
    ExpectationError,
    FormatError,
    ShapeMismatchError,
    TorchLeanError,
    UnknownNameError,
)


def ctx() -> RuntimeContext[torch.Tensor]:
    return RuntimeContext.from_state_dict({"w": torch.ones(2, 3), "b": torch.ones(3)})


def exact(text: str) -> str:
    return "^" + re.escape(text) + "$"


def test_value_and_grad_messages() -> None:
    with pytest.raises(
        ShapeMismatchError,
        match=exact(
            "value_and_grad: fn must return a scalar loss (shape ()), got shape (2, 3);"
            " reduce it first (e.g. .mean() or .sum())"
        ),
    ):
        value_and_grad(lambda c: c["w"] * 2)(ctx())
    with pytest.raises(
        UnknownNameError,
        match=exact(
            "value_and_grad: frozen patterns `enc.*`, `x` match no variable"
            " (the context has 2 variable entries)"
        ),
    ):
        value_and_grad(lambda c: c["w"].sum(), frozen=["enc.*", "x", "b"])(ctx())
    with pytest.raises(
        BackendError,
        match=exact(
            "value_and_grad: variable `w` is a numpy array, which has no autograd;"
            " register torch tensors or jax arrays instead"
        ),
    ):
        value_and_grad(lambda c: c["w"].sum())(RuntimeContext.from_state_dict({"w": np.ones(2)}))
    with pytest.raises(
        BackendError,
        match=exact(
            "value_and_grad: the variables mix array libraries: torch (e.g. `w`), jax (e.g. `j`);"
            " differentiate one library's arrays at a time"
        ),
    ):
        value_and_grad(lambda c: c["w"].sum())(ctx().register_variable("j", jnp.ones(1)))
    with pytest.raises(
        TypeError,
        match=exact("value_and_grad(has_aux=True): fn must return a pair (loss, aux), got Tensor"),
    ):
        value_and_grad(lambda c: c["w"].sum(), has_aux=True)(ctx())


def test_step_messages() -> None:
    opt = optim.adam()
    state = opt.init(ctx())
    bad = ctx().register_gradient("w", torch.ones(3, 2))
    with pytest.raises(
        ShapeMismatchError,
        match=exact(
            "optimizer step: gradient `w` has shape (3, 2) but variable `w` has shape (2, 3);"
            " nothing was updated"
        ),
    ):
        opt.step(bad, state)
    many = (
        ctx()
        .register_gradient("w", torch.ones(3, 2))
        .register_gradient("b", torch.ones(3, dtype=torch.float64))
        .register_gradient("orphan", torch.ones(1))
    )
    with pytest.raises(
        ShapeMismatchError,
        match=exact(
            "optimizer step: 3 problems:\n"
            "- gradient `w` has shape (3, 2) but variable `w` has shape (2, 3)\n"
            "- gradient `b` is torch float64 but variable `b` is torch float32\n"
            "- gradient `orphan` has no variable of that name; nothing was updated"
        ),
    ):
        opt.step(many, state)
    with pytest.raises(DTypeMismatchError, match="gradient `b` is torch float64"):
        opt.step(ctx().register_gradient("b", torch.ones(3, dtype=torch.float64)), state)
    grown = ctx().register_variable("new", torch.ones(1)).register_gradient("new", torch.ones(1))
    with pytest.raises(
        UnknownNameError,
        match=exact(
            "optimizer step: variable `new` has no optimizer state; build the state with init(ctx)"
            " from a context that has this variable; nothing was updated"
        ),
    ):
        opt.step(grown, state)
    mixed = (
        ctx()
        .register_variable("n", np.ones(2, np.float32))
        .register_gradient("n", np.ones(2, np.float32))
        .register_gradient("b", torch.ones(3))
    )
    with pytest.raises(
        BackendError,
        match=exact(
            "optimizer step: the variables with gradients mix array libraries:"
            " numpy (e.g. `n`), torch (e.g. `b`); nothing was updated"
        ),
    ):
        opt.step(mixed, opt.init(mixed))
    shared = torch.ones(3)
    tied = RuntimeContext.from_state_dict({"a": shared, "b": shared})
    tied = tied.register_gradient("a", torch.ones(3)).register_gradient("b", torch.ones(3))
    with pytest.raises(
        TorchLeanError,
        match=exact(
            "optimizer step: variables `a` and `b` share one buffer, which an in-place step would"
            " update twice; register a copy (tensor.clone()) or pass donate=False;"
            " nothing was updated"
        ),
    ):
        opt.step(tied, opt.init(tied))
    assert tied["a"].tolist() == [1.0, 1.0, 1.0]
    good = ctx().register_gradient("b", torch.ones(3))
    opt.step(good, state)
    with pytest.raises(
        DonatedContextError,
        match=exact(
            "this context was donated to adam.step and can no longer be used;"
            " use the context that call returned"
        ),
    ):
        good.variable("b")


@pytest.mark.parametrize(
    ("call", "text"),
    [
        (lambda: optim.sgd(lr=-1.0), "invalid learning rate: -1.0"),
        (lambda: optim.sgd(momentum=-0.5), "invalid momentum value: -0.5"),
        (
            lambda: optim.sgd(lr=0.1, nesterov=True),
            "nesterov momentum requires a momentum and zero dampening",
        ),
        (lambda: optim.adam(betas=(1.0, 0.9)), "invalid beta parameter at index 0: 1.0"),
        (lambda: optim.adamw(eps=-1.0), "invalid epsilon value: -1.0"),
        (lambda: optim.adamw(weight_decay=-1.0), "invalid weight_decay value: -1.0"),
        (lambda: optim.cosine_decay(0.1, 0), "decay_steps must be a positive int, got 0"),
        (
            lambda: optim.warmup_cosine(0.1, 10, 5),
            "total_steps (5) must be larger than warmup_steps (10)",
        ),
    ],
)
def test_hyperparameter_messages(call: object, text: str) -> None:
    with pytest.raises(ValueError, match=exact(text)):
        call()  # type: ignore[operator]


def _loss(c: RuntimeContext[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return (c["w"] * x).sum()


def test_fit_messages(tmp_path: object) -> None:
    from pathlib import Path

    from torchlean.train import fit

    folder = Path(str(tmp_path))
    opt = optim.sgd(lr=0.1)
    one = torch.ones(2, 3)
    with pytest.raises(ValueError, match=exact("fit: steps must be >= 0, got -1")):
        fit(ctx(), _loss, opt, [one], steps=-1, progress=False)
    with pytest.raises(ValueError, match=exact("checkpoint_every needs a checkpoint_dir")):
        fit(ctx(), _loss, opt, [one], steps=1, checkpoint_every=1, progress=False)
    with pytest.raises(ValueError, match=exact("resume=True needs a checkpoint_dir")):
        fit(ctx(), _loss, opt, [one], steps=1, resume=True, progress=False)
    missing = folder / "nope.safetensors"
    text = f"cannot resume from {missing}: no such checkpoint file"
    with pytest.raises(FormatError, match=exact(text)):
        fit(ctx(), _loss, opt, [one], steps=1, resume=missing, progress=False)
    with pytest.raises(ValueError, match=exact("the data ran out of batches before the last step")):
        fit(ctx(), _loss, opt, [one, one], steps=3, progress=False)
    fit(
        ctx(),
        _loss,
        opt,
        [one] * 4,
        steps=4,
        checkpoint_dir=folder,
        checkpoint_every=4,
        progress=False,
    )
    with pytest.raises(
        ValueError,
        match=exact("resuming at step 4 needs 4 batches to skip, but the data has only 2"),
    ):
        fit(
            ctx(),
            _loss,
            opt,
            [one, one],
            steps=6,
            checkpoint_dir=folder,
            resume=True,
            progress=False,
        )
    other = RuntimeContext.from_state_dict({"w": torch.ones(3)})
    with pytest.raises(
        ExpectationError,
        match=exact(
            f"checkpoint {folder / 'step-000004.safetensors'} does not fit this model and"
            " optimizer:"
            " tensor `model/w` is float32 (2, 3) but float32 (3,) is expected;"
            " missing tensor `optim/momentum_buffer/w`;"
            " unexpected tensor `model/b`; unexpected tensor `optim/step/b`"
        ),
    ):
        fit(
            other,
            _loss,
            optim.sgd(lr=0.1, momentum=0.9),
            [one],
            steps=6,
            checkpoint_dir=folder,
            resume=True,
            progress=False,
        )
