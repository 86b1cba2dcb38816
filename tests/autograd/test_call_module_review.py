"""``call_module`` in the corners a real model reaches: the module changed between calls
(a submodule replaced, a parameter added, a ``None`` bias filled), activation
checkpointing inside the forward (``torch.utils.checkpoint`` recomputes in the backward
pass, after the swap is undone), two threads on one module, and a forward that raises
halfway through, each against ``functional_call`` or the plain PyTorch loop."""

from __future__ import annotations

import copy
import re
import threading
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from torchlean import RuntimeContext, optim
from torchlean.autograd import call_module, value_and_grad
from torchlean.errors import (
    BackendError,
    ExpectationError,
    InPlaceModificationError,
    ShapeMismatchError,
    TorchLeanError,
    UnknownNameError,
)


def _trained(ctx: RuntimeContext[Any]) -> RuntimeContext[Any]:
    """``ctx`` with every parameter moved away from the module's own values."""
    names = [n for n in ctx.variable_names() if ctx[n].is_floating_point()]
    return ctx.with_variables([(n, ctx[n] + 0.5) for n in names])


def test_a_replaced_submodule_gets_the_context_tensors() -> None:
    """The old submodule's slots still hold its tensors: the prepared swap must notice
    the new submodule, not write into the detached old one."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    ctx = _trained(RuntimeContext.from_module(model))
    x = torch.randn(3, 4)
    call_module(model, ctx, x)
    model[1] = nn.Linear(4, 2)
    own = model[1].weight
    want = functional_call(model, ctx.state_dict(), (x,))
    assert torch.equal(call_module(model, ctx, x), want)
    assert model[1].weight is own


def test_a_parameter_added_after_the_first_call_is_missing() -> None:
    model = nn.Linear(4, 2)
    ctx = RuntimeContext.from_module(model)
    call_module(model, ctx, torch.ones(1, 4))
    model.extra = nn.Parameter(torch.ones(2))
    with pytest.raises(UnknownNameError, match="the context has no variable for `extra`"):
        call_module(model, ctx, torch.ones(1, 4))


def test_a_none_bias_filled_after_the_first_call_is_missing() -> None:
    model = nn.Linear(4, 2, bias=False)
    ctx = RuntimeContext.from_module(model)
    call_module(model, ctx, torch.ones(1, 4))
    model.bias = nn.Parameter(torch.ones(2))
    with pytest.raises(UnknownNameError, match="the context has no variable for `bias`"):
        call_module(model, ctx, torch.ones(1, 4))


class Checkpointed(nn.Module):
    """A block run under non-reentrant activation checkpointing, with BatchNorm and an
    EMA buffer inside it: in train mode the recomputation updates them again, in the
    plain module as in the context."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 16)
        self.block = nn.Sequential(nn.Linear(16, 16), nn.BatchNorm1d(16), nn.Tanh())
        self.head = nn.Linear(16, 5)
        self.register_buffer("ema", torch.zeros(16))
        self.checkpointing = True

    def inner(self, h: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                self.ema.mul_(0.9).add_(h.mean(0), alpha=0.1)
        return self.block(h - self.ema) * h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        if self.checkpointing:
            return self.head(checkpoint(self.inner, h, use_reentrant=False))
        return self.head(self.inner(h))


def test_checkpointed_forward_trains_as_the_module(train_side_by_side: Any) -> None:
    """torch.utils.checkpoint recomputes the block in the backward pass, when the module
    holds its own tensors again: the gradients must still be the context's."""
    torch.manual_seed(0)
    model = Checkpointed()
    reference = copy.deepcopy(model)
    batches = [(torch.randn(6, 8), torch.randint(0, 5, (6,))) for _ in range(5)]
    want, got, ctx = train_side_by_side(reference, model, batches)
    torch.testing.assert_close(torch.stack(got), torch.stack(want), rtol=1e-5, atol=1e-6)
    state = ctx.state_dict()  # every entry read: nothing wrote the stored context
    for name, t in reference.state_dict().items():
        torch.testing.assert_close(state[name], t, rtol=1e-5, atol=1e-6, msg=name)
    # torch's recomputation updates the buffers a second time, and so does the context's
    assert int(state["block.1.num_batches_tracked"]) == 2 * len(batches)
    # the module's own tensors were never trained nor written
    assert int(model.block[1].num_batches_tracked) == 0
    assert model.ema.abs().sum() == 0


def test_checkpoint_recomputed_after_the_call_uses_that_call_tensors() -> None:
    """Two calls with two contexts in one loss, then one backward pass through both
    graphs: each recomputation gets its own call's tensors (the reference is the same
    module without checkpointing, which needs no recomputation)."""
    torch.manual_seed(0)
    model = Checkpointed().eval()
    plain = copy.deepcopy(model)
    plain.checkpointing = False
    ctx = RuntimeContext.from_module(model)
    other = _trained(ctx)
    x = torch.randn(4, 8)

    def loss_of(module: nn.Module) -> Any:
        def loss(c: RuntimeContext[Any]) -> Any:
            first = call_module(module, c, x)
            # the second call's input depends on the variables: its block is recomputed
            second = call_module(module, other, x * c["stem.bias"].sum())
            return first.square().sum() + second.square().sum()

        return loss

    got, ours = value_and_grad(loss_of(model))(ctx)
    want, theirs = value_and_grad(loss_of(plain))(ctx)
    torch.testing.assert_close(got, want)
    for name in ours.gradient_names():
        torch.testing.assert_close(ours.gradient(name), theirs.gradient(name), msg=name)


THREADS = (
    "call_module(Slow): another thread is running this module with its own tensors (the"
    " module's parameter slots hold one call's tensors at a time); give each thread its"
    " own copy of the module (copy.deepcopy)"
)


def test_two_threads_on_one_module_are_refused() -> None:
    """One thread's forward pass must never run on the other's tensors: the second
    caller is refused while the first one's call runs."""
    entered, release = threading.Event(), threading.Event()

    class Slow(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            entered.set()
            release.wait(10)
            return self.lin(x)

    model = Slow()
    ctx = RuntimeContext.from_module(model)
    results: list[Any] = []
    worker = threading.Thread(target=lambda: results.append(call_module(model, ctx, torch.ones(2))))
    worker.start()
    assert entered.wait(10)
    try:
        with pytest.raises(BackendError, match=re.escape(THREADS)):
            call_module(model, ctx, torch.ones(2))
    finally:
        release.set()
        worker.join(10)
    assert len(results) == 1
    # once the first call is done, the module is free again
    entered.clear()
    assert call_module(model, ctx, torch.ones(2)).shape == (2,)


def test_forward_raising_halfway_restores_reassigned_buffers() -> None:
    """A forward that reassigns a buffer and then raises: the module's own buffer and
    parameters are back, and the next call runs on the context again."""

    class Halfway(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.register_buffer("count", torch.zeros(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.count = self.count + 1
            self.lin.weight = nn.Parameter(torch.zeros(2, 2))
            raise ValueError("halfway")

    model = Halfway()
    own = dict(model.named_parameters()), dict(model.named_buffers())
    ctx = RuntimeContext.from_module(model)
    with pytest.raises(ValueError, match="halfway"):
        call_module(model, ctx, torch.ones(2))
    assert all(t is own[0][n] for n, t in model.named_parameters())
    assert all(t is own[1][n] for n, t in model.named_buffers())


WRITTEN = (
    "value_and_grad(loss): the loss wrote in place the context's `embed.weight` (the"
    " tensors it was given share memory with the context's); contexts never change, so"
    " that context can no longer be trusted. A module whose forward pass updates a"
    " parameter in place (nn.Embedding(max_norm=...) renormalizes the rows it looks up)"
    " cannot run on a context: apply that update to the new context's values outside the"
    " loss; a buffer the forward pass updates (BatchNorm's statistics, an EMA) trains"
    " through has_state=True, which hands the loss copies"
)


def test_a_forward_that_writes_a_parameter_in_place_is_refused_at_once() -> None:
    """nn.Embedding(max_norm=) renormalizes the rows it looks up in place, under
    no_grad: the leaf it writes shares memory with the stored context, so the loss
    changed a context that never changes. Refused by the call that did it, naming the
    variable (before, the next read of either context raised, without the cause)."""
    model = nn.Sequential()
    model.embed = nn.Embedding(10, 4, max_norm=1.0)
    ctx = RuntimeContext.from_module(model)

    def loss(c: RuntimeContext[Any]) -> Any:
        return call_module(model, c, torch.tensor([1, 2])).sum()

    with pytest.raises(InPlaceModificationError, match=re.escape(WRITTEN)):
        value_and_grad(loss)(ctx)
    assert model.embed.weight.norm(dim=1).max() > 1.0  # the module's own not renormed


def test_batchnorm_without_has_state_is_refused_at_once() -> None:
    """Without has_state the loss gets the stored buffers, which BatchNorm updates in
    place (num_batches_tracked shows it): refused by that call, naming it."""
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).train()
    ctx = RuntimeContext.from_module(model)
    with pytest.raises(InPlaceModificationError, match=r"the context's `1\.num_batches_tracked`"):
        value_and_grad(lambda c: call_module(model, c, torch.randn(4, 2)).sum())(ctx)


SHAPES = (
    "call_module(Linear): variable `bias` has shape (1,) but the module's `bias` has shape"
    " (3,) (a context of another configuration of the model?); build the context with"
    " RuntimeContext.from_module(module)"
)


def test_a_variable_of_another_shape_is_refused() -> None:
    """A bias of shape (1,) broadcasts in F.linear: without the check the module ran,
    silently, on a context of another configuration. strict=False keeps
    functional_call's behaviour (no check); a later context of the right shapes runs."""
    model = nn.Linear(4, 3)
    x = torch.ones(2, 4)
    good = RuntimeContext.from_module(model)
    call_module(model, good, x)  # prepared for these names
    bad = good.with_variables([("bias", torch.zeros(1))])
    with pytest.raises(ShapeMismatchError, match=re.escape(SHAPES)):
        call_module(model, bad, x)
    assert call_module(model, bad, x, strict=False).shape == (2, 3)
    assert torch.equal(call_module(model, good, x), model(x))


def test_a_context_missing_a_buffer_names_it() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ctx = RuntimeContext.from_module(model)
    partial = RuntimeContext.from_state_dict(
        {n: ctx[n] for n in ctx.variable_names() if "running_var" not in n}
    )
    with pytest.raises(UnknownNameError, match=r"the context has no variable for `1\.running_var`"):
        call_module(model, partial, torch.ones(3, 2))


FROZEN = (
    "call_module(Sequential): the module freezes `0.weight`, `0.bias` (requires_grad=False)"
    " but the context's tensors for them require grad, so they would be trained"
    " (torch.optim would leave them as they are); freeze them in the transformation"
    " (value_and_grad(loss, frozen=[...]) or fit(..., frozen=[...])) or unfreeze them in"
    " the module (requires_grad_(True))"
)


def test_a_parameter_the_module_freezes_is_not_trained_silently() -> None:
    """A backbone frozen with requires_grad_(False): torch.optim leaves it as it is (its
    .grad stays None). A context gives it a gradient unless it is frozen there too:
    refused, naming them; with frozen= the step trains the head as the plain loop."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 5))
    model[0].requires_grad_(False)
    reference = copy.deepcopy(model)
    x, y = torch.randn(6, 8), torch.randint(0, 5, (6,))
    ctx = RuntimeContext.from_module(model)

    def loss(c: RuntimeContext[Any]) -> Any:
        return F.cross_entropy(call_module(model, c, x), y)

    assert call_module(model, ctx, x).shape == (6, 5)  # no gradient asked: runs
    with pytest.raises(TorchLeanError, match=re.escape(FROZEN)):
        value_and_grad(loss)(ctx)
    adamw = optim.adamw(lr=1e-2)
    grad_fn = value_and_grad(loss, frozen="0.*")
    moments = adamw.init(ctx)
    opt = torch.optim.AdamW(reference.parameters(), lr=1e-2)
    for _ in range(3):
        _, ctx = grad_fn(ctx)
        ctx, moments = adamw.step(ctx, moments)
        opt.zero_grad()
        F.cross_entropy(reference(x), y).backward()
        opt.step()
    for name, t in reference.state_dict().items():
        torch.testing.assert_close(ctx[name], t, rtol=1e-5, atol=1e-6, msg=name)


UNTIED = (
    "call_module(TiedPair): the module ties `embed.weight` and `head.weight` (one tensor)"
    " but the context has a variable for each, which would train apart (keep one and tie"
    " the other to it with ctx.tie, or pass strict=False to run them untied); build the"
    " context with RuntimeContext.from_module(module)"
)


class TiedPair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(idx))


def test_a_context_that_unties_the_module_is_refused() -> None:
    """A file with both tied keys (a state_dict saved as is) read as two variables:
    each would get its own gradient and the tie would silently break after one step
    (functional_call refuses it too). Refused naming the pair; tied with ctx.tie (or
    built by from_module) it trains as one tensor."""
    model = TiedPair()
    both = RuntimeContext.from_state_dict({k: v.clone() for k, v in model.state_dict().items()})
    idx = torch.tensor([1, 2, 3])
    with pytest.raises(ExpectationError, match=re.escape(UNTIED)):
        call_module(model, both, idx)
    assert call_module(model, both, idx, strict=False).shape == (3, 10)
    one = RuntimeContext.from_state_dict({"embed.weight": both["embed.weight"]}).tie(
        "head.weight", to="embed.weight"
    )
    _, grads = value_and_grad(lambda c: call_module(model, c, idx).sum())(one)
    assert grads.gradient_names() == ["embed.weight"]


def test_a_call_inside_the_forward_of_another_restores_the_outer_tensors() -> None:
    """A forward pass that runs a submodule with another context: the inner call puts
    back what the outer call swapped in (not the module's own), the outer one then puts
    back the module's own."""

    class Outer(nn.Module):
        def __init__(self, side: RuntimeContext[Any]) -> None:
            super().__init__()
            self.inner, self.head = nn.Linear(4, 4), nn.Linear(4, 2)
            self.side = side

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(call_module(self.inner, self.side, x) + self.inner(x))

    torch.manual_seed(0)
    side = _trained(RuntimeContext.from_module(nn.Linear(4, 4)))
    model = Outer(side)
    own = dict(model.named_parameters())
    ctx = _trained(RuntimeContext.from_module(model))
    x = torch.randn(3, 4)
    p = ctx.state_dict()
    inner = F.linear(x, p["inner.weight"], p["inner.bias"])
    want = F.linear(
        F.linear(x, side["weight"], side["bias"]) + inner, p["head.weight"], p["head.bias"]
    )
    for _ in range(2):
        torch.testing.assert_close(call_module(model, ctx, x), want)
    assert all(t is own[n] for n, t in model.named_parameters())


def test_checkpointed_dropout_recomputes_the_same_mask() -> None:
    """Dropout inside the checkpointed part: torch replays the RNG state, and the
    recomputation runs on the call's tensors: the plain loop's numbers."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.head = nn.Linear(8, 16), nn.Linear(16, 5)
            self.block = nn.Sequential(nn.Linear(16, 16), nn.Dropout(0.3), nn.Tanh())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(checkpoint(self.block, self.stem(x), use_reentrant=False))

    torch.manual_seed(0)
    model = Net()
    reference = copy.deepcopy(model)
    x, y = torch.randn(6, 8), torch.randint(0, 5, (6,))
    opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    ctx = RuntimeContext.from_module(model)
    sgd = optim.sgd(lr=0.1)
    state = sgd.init(ctx)
    grad_fn = value_and_grad(lambda c: F.cross_entropy(call_module(model, c, x), y))
    for seed in range(3):
        torch.manual_seed(seed)
        opt.zero_grad()
        F.cross_entropy(reference(x), y).backward()
        opt.step()
        torch.manual_seed(seed)
        _, ctx = grad_fn(ctx)
        ctx, state = sgd.step(ctx, state)
    for name, t in reference.state_dict().items():
        torch.testing.assert_close(ctx[name], t, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("early_stop", [True, False])
def test_nested_checkpoints_train_as_the_module(early_stop: bool) -> None:
    """A checkpointed part that checkpoints a part of its own: the inner part is
    recomputed inside the outer recomputation (or after it, without early stop)."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.a = nn.Linear(8, 16), nn.Linear(16, 16)
            self.b, self.head = nn.Linear(16, 16), nn.Linear(16, 5)

        def inner(self, h: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.b(h)) * h

        def outer(self, h: torch.Tensor) -> torch.Tensor:
            return checkpoint(self.inner, torch.tanh(self.a(h)), use_reentrant=False) * h

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(checkpoint(self.outer, self.stem(x), use_reentrant=False))

    torch.manual_seed(0)
    model = Net()
    reference = copy.deepcopy(model)
    x, y = torch.randn(6, 8), torch.randint(0, 5, (6,))
    opt = torch.optim.SGD(reference.parameters(), lr=0.5)
    ctx = RuntimeContext.from_module(model)
    sgd = optim.sgd(lr=0.5)
    state = sgd.init(ctx)
    grad_fn = value_and_grad(lambda c: F.cross_entropy(call_module(model, c, x), y))
    with torch.utils.checkpoint.set_checkpoint_early_stop(early_stop):
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(reference(x), y).backward()
            opt.step()
            _, ctx = grad_fn(ctx)
            ctx, state = sgd.step(ctx, state)
    for name, t in reference.state_dict().items():
        torch.testing.assert_close(ctx[name], t, rtol=1e-5, atol=1e-6, msg=name)
