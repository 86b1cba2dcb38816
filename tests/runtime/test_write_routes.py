"""Routes that write a stored tensor behind a context's back: detected, or impossible.

Issue 10, cases 2 and 12, and lone-surrogate names: torch's fused optimizers (no version
bump), DLPack writes over CPython's shared 1-byte ``bytes``, arrays made writeable again
up the ``.base`` chain.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from torchlean import RuntimeContext, optim
from torchlean.errors import InPlaceModificationError

FUSED = [torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD, torch.optim.Adagrad]


@pytest.mark.parametrize("kind", FUSED, ids=lambda c: c.__name__)
@pytest.mark.parametrize("fused", [True, False])
def test_a_torch_optimizer_step_is_detected(kind: Any, fused: bool) -> None:
    m = torch.nn.Linear(3, 2)
    ctx = RuntimeContext.from_state_dict(dict(m.named_parameters()))
    for p in m.parameters():
        p.grad = torch.ones_like(p)
    kind(m.parameters(), lr=0.1, fused=fused).step()
    with pytest.raises(InPlaceModificationError, match="variable `weight` was modified in place"):
        ctx["weight"]
    with pytest.raises(InPlaceModificationError):
        ctx.state_dict()


def test_a_fused_step_on_state_dict_tensors_is_detected() -> None:
    # state_dict() tensors are detached (requires_grad False) but share the counter
    m = torch.nn.Linear(3, 2)
    ctx = RuntimeContext.from_state_dict(m.state_dict())
    for p in m.parameters():
        p.grad = torch.ones_like(p)
    torch.optim.AdamW(m.parameters(), fused=True).step()
    with pytest.raises(InPlaceModificationError):
        ctx["bias"]


def test_a_one_byte_array_never_shares_cpythons_cached_bytes() -> None:
    a = RuntimeContext.empty().register_variable("flag", np.array(False))
    b = RuntimeContext.empty().register_variable("flag", np.array(False))
    loaded = RuntimeContext.empty().register_variable("x", np.frombuffer(b"\x00", np.uint8))
    # a write through DLPack ignores numpy's read-only flag: it must stay in `a`
    torch.from_dlpack(a["flag"]).logical_not_()
    assert bool(b["flag"]) is False
    assert int(loaded["x"][0]) == 0
    assert b"\x00"[0] == 0


def _writeable_up_the_chain(x: np.ndarray) -> bool:
    chain = [x]
    while isinstance(chain[-1].base, np.ndarray):
        chain.append(chain[-1].base)
    for a in reversed(chain):
        try:
            a.setflags(write=True)
        except ValueError:
            return False
    return True


def test_optimizer_and_accumulated_results_cannot_be_made_writeable() -> None:
    ctx = RuntimeContext.from_state_dict({"w": np.ones(3, np.float32)})
    ctx = ctx.register_gradient("w", np.ones(3, np.float32))
    ctx = ctx.accumulate_gradient("w", np.ones(3, np.float32))
    assert not _writeable_up_the_chain(ctx.gradient("w"))
    np.testing.assert_array_equal(ctx.gradient("w"), np.full(3, 2, np.float32))
    opt = optim.adam(lr=0.1)
    new, state = opt.step(ctx, opt.init(ctx))
    assert not _writeable_up_the_chain(new["w"])
    for name in state.variable_names():
        assert not _writeable_up_the_chain(state[name]), name


@pytest.mark.parametrize("name", ["a\udc80", "\ud800", "layer.\udfff.weight"])
def test_a_name_with_a_lone_surrogate_is_refused_when_stored(name: str) -> None:
    x = np.zeros(2, np.float32)
    ctx = RuntimeContext.empty()
    for call in (
        lambda: ctx.register_variable(name, x),
        lambda: ctx.register_variables({name: x}),
        lambda: ctx.register_gradient(name, x),
        lambda: ctx.accumulate_gradient(name, x),
        lambda: ctx.with_variables({name: x}),
        lambda: RuntimeContext.from_registries([(name, x)]),
    ):
        with pytest.raises(ValueError, match="has a lone surrogate"):
            call()


def test_names_that_are_not_ascii_are_fine() -> None:
    ctx = RuntimeContext.empty().register_variable("poids_é_λ_😀", np.zeros(1))
    assert ctx.variable_names() == ["poids_é_λ_😀"]


def test_batch_norm_running_statistics_are_seen_through_num_batches_tracked() -> None:
    # torch's CPU batch-norm kernel writes running_mean / running_var without bumping
    # their version counters (a route docs/arrays.md lists as not seen); in train mode
    # the module adds to num_batches_tracked with an ordinary in-place add in the same
    # call, so a context holding the module's whole state refuses it on the next read
    bn = torch.nn.BatchNorm1d(4)
    ctx = RuntimeContext.from_module(bn)
    torch.func.functional_call(bn, ctx.state_dict(), (torch.randn(8, 4),))
    with pytest.raises(InPlaceModificationError, match="`num_batches_tracked`"):
        ctx.state_dict()
    # the statistics themselves carry no trace of the write: what the docs say
    assert not torch.equal(ctx["running_mean"], torch.zeros(4))
