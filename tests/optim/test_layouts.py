"""Parameters of any memory layout train as ``torch.optim`` trains them.

The fused kernels read and write raw memory element by element, so a parameter whose
gradient or state is laid out otherwise (a transposed weight: autograd gives a
contiguous gradient; a state read from a file: contiguous moments), or a parameter with
gaps (a strided slice of a bigger tensor), must go through copies laid out as the kernel
needs: else the numbers are wrong, and a parameter with gaps has memory it does not own
written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from torchlean import RuntimeContext, optim
from torchlean.autograd import value_and_grad

Layout = Callable[[torch.Tensor], torch.Tensor]

#: the weight's layout: its values are always ``W`` (read as a 4x4 matrix); only where
#: they lie changes
LAYOUTS: dict[str, Layout] = {
    "contiguous": lambda w: w.clone(),
    "transposed": lambda w: w.t().contiguous().t(),  # dense, strides (1, 4)
    "gaps": lambda w: torch.zeros(4, 8).index_copy(1, torch.arange(0, 8, 2), w)[:, ::2],
    "permuted-3d": lambda w: w.reshape(2, 2, 4).permute(2, 0, 1).contiguous().permute(1, 2, 0),
}

OPTIMIZERS: dict[str, tuple[Callable[[], Any], Callable[[list[torch.Tensor]], Any]]] = {
    "adamw": (
        lambda: optim.adamw(lr=0.01, weight_decay=0.1),
        lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
    ),
    "adam-amsgrad": (
        lambda: optim.adam(lr=0.01, amsgrad=True),
        lambda ps: torch.optim.Adam(ps, lr=0.01, amsgrad=True),
    ),
    "sgd-momentum": (
        lambda: optim.sgd(lr=0.05, momentum=0.9, weight_decay=0.01),
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.01),
    ),
    "adamw-clip": (  # not the planned step: the general updater
        lambda: optim.adamw(lr=0.01, weight_decay=0.1, clip=1e9),
        lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
    ),
}


def start() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 4, generator=g)
    return {"w": w, "b": torch.randn(4, generator=g)}, torch.randn(8, 4, generator=g)


def square_loss(p: Any, x: torch.Tensor) -> torch.Tensor:
    w = p["w"].reshape(4, 4)
    return (F.linear(x, w, p["b"]) ** 2).mean()


def reference(make: Callable[[list[torch.Tensor]], Any], steps: int) -> dict[str, torch.Tensor]:
    init, x = start()
    params = {k: v.clone().requires_grad_(True) for k, v in init.items()}
    opt = make(list(params.values()))
    for _ in range(steps):
        opt.zero_grad()
        square_loss(params, x).backward()
        opt.step()
    return {k: v.detach() for k, v in params.items()}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("donate", [True, False])
def test_a_weight_of_any_layout_trains_as_torch_optim(layout: str, name: str, donate: bool) -> None:
    ours, theirs = OPTIMIZERS[name]
    init, x = start()
    w = LAYOUTS[layout](init["w"])
    assert torch.equal(w.reshape(4, 4), init["w"])
    assert w.is_contiguous() == (layout == "contiguous")
    owner = w._base if layout == "gaps" else None  # the memory around a weight with gaps
    outside = None if owner is None else owner[:, 1::2].clone()
    ctx = RuntimeContext.empty().with_variables([("w", w), ("b", init["b"].clone())], adopt=True)
    opt = ours()
    state = opt.init(ctx)
    grad_fn = value_and_grad(square_loss)
    for _ in range(4):
        _, ctx = grad_fn(ctx, x)
        ctx, state = opt.step(ctx, state, donate=donate)
    expected = reference(theirs, 4)
    for k in ("w", "b"):
        torch.testing.assert_close(
            ctx[k].reshape(-1), expected[k].reshape(-1), rtol=1e-5, atol=1e-6
        )
    if owner is not None:
        assert torch.equal(owner[:, 1::2], outside)  # the gaps are not the weight's


@pytest.mark.parametrize("layout", ["transposed", "gaps"])
def test_state_laid_out_otherwise_than_its_weight_trains_as_torch_optim(layout: str) -> None:
    # moments read from a file are contiguous; the weight here is not
    init, x = start()
    opt = optim.adamw(lr=0.01, weight_decay=0.1)
    ctx = RuntimeContext.from_state_dict({k: v.clone() for k, v in init.items()})
    state = opt.init(ctx)
    grad_fn = value_and_grad(square_loss)
    for _ in range(2):
        _, ctx = grad_fn(ctx, x)
        ctx, state = opt.step(ctx, state)
    w = LAYOUTS[layout](ctx["w"])
    moved = RuntimeContext.empty().with_variables([("w", w), ("b", ctx["b"].clone())], adopt=True)
    moments = RuntimeContext.empty().with_variables(
        [(k, v.clone()) for k, v in state.state_dict().items()], adopt=True
    )
    for _ in range(2):
        _, moved = grad_fn(moved, x)
        moved, moments = opt.step(moved, moments)
    expected = reference(lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1), 4)
    for k in ("w", "b"):
        torch.testing.assert_close(moved[k], expected[k], rtol=1e-5, atol=1e-6)
