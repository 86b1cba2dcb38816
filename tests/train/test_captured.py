"""The captured step: the numbers of the eager step, and the promises of the contexts.

Every test runs on each device this machine has: on the CPU nothing records and the
step runs eagerly; on a CUDA device the step is a CUDA graph replayed from the third
call on.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from torchlean import RuntimeContext, optim
from torchlean.errors import (
    DonatedContextError,
    InPlaceModificationError,
    ShapeMismatchError,
    TorchLeanError,
)
from torchlean.train import CapturedStep, fit

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def model(device: str, *, flat: bool = False) -> RuntimeContext[Any]:
    g = torch.Generator().manual_seed(0)
    ctx = RuntimeContext.from_state_dict(
        {
            "fc1.weight": (torch.randn(16, 4, generator=g) * 0.5).to(device),
            "fc1.bias": torch.zeros(16, device=device),
            "fc2.weight": (torch.randn(3, 16, generator=g) * 0.5).to(device),
            "fc2.bias": torch.zeros(3, device=device),
        }
    )
    return optim.flatten(ctx) if flat else ctx


def loss(ctx: RuntimeContext[Any], x: Any, y: Any) -> Any:
    h = torch.relu(F.linear(x, ctx["fc1.weight"], ctx["fc1.bias"]))
    return F.cross_entropy(F.linear(h, ctx["fc2.weight"], ctx["fc2.bias"]), y)


def data(device: str) -> Any:
    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(100 + step)
        x = torch.randn(32, 4, generator=g)
        return x.to(device), (x[:, 0] > 0).long().to(device)

    return batch


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("device", DEVICES)
def test_fit_with_capture_gives_the_numbers_of_the_eager_fit(device: str, flat: bool) -> None:
    runs = []
    for capture in (False, True):
        result = fit(
            model(device, flat=flat),
            loss,
            optim.adamw(lr=0.05),
            data(device),
            steps=8,
            capture=capture,
            progress=False,
        )
        runs.append(result)
    eager, captured = runs
    assert captured.losses == pytest.approx(eager.losses, rel=1e-5, abs=1e-6)
    for name, value in eager.ctx.state_dict().items():
        torch.testing.assert_close(captured.ctx[name], value, rtol=1e-5, atol=1e-6)
    assert int(captured.state["count"]) == 8


@pytest.mark.parametrize("device", DEVICES)
def test_the_captured_step_keeps_the_promises_of_the_contexts(device: str) -> None:
    step = CapturedStep(loss, optim.adamw(lr=0.05))
    ctx = model(device)
    state = optim.adamw(lr=0.05).init(ctx)
    batch = data(device)
    history = []
    for i in range(4):
        given = ctx
        value, ctx, state = step(ctx, state, batch(i))
        history.append(given)
        assert torch.isfinite(value)
    # the caller's own context is never written (the first step updated copies) ...
    assert torch.equal(history[0].variable("fc1.weight"), model(device).variable("fc1.weight"))
    for used in history[1:]:  # ... the others are donated, or their buffers written
        with pytest.raises((DonatedContextError, InPlaceModificationError)):
            used.variable("fc1.weight")
    # a context sharing the buffers the replays write refuses to be read
    before = ctx.clear_gradients()
    value, ctx, state = step(ctx, state, batch(4))
    with pytest.raises(InPlaceModificationError):
        before.variable("fc1.weight")
    # the gradients of the last step are those of the eager step on the same values
    assert ctx.gradient("fc1.weight").shape == (16, 4)
    x, y = batch(5)
    wider = (torch.cat([x, x]), torch.cat([y, y]))
    if device == "cuda":
        with pytest.raises(ShapeMismatchError, match="captured step: batch argument 0 has shape"):
            step(ctx, state, wider)
    else:
        value, ctx, state = step(ctx, state, wider)  # nothing was recorded on the CPU
    ctx.variable("fc2.bias").add_(1)  # a write behind the contexts' back
    with pytest.raises(InPlaceModificationError):
        step(ctx, state, batch(6))


def test_what_a_recording_cannot_do_is_refused() -> None:
    with pytest.raises(TorchLeanError, match="the learning rate is a schedule"):
        CapturedStep(loss, optim.adamw(lr=optim.linear_warmup(0.1, 3)))
    with pytest.raises(ValueError, match="capture=True replays the step in place"):
        fit(model("cpu"), loss, optim.sgd(lr=0.1), data("cpu"), steps=1, donate=False, capture=True)
    with pytest.raises(TypeError, match="fit: capture must be a bool"):
        fit(model("cpu"), loss, optim.sgd(lr=0.1), data("cpu"), steps=1, capture=1)  # type: ignore[arg-type]
