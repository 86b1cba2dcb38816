"""The captured step: the numbers of the eager step, and the promises of the contexts.

Every test runs on each device this machine has: on the CPU nothing records and the
step runs eagerly; on a CUDA device the step is a CUDA graph replayed from the third
call on.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from torchlean import RuntimeContext, optim
from torchlean.errors import (
    DonatedContextError,
    DTypeMismatchError,
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


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``TorchBackend.capture`` "records" on the CPU too: the recording runs the step's
    Python once, a replay only notes that it ran (the checks around it are what these
    tests exercise; the numbers of a real replay are tested on CUDA above)."""
    from torchlean.runtime.backends.torch import TorchBackend

    log: list[str] = []

    def capture(self: Any, fn: Any, *, like: Any) -> Any:
        out = fn()
        log.append("record")
        return out, lambda: log.append("replay")

    monkeypatch.setattr(TorchBackend, "capture", capture)
    return log


def recorded(log: list[str], *extra: Any) -> tuple[CapturedStep, Any, Any]:
    """A step that has recorded and replayed once, and the contexts it returned."""
    opt = optim.adamw(lr=0.05)
    step = CapturedStep(lambda c, x, y, *_: loss(c, x, y), opt)
    ctx = model("cpu")
    state = opt.init(ctx)
    for i in range(4):
        _, ctx, state = step(ctx, state, (*data("cpu")(i), *extra))
    assert log == ["record", "replay", "replay"]  # the recording's own step, then step 4
    return step, ctx, state


def test_a_replay_needs_the_contexts_it_returned_unwritten(recorder: list[str]) -> None:
    step, ctx, state = recorded(recorder)
    # another context (equal values) runs the eager step, and records again later
    other = RuntimeContext.from_state_dict({k: v.clone() for k, v in ctx.state_dict().items()})
    _, other, state = step(other, state, data("cpu")(5))
    assert recorder.count("replay") == 2
    for i in range(6, 9):  # the second eager warm-up step, a new recording, a replay
        _, other, state = step(other, state, data("cpu")(i))
    assert recorder == ["record", "replay", "replay", "record", "replay", "replay"]
    recorder.clear()
    # a gradient written in place is not replayed on: the eager step replaces it
    step, ctx, state = recorded(recorder)
    recorder.clear()
    ctx.gradient("fc2.bias").zero_()
    _, ctx, state = step(ctx, state, data("cpu")(5))
    assert recorder == [] and bool(ctx.gradient("fc2.bias").abs().sum() > 0)
    recorder.clear()
    # a variable or a state entry written in place is refused, not replayed
    for write in (
        lambda c, s: c.variable("fc1.weight").add_(1),
        lambda c, s: s.variable("exp_avg/fc1.bias").add_(1),
    ):
        step, ctx, state = recorded(recorder)
        recorder.clear()
        write(ctx, state)
        with pytest.raises(InPlaceModificationError):
            step(ctx, state, data("cpu")(5))
        assert "replay" not in recorder
        recorder.clear()
    # a context it returned earlier (donated) is refused
    step, ctx, state = recorded(recorder)
    step(ctx, state, data("cpu")(5))
    with pytest.raises(DonatedContextError):
        step(ctx, state, data("cpu")(6))


def test_a_replay_refuses_another_batch(recorder: list[str]) -> None:
    step, ctx, state = recorded(recorder)
    x, y = data("cpu")(5)
    with pytest.raises(ShapeMismatchError, match="captured step: batch argument 0 has shape"):
        step(ctx, state, (x[:8], y[:8]))
    with pytest.raises(
        DTypeMismatchError,
        match=re.escape(
            "captured step: batch argument 0 is float64 but the step was recorded for float32"
        ),
    ):
        step(ctx, state, (x.double(), y))
    with pytest.raises(TorchLeanError, match="recorded with 2 batch arguments, got 1"):
        step(ctx, state, (x,))
    assert recorder == ["record", "replay", "replay"]


