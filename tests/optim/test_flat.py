"""Flat storage: one buffer per (device, dtype), and every promise of a context kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from torchlean import RuntimeContext, io, optim
from torchlean.autograd import value_and_grad
from torchlean.errors import BackendError, DonatedContextError, InPlaceModificationError
from torchlean.widgets import to_html


def weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "fc1.weight": torch.randn(8, 4, generator=g),
        "fc1.bias": torch.randn(8, generator=g),
        "fc2.weight": torch.randn(3, 8, generator=g),
        "fc2.bias": torch.randn(3, generator=g),
    }


def loss(ctx: RuntimeContext[Any], x: Any, y: Any) -> Any:
    h = torch.relu(F.linear(x, ctx["fc1.weight"], ctx["fc1.bias"]))
    return F.cross_entropy(F.linear(h, ctx["fc2.weight"], ctx["fc2.bias"]), y)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)


def flat_context() -> RuntimeContext[Any]:
    ctx = RuntimeContext.from_state_dict({k: v.clone() for k, v in weights().items()})
    return optim.flatten(ctx.register_variable("steps_seen", torch.tensor(3)))


def test_flat_variables_are_views_of_one_buffer_in_order() -> None:
    ctx = flat_context()
    views = [ctx[k] for k in weights()]
    base = views[0]._base
    assert base is not None and base.dim() == 1 and base.numel() == 32 + 8 + 24 + 3
    assert all(v._base is base for v in views)
    assert [v.storage_offset() for v in views] == [0, 32, 40, 64]
    for k, v in weights().items():
        assert torch.equal(ctx[k], v)
    assert ctx["steps_seen"]._base is None  # integers stay out


def test_training_matches_torch_adamw_and_the_gradient_is_one_buffer() -> None:
    x, y = batch()
    params = {k: v.clone().requires_grad_(True) for k, v in weights().items()}
    reference = torch.optim.AdamW(params.values(), lr=0.01, weight_decay=0.1)
    for _ in range(10):
        reference.zero_grad()
        loss(params, x, y).backward()
        reference.step()
    for donate in (True, False):
        ctx = flat_context()
        opt = optim.adamw(lr=0.01, weight_decay=0.1)
        state = opt.init(ctx)
        assert state["exp_avg/fc1.weight"]._base is state["exp_avg/fc2.bias"]._base is not None
        for _ in range(10):
            _, ctx = value_and_grad(loss)(ctx, x, y)
            grads = [ctx.gradient(k) for k in weights()]
            assert grads[0]._base is not None and all(g._base is grads[0]._base for g in grads)
            ctx, state = opt.step(ctx, state, donate=donate)
        for k, p in params.items():
            np.testing.assert_allclose(ctx[k].numpy(), p.detach().numpy(), rtol=1e-5, atol=1e-6)
        assert ctx["fc2.bias"]._base is not None  # still flat after the steps


def test_a_write_to_one_variable_is_seen_as_a_write_to_its_whole_buffer() -> None:
    ctx = flat_context()
    ctx["fc1.bias"].add_(1)
    for name in weights():
        with pytest.raises(InPlaceModificationError, match="modified in place"):
            ctx.variable(name)
    assert int(ctx["steps_seen"]) == 3


def test_donation_rules_are_unchanged() -> None:
    x, y = batch()
    ctx = flat_context()
    opt = optim.adamw(lr=0.01)
    state = opt.init(ctx)
    _, with_grad = value_and_grad(loss)(ctx, x, y)
    kept = {k: v.clone() for k, v in with_grad.state_dict().items()}
    new, _ = opt.step(with_grad, state, donate=False)
    for k, v in with_grad.state_dict().items():
        assert torch.equal(v, kept[k])
    assert new["fc1.weight"]._base is not ctx["fc1.weight"]._base  # a copied buffer
    opt.step(with_grad, state)
    with pytest.raises(DonatedContextError):
        with_grad.variable("fc1.weight")
    with pytest.raises(InPlaceModificationError):
        ctx.variable("fc1.weight")  # shares the buffer the donated step wrote


def test_save_load_and_views_as_for_any_context(tmp_path: Path) -> None:
    x, y = batch()
    ctx = flat_context()
    opt = optim.adamw(lr=0.01)
    state = opt.init(ctx)
    _, ctx = value_and_grad(loss)(ctx, x, y)
    ctx, state = opt.step(ctx, state)
    for what, c in (("model", ctx), ("state", state)):
        path = tmp_path / f"{what}.safetensors"
        io.save(c, path)
        back = io.load(path, backend="torch")
        for k, v in c.state_dict().items():
            assert torch.equal(back[k], v), k
    assert ctx.check().ok
    assert "fc1.weight" in repr(ctx) and "fc1.weight" in to_html(ctx)
    back_ctx = io.load(tmp_path / "model.safetensors", backend="torch")
    back_state = io.load(tmp_path / "state.safetensors", backend="torch")
    flat, flat_state = optim.flatten(back_ctx, back_state)
    assert flat["fc1.weight"]._base is not None and back_ctx["fc1.weight"]._base is None
    assert flat_state["exp_avg/fc1.weight"]._base is flat_state["exp_avg/fc2.bias"]._base
    assert flat_state["step/fc1.weight"]._base is not None


def test_frozen_variables_stay_out_of_the_buffer() -> None:
    ctx = optim.flatten(RuntimeContext.from_state_dict(weights()), frozen="fc1.*")
    assert ctx["fc1.weight"]._base is None and ctx["fc2.weight"]._base is not None
    x, y = batch()
    opt = optim.adam(lr=0.01)
    state = opt.init(ctx)
    _, ctx = value_and_grad(loss, frozen="fc1.*")(ctx, x, y)
    ctx, state = opt.step(ctx, state)
    assert torch.equal(ctx["fc1.weight"], weights()["fc1.weight"])


def test_one_buffer_per_device_and_dtype() -> None:
    ctx = RuntimeContext.from_state_dict(
        {"a": torch.ones(2), "h": torch.ones(3, dtype=torch.float64), "b": torch.ones(1)}
    )
    flat = optim.flatten(ctx)
    assert flat["a"]._base is flat["b"]._base and flat["h"]._base is not flat["a"]._base


def test_a_library_without_flat_buffers_is_refused() -> None:
    with pytest.raises(BackendError, match="variable `w` is a jax float32 array on cpu"):
        optim.flatten(RuntimeContext.from_state_dict({"w": jnp.ones(2)}))
    with pytest.raises(TypeError, match="flatten: frozen must be"):
        optim.flatten(RuntimeContext.empty(), frozen=3)  # type: ignore[arg-type]


# flat_base: the step runs the one-buffer kernel only over views that tile their buffer
# exactly, in order, whatever happened to the views since they were made.


def _backend() -> Any:
    from torchlean.runtime.backends.torch import TorchBackend

    return TorchBackend()


def _tiled() -> tuple[torch.Tensor, list[torch.Tensor]]:
    base = torch.arange(12.0)
    views = [p.view(s) for p, s in zip(base.split([6, 2, 4]), [(2, 3), (2,), (4,)], strict=True)]
    return base, views


@pytest.mark.parametrize(
    ("change", "still_tiles"),
    [
        (lambda v: v.t_(), False),
        (lambda v: v.transpose_(0, 1), False),
        (lambda v: v.as_strided_((3, 2), (1, 3)), False),
        (lambda v: v.unsqueeze_(0), True),  # the same elements in the same order
        (lambda v: v.resize_(3), False),
        (lambda v: v.set_(torch.zeros(2, 3)), False),  # other memory, same _base
        (lambda v: v.mul_(2), True),  # a write of the data only
    ],
    ids=["t_", "transpose_", "as_strided_", "unsqueeze_", "resize_", "set_", "mul_"],
)
def test_a_view_changed_in_place_no_longer_tiles_its_buffer(change: Any, still_tiles: bool) -> None:
    backend = _backend()
    base, views = _tiled()
    assert backend.flat_base(views) is base
    change(views[0])
    assert backend.flat_base(views) is (base if still_tiles else None)


def test_only_the_views_that_tile_the_whole_buffer_in_order_are_flat() -> None:
    backend = _backend()
    base, views = _tiled()
    assert backend.flat_base(views[:2]) is None  # they do not tile the whole buffer
    assert backend.flat_base([views[1], views[0], views[2]]) is None  # out of order
    other = [p.view(v.shape) for p, v in zip(base.split([6, 2, 4]), views, strict=True)]
    assert backend.flat_base(other) is base  # new views that tile it


# A ``.data`` assignment changes a tensor's metadata without a version bump, and may keep
# its data pointer: the check reads the layout itself at every call.


@pytest.mark.parametrize(
    "change",
    [
        lambda b, v: setattr(v[1], "data", b.data[6:7]),  # shorter, same pointer
        lambda b, v: setattr(v[0], "data", b.data.view(2, 6)[:, :3]),  # strided
        lambda b, v: setattr(v[0], "data", v[0].data.t()),  # transposed, same pointer
        lambda b, v: setattr(v[2], "data", b.data[8:12].view(torch.int32)),  # other dtype
        lambda b, v: setattr(v[1], "data", b.data[6:8].clone()),  # other memory
        lambda b, v: setattr(b, "data", torch.zeros(12)),  # the buffer: other memory
        lambda b, v: setattr(b, "data", b.data[:6]),  # the buffer: shorter
        lambda b, v: setattr(b, "data", b.data.view(3, 4)),  # the buffer: 2-d
        lambda b, v: setattr(b, "data", torch.zeros(24)[::2]),  # the buffer: strided
        lambda b, v: setattr(b, "data", b.data.view(torch.int32)),  # the buffer: other dtype
    ],
    ids=[
        "view-shorter",
        "view-strided",
        "view-transposed",
        "view-dtype",
        "view-memory",
        "base-memory",
        "base-shorter",
        "base-2d",
        "base-strided",
        "base-dtype",
    ],
)
def test_a_data_assignment_is_seen_by_the_tiling_check(change: Any) -> None:
    backend = _backend()
    base, views = _tiled()
    assert backend.flat_base(views) is base
    version = base._version
    change(base, views)
    assert base._version == version  # torch does not see it
    assert backend.flat_base(views) is None


def test_a_view_over_the_buffers_memory_through_another_storage_tiles_it() -> None:
    backend = _backend()
    base, views = _tiled()
    views[1].data = torch.from_numpy(views[1].detach().numpy())  # the same memory
    assert views[1].storage_offset() == 0 and views[1].data_ptr() == base[6:].data_ptr()
    assert backend.flat_base(views) is base  # the place in memory counts
    views[1].data = torch.from_numpy(views[1].detach().numpy().copy())
    assert backend.flat_base(views) is None


def test_a_meta_buffer_tiles() -> None:
    backend = _backend()
    views = backend.flatten([torch.zeros(2, device="meta"), torch.zeros(3, device="meta")])
    assert backend.flat_base(views) is views[0]._base


@pytest.mark.parametrize(
    "shapes",
    [[(2,), (0,), (3,)], [(0,), (3,)], [(3,), (0,)], [(2, 3), (3, 0)], [(), (2,)]],
    ids=["middle", "first", "last", "2d", "0d"],
)
def test_a_tiling_with_empty_views_is_found(shapes: Any) -> None:
    # an empty view has no memory (torch gives it data pointer 0): it tiles where it is
    backend = _backend()
    views = backend.flatten([torch.zeros(s) for s in shapes])
    assert backend.flat_base(views) is views[0]._base


def test_a_weight_transposed_through_data_steps_as_on_a_context_that_is_not_flat() -> None:
    # ``w.data = w.data.t()`` after flatten (same memory, not contiguous, no version
    # bump): the step must not run the one-buffer kernel over a layout it no longer has
    g = torch.Generator().manual_seed(0)
    init = {"w": torch.randn(4, 4, generator=g), "b": torch.randn(4, generator=g)}
    x = torch.randn(8, 4, generator=g)

    def square_loss(p: Any, x: Any) -> Any:
        return (F.linear(x, p["w"], p["b"]) ** 2).mean()

    out = {}
    for flat in (False, True):
        for donate in (True, False):
            ctx = RuntimeContext.from_state_dict({k: v.clone() for k, v in init.items()})
            if flat:
                ctx = optim.flatten(ctx)
            ctx["w"].data = ctx["w"].data.t()
            opt = optim.adamw(lr=0.01, weight_decay=0.1)
            state = opt.init(ctx)
            for _ in range(3):
                _, ctx = value_and_grad(square_loss)(ctx, x)
                ctx, state = opt.step(ctx, state, donate=donate)
            out[flat, donate] = {k: ctx[k].clone() for k in init}
    for (flat, donate), got in out.items():
        for k, v in got.items():
            assert torch.equal(v, out[False, donate][k]), (flat, donate, k)


# A leaf per flat variable, the gradients gathered by one cat: the numbers of a context
# that is not flat, whatever the loss does with the variables.


def _partial(ctx: RuntimeContext[Any], x: Any, y: Any) -> Any:
    h = torch.relu(F.linear(x, ctx["fc1.weight"], ctx["fc1.bias"]))
    return F.cross_entropy(F.linear(h, ctx["fc2.weight"]), y)  # fc2.bias: no gradient


def _expanded(ctx: RuntimeContext[Any], x: Any, y: Any) -> Any:
    # gradients of stride 0 (sum, expand) and a variable read twice
    extra = ctx["fc1.weight"].sum() + ctx["fc2.bias"].expand(4, 3).sum()
    return loss(ctx, x, y) + extra * ctx["fc1.bias"].mean()


def _with_aux(ctx: RuntimeContext[Any], x: Any, y: Any) -> Any:
    value = loss(ctx, x, y)
    return value, {"loss": value, "w": ctx["fc1.weight"]}


@pytest.mark.parametrize(
    ("fn", "options", "accumulate"),
    [
        (_partial, {}, False),
        (_expanded, {}, False),
        (_with_aux, {"has_aux": True}, False),
        (loss, {"frozen": "fc1.*"}, False),
        (loss, {}, True),
    ],
    ids=["partial", "expanded", "has_aux", "frozen", "accumulate"],
)
@pytest.mark.parametrize("donate", [True, False])
def test_a_flat_context_trains_to_the_numbers_of_one_that_is_not(
    fn: Any, options: dict[str, Any], accumulate: bool, donate: bool
) -> None:
    x, y = batch()
    out = []
    for flat in (False, True):
        start = RuntimeContext.from_state_dict({k: v.clone() for k, v in weights().items()})
        ctx = optim.flatten(start.register_variable("d", torch.ones(5, dtype=torch.float64)))
        if not flat:
            ctx = RuntimeContext.from_state_dict({k: ctx[k].clone() for k in ctx.variable_names()})
        opt = optim.adamw(lr=0.01, weight_decay=0.1)
        state = opt.init(ctx)
        grad_fn = value_and_grad(fn, **options)
        more = value_and_grad(fn, accumulate=True, **options)
        for _ in range(3):
            _, ctx = grad_fn(ctx, x[:8], y[:8])
            if accumulate:
                _, ctx = more(ctx, x[8:], y[8:])
            ctx, state = opt.step(ctx, state, donate=donate)
        assert (ctx["fc1.weight"]._base is not None) is flat
        out.append(ctx)
    plain, flat_ctx = out
    for name in plain.variable_names():
        assert torch.equal(flat_ctx[name], plain[name]), name
    for name in plain.gradient_names():
        assert torch.equal(flat_ctx.gradient(name), plain.gradient(name)), name


def test_an_in_place_write_of_a_flat_leaf_is_refused_as_for_any_leaf() -> None:
    def writes(ctx: RuntimeContext[Any]) -> Any:
        return ctx["fc1.bias"].add_(1).sum()

    messages = []
    for ctx in (RuntimeContext.from_state_dict(weights()), flat_context()):
        with pytest.raises(RuntimeError) as info:
            value_and_grad(writes)(ctx)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert messages[1].startswith("a leaf Variable that requires grad is being used in an in-place")
