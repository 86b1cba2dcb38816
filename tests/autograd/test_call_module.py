"""``call_module``: a module run with a context's tensors, against ``functional_call``.

Same outputs and gradients (tied weights included), the module's own tensors back after
the call and after a forward pass that raises, buffers read back (in place and
reassigned), the prepared swap redone when the module's tensors or the context's names
change, and every name problem in one message."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from torchlean import RuntimeContext
from torchlean.autograd import call_module, value_and_grad
from torchlean.errors import InPlaceModificationError, UnknownNameError


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.norm = nn.BatchNorm1d(4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, idx: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
        return self.head(self.norm(self.embed(idx)) * scale)


class Reassigns(nn.Module):
    """A module that replaces a buffer (not in place) in its forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.register_buffer("calls", torch.zeros(()))
        self.register_buffer("scratch", torch.zeros(3), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls = self.calls + 1
        return self.lin(x)


def _snapshot(model: nn.Module) -> dict[str, Any]:
    return {n: t for n, t in [*model.named_parameters(), *model.named_buffers()]}


def test_outputs_and_gradients_equal_functional_call() -> None:
    torch.manual_seed(0)
    model = Tied().eval()
    ctx = RuntimeContext.from_module(model)
    assert ctx.aliases() == {"head.weight": "embed.weight"}
    idx = torch.tensor([1, 2, 3, 4])
    before = _snapshot(model)

    def ours(c: RuntimeContext[Any], idx: torch.Tensor) -> Any:
        return call_module(model, c, (idx,), {"scale": 2.0}).square().mean()

    def theirs(c: RuntimeContext[Any], idx: torch.Tensor) -> Any:
        return functional_call(model, c.state_dict(), (idx,), {"scale": 2.0}).square().mean()

    for _ in range(2):  # the second call runs on the prepared swap
        (a, ca), (b, cb) = value_and_grad(ours)(ctx, idx), value_and_grad(theirs)(ctx, idx)
        assert torch.equal(a, b)
        for name in ["embed.weight", "norm.weight", "norm.bias"]:
            assert torch.equal(ca.gradient(name), cb.gradient(name)), name
    # the tie reached the head: its gradient is in the embedding's
    assert ca.gradient("embed.weight").abs().sum() > 0
    after = _snapshot(model)
    assert after.keys() == before.keys()
    assert all(after[n] is before[n] for n in before)
    assert model.head.weight is model.embed.weight


def test_module_tensors_restored_when_forward_raises() -> None:
    model = Tied()
    ctx = RuntimeContext.from_module(model)
    before = _snapshot(model)
    with pytest.raises(IndexError):
        call_module(model, ctx, torch.tensor([99]))  # out of the embedding's range
    after = _snapshot(model)
    assert all(after[n] is before[n] for n in before)


def test_state_returns_buffers_in_place_and_reassigned() -> None:
    model = Tied().train()
    ctx = RuntimeContext.from_module(model)
    idx = torch.tensor([1, 2, 3, 4])

    def loss(c: RuntimeContext[Any], idx: torch.Tensor) -> Any:
        out, state = call_module(model, c, idx, state=True)
        assert sorted(state) == [
            "norm.num_batches_tracked",
            "norm.running_mean",
            "norm.running_var",
        ]
        return out.sum(), state

    _, new = value_and_grad(loss, has_state=True)(ctx, idx)
    assert int(new["norm.num_batches_tracked"]) == 1
    # the same names, other roles: the prepared swap is made again (one more buffer)
    marked = new.mark_buffers("norm.bias")
    _, state = call_module(model.eval(), marked, idx, state=True)
    assert "norm.bias" in state and state["norm.bias"] is marked["norm.bias"]
    model.train()
    assert int(ctx["norm.num_batches_tracked"]) == 0  # the loss got copies
    assert int(model.norm.num_batches_tracked) == 0  # and the module kept its own

    other = Reassigns()
    octx = RuntimeContext.from_module(other)
    assert octx.buffers() == ["calls"]  # the non-persistent buffer is not in the context
    out, state = call_module(other, octx, torch.ones(2, 3), state=True)
    assert out.shape == (2, 3) and float(state["calls"]) == 1.0
    assert float(other.calls) == 0.0 and float(octx["calls"]) == 0.0


def test_prepared_swap_follows_module_and_context_changes() -> None:
    model = nn.Sequential(nn.Linear(3, 2))
    ctx = RuntimeContext.from_module(model)
    x = torch.ones(1, 3)
    want = functional_call(model, ctx.state_dict(), (x,))
    assert torch.equal(call_module(model, ctx, x), want)
    # the module's parameter replaced: the swap is prepared again, the new one restored
    replacement = nn.Parameter(torch.zeros(2, 3))
    model[0].weight = replacement
    assert torch.equal(call_module(model, ctx, x), want)
    assert model[0].weight is replacement
    # other names in the context: prepared again (here the bias is missing)
    weight_only = RuntimeContext.from_state_dict({"0.weight": ctx["0.weight"]})
    got = call_module(model, weight_only, x, strict=False)
    assert torch.equal(got, x @ ctx["0.weight"].T + model[0].bias.detach())
    # an alias of the context fills a name the module does not tie
    untied = nn.ModuleDict({"a": nn.Linear(2, 2, bias=False), "b": nn.Linear(2, 2, bias=False)})

    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = untied

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner["b"](self.inner["a"](x))

    two = Two()
    tied = RuntimeContext.from_state_dict({"inner.a.weight": 2 * torch.eye(2)}).tie(
        "inner.b.weight", to="inner.a.weight"
    )
    assert torch.equal(call_module(two, tied, torch.ones(1, 2)), torch.full((1, 2), 4.0))


def test_in_place_write_of_the_context_is_caught() -> None:
    model = nn.Linear(2, 2)
    ctx = RuntimeContext.from_module(model)
    ctx["weight"].add_(1)
    with pytest.raises(InPlaceModificationError, match="variable `weight` was modified in place"):
        call_module(model, ctx, torch.ones(1, 2))


def test_name_problems_in_one_message() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    ctx = RuntimeContext.from_state_dict({"0.weight": torch.ones(2, 2), "x.w": torch.ones(1)})
    with pytest.raises(UnknownNameError) as info:
        call_module(model, ctx, torch.ones(1, 2))
    assert str(info.value) == (
        "call_module(Sequential): the module has no parameter or buffer `x.w`; the context"
        " has no variable for `0.bias`, `1.weight`, `1.bias` (pass strict=False to keep the"
        " module's own); build the context with RuntimeContext.from_module(module)"
    )
    # strict=False: the missing names keep the module's own; unknown names still raise
    with pytest.raises(UnknownNameError, match=r"has no parameter or buffer `x.w`; build"):
        call_module(model, ctx, torch.ones(1, 2), strict=False)


def test_trains_like_the_module() -> None:
    torch.manual_seed(0)
    model = Tied().train()
    reference = Tied().train()
    reference.load_state_dict(model.state_dict())
    ctx = RuntimeContext.from_module(model)
    idx = torch.tensor([1, 2, 3, 4, 5])
    y = torch.tensor([2, 3, 4, 5, 6])

    def loss(c: RuntimeContext[Any]) -> Any:
        out, state = call_module(model, c, idx, state=True)
        return F.cross_entropy(out, y), state

    grad_fn = value_and_grad(loss, has_state=True)
    for _ in range(3):
        value, ctx = grad_fn(ctx)
        ref = F.cross_entropy(reference(idx), y)
        assert torch.equal(value, ref.detach())
        ctx = ctx.with_variables(
            [(n, ctx[n] - 0.1 * ctx.gradient(n)) for n in ctx.gradient_names()]
        )
        reference.zero_grad()
        ref.backward()
        with torch.no_grad():
            for p in reference.parameters():
                p -= 0.1 * p.grad
    for name, t in reference.state_dict().items():
        assert torch.equal(ctx[name], t), name


def test_batchnorm_writing_a_stored_context_is_caught() -> None:
    """Outside value_and_grad(has_state=True) BatchNorm updates the context's own buffers
    in place: the context then refuses to be read, as for any in-place write."""
    model = nn.BatchNorm1d(2).train()
    ctx = RuntimeContext.from_module(model)
    call_module(model, ctx, torch.randn(4, 2))
    # (torch's CPU batch_norm kernel writes running_mean and running_var without bumping
    # their version counters; the add_ to num_batches_tracked is what shows the write)
    with pytest.raises(InPlaceModificationError, match="`num_batches_tracked` was modified"):
        ctx.state_dict()
    assert int(model.num_batches_tracked) == 0  # the module's own buffers were not


def test_write_inside_the_loss_before_the_call_is_caught() -> None:
    """value_and_grad's inner context is read back by call_module checking versions only
    (the records it just wrote): a write through it in between is still caught, and the
    stored context's buffers and the module's own are untouched."""
    model = Tied().train()
    ctx = RuntimeContext.from_module(model)
    idx = torch.tensor([1, 2, 3])
    kept = {n: ctx[n].clone() for n in ctx.buffers()}

    def loss(c: RuntimeContext[Any], write: bool) -> Any:
        if write:
            c["norm.num_batches_tracked"].add_(5)
        out, state = call_module(model, c, idx, state=True)
        return out.sum(), state

    grad_fn = value_and_grad(loss, has_state=True)
    _, new = grad_fn(ctx, False)  # the layout cached, the buffers landed
    assert int(new["norm.num_batches_tracked"]) == 1
    with pytest.raises(
        InPlaceModificationError, match=r"`norm\.num_batches_tracked` was modified in place"
    ):
        grad_fn(new, True)
    for name, value in kept.items():
        assert torch.equal(ctx[name], value), name
    assert int(new["norm.num_batches_tracked"]) == 1
    assert int(model.norm.num_batches_tracked) == 0


@pytest.mark.parametrize("state", [False, True])
def test_the_inner_context_is_not_kept_after_the_call(state: bool) -> None:
    """The read call_module checks by versions only is forgotten when the loss returns:
    nothing keeps the leaves handed to the loss alive."""
    model = Tied().train() if state else nn.Linear(4, 3)
    ctx = RuntimeContext.from_module(model)
    name = "embed.weight" if state else "weight"
    x = torch.tensor([1, 2]) if state else torch.ones(2, 4)
    leaves: list[Any] = []

    def loss(c: RuntimeContext[Any]) -> Any:
        leaves.append(weakref.ref(c[name]))
        if state:
            out, new_state = call_module(model, c, x, state=True)
            return out.sum(), new_state
        return call_module(model, c, x).sum()

    _, new = value_and_grad(loss, has_state=state)(ctx)
    gc.collect()
    assert leaves[0]() is None
    assert new.gradient(name).shape == ctx[name].shape


def test_returned_buffers_are_stored_without_autograd_history() -> None:
    """The copies a loss returns are stored as they are, unless the loss made one
    require grad: that one is stored detached, as any returned state is."""
    model = Tied().train()
    ctx = RuntimeContext.from_module(model)

    def loss(c: RuntimeContext[Any], grad: bool) -> Any:
        out, state = call_module(model, c, torch.tensor([1, 2]), state=True)
        if grad:
            state["norm.running_mean"].requires_grad_(True)
        return out.sum(), state

    grad_fn = value_and_grad(loss, has_state=True)
    for grad in (False, True, False):
        _, ctx = grad_fn(ctx, grad)
        assert not any(ctx[n].requires_grad for n in ctx.buffers())
    assert int(ctx["norm.num_batches_tracked"]) == 3