def test_a_replay_refuses_a_constant_that_changed(recorder: list[str]) -> None:
    # a number given as a Python value is baked into the recording
    recorder.clear()
    step, ctx, state = recorded(recorder, 0.5)
    with pytest.raises(
        TorchLeanError,
        match=re.escape(
            "captured step: batch argument 2 is not an array, so its value 0.5 was"
            " recorded, got 0.25; pass it as an array"
        ),
    ):
        step(ctx, state, (*data("cpu")(5), 0.25))
    _, ctx, state = step(ctx, state, (*data("cpu")(5), 0.5))  # the same value replays
    # a list changed in place since the recording is refused (it was accepted before)
    recorder.clear()
    weights = [1.0, 2.0]
    step, ctx, state = recorded(recorder, weights)
    weights[0] = 3.0
    with pytest.raises(
        TorchLeanError,
        match=re.escape(
            "captured step: batch argument 2 is not an array, so its value [1.0, 2.0] was"
            " recorded, got [3.0, 2.0]; pass it as an array"
        ),
    ):
        step(ctx, state, (*data("cpu")(5), weights))
    # an object compared by identity (a module) replays when it is the same object
    recorder.clear()
    head = torch.nn.Linear(2, 2)
    step, ctx, state = recorded(recorder, head)
    _, ctx, state = step(ctx, state, (*data("cpu")(5), head))
    with pytest.raises(TorchLeanError, match="batch argument 2 is not an array"):
        step(ctx, state, (*data("cpu")(6), torch.nn.Linear(2, 2)))
    # and is not copied when recorded (a model given as an argument is not deep-copied)

    copies: list[object] = []

    class Watched:
        def __deepcopy__(self, memo: Any) -> Any:
            copies.append(self)
            return Watched()

    recorder.clear()
    watched = Watched()
    step, ctx, state = recorded(recorder, watched)
    _, ctx, state = step(ctx, state, (*data("cpu")(5), watched))
    assert copies == []


def test_an_array_of_another_library_is_refused_when_recording(recorder: list[str]) -> None:
    # before: a numpy argument recorded, then the replay raised numpy's "truth value of an
    # array ... is ambiguous"; its elements would be baked into a CUDA graph
    step = CapturedStep(lambda c, x, y, w: loss(c, x, y), optim.sgd(lr=0.1))
    ctx = model("cpu")
    state = optim.sgd(lr=0.1).init(ctx)
    w = np.ones(3)
    for _ in range(2):
        _, ctx, state = step(ctx, state, (*data("cpu")(0), w))
    with pytest.raises(
        TorchLeanError,
        match=re.escape(
            "captured step: batch argument 2 is a ndarray, not a torch array, and == does"
            " not compare it to a bool, so a replay could not tell a new value from the"
            " recorded one; pass it as a torch array"
        ),
    ):
        step(ctx, state, (*data("cpu")(0), w))
    assert recorder == []
    assert ctx.variable("fc1.weight").shape == (16, 4)  # the refusal donated nothing


def test_a_schedule_in_a_parameter_group_is_refused() -> None:
    # before: only the optimizer's own lr was checked; a group's schedule was baked into
    # the recording at the recorded step's value, and every replay used it
    with pytest.raises(
        TorchLeanError,
        match=re.escape(
            "captured step: the learning rate of groups[1] is a schedule, which reads the"
            " step count on the host at every step; a recorded step cannot. Use a number,"
            " or the eager step"
        ),
    ):
        CapturedStep(
            loss,
            optim.sgd(
                lr=0.1,
                groups=[
                    {"params": "fc1.*", "lr": 0.2},
                    {"params": "fc2.*", "lr": optim.linear_warmup(0.1, 3)},
                ],
            ),
        )
    with pytest.raises(TorchLeanError, match="learning rate of groups"):
        fit(
            model("cpu"),
            loss,
            optim.sgd(lr=0.1, groups=[{"params": "fc1.*", "lr": lambda c: 0.1}]),
            data("cpu"),
            steps=1,
            capture=True,
        )


def test_a_step_that_is_not_in_place_is_replayed_once_only(recorder: list[str]) -> None:
    # The first step on a fresh state writes new tensors (the counters gathered into one
    # buffer, the caller's tensors copied): a recording of it reads the old ones at every
    # replay. Before, warmup=0 (or 1 on such a layout) replayed it from then on: every
    # step the same update of the starting values, silently.
    opt = optim.adamw(lr=0.05)
    ctx = model("cpu")
    state = opt.init(ctx)
    step = CapturedStep(loss, opt, warmup=0)
    for i in range(4):
        _, ctx, state = step(ctx, state, data("cpu")(i))
    # step 1 recorded and run once, not kept; step 2 recorded (in place) and kept
    assert recorder == ["record", "replay", "record", "replay", "replay", "replay"]
    for bad in (-1, 1.5, "2", True):
        with pytest.raises(
            TypeError,
            match=re.escape(
                f"CapturedStep: warmup must be a number of steps (an int >= 0), got {bad!r}"
            ),
        ):
            CapturedStep(loss, opt, warmup=bad)  # type: ignore[arg-type]
