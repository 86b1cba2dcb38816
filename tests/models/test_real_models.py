"""Real models end to end against the plain PyTorch loop on the same seed: a ResNet-style
CNN with BatchNorm in train mode (running statistics and ``num_batches_tracked`` train
through ``has_state``) and a GPT-2-style model with tied embeddings (one variable, the
alias known; ``functional_call`` works; save stores it once; load restores the tie)."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset

from torchlean import RuntimeContext, io, optim
from torchlean.autograd import call_module, value_and_grad
from torchlean.train import StepInfo, fit


def _load_nets() -> Any:
    spec = importlib.util.spec_from_file_location("_nets", Path(__file__).with_name("_nets.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["_nets"] = module
    spec.loader.exec_module(module)
    return module


_nets = _load_nets()
GPT, ResNet, image_batch, token_batch = (
    _nets.GPT,
    _nets.ResNet,
    _nets.image_batch,
    _nets.token_batch,
)
STEPS = 20


def cnn_loss(model: torch.nn.Module) -> Any:
    """The recipe: functional_call with the context's parameters and buffers (fresh
    copies under has_state, so BatchNorm may update them in place), returning them."""

    def loss(ctx: RuntimeContext[Any], x: torch.Tensor, y: torch.Tensor) -> Any:
        tensors = ctx.state_dict()
        out = functional_call(model, tensors, (x,))
        return F.cross_entropy(out, y), {n: tensors[n] for n in ctx.buffers()}

    return loss


def gpt_loss(model: torch.nn.Module) -> Any:
    def loss(ctx: RuntimeContext[Any], idx: torch.Tensor, targets: torch.Tensor) -> Any:
        logits = functional_call(model, ctx.state_dict(), (idx,))
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    return loss


def cnn_loss_prepared(model: torch.nn.Module) -> Any:
    """The same with call_module (the swap prepared once), which returns the buffers."""

    def loss(ctx: RuntimeContext[Any], x: torch.Tensor, y: torch.Tensor) -> Any:
        out, state = call_module(model, ctx, x, state=True)
        return F.cross_entropy(out, y), state

    return loss


def gpt_loss_prepared(model: torch.nn.Module) -> Any:
    def loss(ctx: RuntimeContext[Any], idx: torch.Tensor, targets: torch.Tensor) -> Any:
        logits = call_module(model, ctx, idx)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    return loss


def torch_reference(model: torch.nn.Module, make_opt: Any, batches: list[Any]) -> list[float]:
    model.train()
    opt = make_opt(model.parameters())
    losses = []
    for batch in batches:
        if isinstance(batch, dict):
            logits = model(batch["idx"])
            loss = F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten())
        else:
            loss = F.cross_entropy(model(batch[0]), batch[1])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def assert_module_equals_context(model: torch.nn.Module, ctx: RuntimeContext[Any]) -> None:
    got = ctx.state_dict()
    for name, t in model.state_dict().items():
        canonical = ctx.aliases().get(name, name)
        torch.testing.assert_close(got[canonical], t, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("recipe", [cnn_loss, cnn_loss_prepared])
def test_resnet_batchnorm_trains_as_module_train(recipe: Any) -> None:
    torch.manual_seed(0)
    model = ResNet()
    reference = copy.deepcopy(model)
    batches = [image_batch(i) for i in range(STEPS)]
    want = torch_reference(reference, lambda p: torch.optim.AdamW(p, lr=1e-2, fused=True), batches)
    ctx = RuntimeContext.from_module(model)
    assert ctx.buffers() == [n for n, _ in model.named_buffers()]
    result = fit(
        ctx,
        recipe(model),
        optim.adamw(lr=1e-2),
        lambda step: batches[step],
        steps=STEPS,
        has_state=True,
        progress=False,
    )
    torch.testing.assert_close(
        torch.tensor(result.losses), torch.tensor(want), rtol=1e-5, atol=1e-6
    )
    assert_module_equals_context(reference, result.ctx)
    assert int(result.ctx["bn.num_batches_tracked"]) == STEPS
    # no optimizer state for buffers, no weight decay on them
    assert not any("running" in n for n in result.state.variable_names())
    # the module itself was never written (functional_call got copies)
    assert int(model.bn.num_batches_tracked) == 0


def test_batchnorm_without_has_state_explains_itself() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    ctx = RuntimeContext.from_module(model)
    x = torch.randn(8, 4)

    def loss(c: RuntimeContext[Any], x: torch.Tensor) -> Any:
        tensors = c.state_dict()
        return functional_call(model, tensors, (x,)).sum(), {n: tensors[n] for n in c.buffers()}

    (_, new) = value_and_grad(loss, has_state=True)(ctx, x)
    assert int(new["1.num_batches_tracked"]) == 1
    assert not torch.equal(new["1.running_mean"], ctx["1.running_mean"])
    assert sorted(new.gradient_names()) == ["0.bias", "0.weight", "1.bias", "1.weight"]


def test_has_state_layout_is_cached_and_invalidated() -> None:
    """A transformed function reused over steps: the buffers the loss gets are fresh
    copies each call, the stored ones are never written, a change of the buffers
    re-reads the layout, and an in-place write of a stored buffer is still caught."""
    from torchlean.errors import InPlaceModificationError

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    ctx = RuntimeContext.from_module(model)
    x = torch.randn(8, 4)
    seen: list[torch.Tensor] = []

    def loss(c: RuntimeContext[Any], x: torch.Tensor) -> Any:
        tensors = c.state_dict()
        seen.append(tensors["1.running_mean"])
        return functional_call(model, tensors, (x,)).sum(), {n: tensors[n] for n in c.buffers()}

    grad_fn = value_and_grad(loss, has_state=True)
    stored = ctx["1.running_mean"].clone()
    _, one = grad_fn(ctx, x)
    _, two = grad_fn(one, x)
    assert int(two["1.num_batches_tracked"]) == 2
    assert torch.equal(ctx["1.running_mean"], stored)  # the first context is intact
    assert seen[0] is not seen[1] and seen[1] is not one["1.running_mean"]
    # a second, plain return (not the copy the loss got) goes through with_variables
    _, three = value_and_grad(
        lambda c, x: (loss(c, x)[0], {"1.running_mean": torch.zeros(4)}), has_state=True
    )(two, x)
    assert torch.equal(three["1.running_mean"], torch.zeros(4))
    # freezing-by-marking: 0.bias becomes a buffer, gets no gradient and a copy
    marked = two.mark_buffers("0.bias")
    _, four = grad_fn(marked, x)
    old, new = dict(two.latest_gradients()), dict(four.latest_gradients())
    assert new["0.bias"].t is old["0.bias"].t  # no gradient written for it
    assert new["0.weight"].t is not old["0.weight"].t
    assert torch.equal(four["0.bias"], two["0.bias"])  # a buffer: no update
    # an in-place write of a stored buffer is caught on the cached path too
    four.state_dict()["1.running_var"].add_(1)
    with pytest.raises(InPlaceModificationError):
        grad_fn(four, x)


@pytest.mark.parametrize("recipe", [gpt_loss, gpt_loss_prepared])
def test_gpt2_tied_embeddings_train_as_torch(recipe: Any) -> None:
    torch.manual_seed(0)
    model = GPT()
    reference = copy.deepcopy(model)
    assert reference.lm_head.weight is reference.transformer["wte"].weight
    batches = [token_batch(i) for i in range(STEPS)]
    want = torch_reference(
        reference,
        lambda p: torch.optim.AdamW(p, lr=3e-3, weight_decay=0.1, fused=True),
        batches,
    )
    ctx = RuntimeContext.from_module(model)
    assert ctx.aliases() == {"lm_head.weight": "transformer.wte.weight"}
    assert "lm_head.weight" not in ctx.variable_names()
    result = fit(
        ctx,
        recipe(model),
        optim.adamw(lr=3e-3, weight_decay=0.1),
        batches,  # a list of dict batches: keyword arguments
        steps=STEPS,
        progress=False,
    )
    torch.testing.assert_close(
        torch.tensor(result.losses), torch.tensor(want), rtol=1e-5, atol=1e-6
    )
    assert_module_equals_context(reference, result.ctx)
    assert result.ctx["lm_head.weight"] is result.ctx["transformer.wte.weight"]


def test_gpt2_save_once_load_restores_the_tie(tmp_path: Path) -> None:
    model = GPT()
    ctx = RuntimeContext.from_module(model)
    path = tmp_path / "gpt.safetensors"
    io.save(ctx, path)
    summary = io.inspect(path)
    assert "lm_head.weight" not in [e.name for e in summary.variables]  # stored once
    loaded = io.load(path, backend="torch")
    assert loaded.aliases() == ctx.aliases()
    fresh = GPT()
    loaded.load_into(fresh)
    assert fresh.lm_head.weight is fresh.transformer["wte"].weight
    torch.testing.assert_close(fresh.lm_head.weight, model.transformer["wte"].weight)


def test_hf_style_file_without_the_tied_key_loads(tmp_path: Path) -> None:
    model = GPT()
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    path = tmp_path / "model.safetensors"
    import safetensors.torch

    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, path)
    ctx = io.load(path, backend="torch", expect=GPT())  # the tied name is not missing
    fresh = GPT()
    ctx.load_into(fresh)
    torch.testing.assert_close(fresh.lm_head.weight, model.lm_head.weight)


def test_non_strict_loads_report_instead_of_raising(tmp_path: Path) -> None:
    model = GPT()
    ctx = RuntimeContext.from_module(model)
    partial = RuntimeContext.from_state_dict(
        {k: v for k, v in ctx.state_dict().items() if not k.startswith("transformer.h.1.")}
        | {"extra.weight": torch.zeros(2)}
    )
    report = partial.load_into(GPT(), strict=False)
    assert not report.ok
    assert report.unexpected == ("extra.weight",)
    assert all(n.startswith("transformer.h.1.") for n in report.missing) and report.missing
    path = tmp_path / "p.safetensors"
    io.save(partial, path)
    loaded, report2 = io.load(path, expect=GPT(), strict=False)
    assert set(report2.missing) == set(report.missing)
    assert report2.unexpected == ("extra.weight",)
    assert "extra.weight" in loaded


def test_checkpoints_resume_bit_exact(tmp_path: Path) -> None:
    batches = [image_batch(i) for i in range(STEPS)]

    def run(steps: int, resume: bool, folder: Path) -> Any:
        torch.manual_seed(0)
        model = ResNet()
        return fit(
            RuntimeContext.from_module(model),
            cnn_loss(model),
            optim.sgd(lr=0.05, momentum=0.9),
            lambda step: batches[step],
            steps=steps,
            has_state=True,
            checkpoint_dir=folder,
            checkpoint_every=5,
            keep_last=2,
            resume=resume,
            progress=False,
        )

    whole = run(STEPS, False, tmp_path / "whole")
    run(10, False, tmp_path / "split")
    assert sorted(p.name for p in (tmp_path / "split").iterdir()) == [
        "step-000005.safetensors",
        "step-000010.safetensors",
    ]
    resumed = run(STEPS, True, tmp_path / "split")
    assert resumed.losses == whole.losses[10:]
    for name, t in whole.ctx.state_dict().items():
        assert torch.equal(t, resumed.ctx[name]), name
    # a checkpoint keeps plain state_dict names behind `model/`
    plain = io.load(tmp_path / "split" / "step-000020.safetensors", strip_prefix="model/")
    assert "bn.running_mean" in plain and "layer1.0.conv1.weight" in plain


def test_dataloader_epochs_accumulate_clip_and_callback() -> None:
    torch.manual_seed(0)
    x = torch.randn(32, 3, 12, 12)
    y = torch.randint(0, 10, (32,))
    loader = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=False)  # [x, y] lists
    model = ResNet()
    reference = copy.deepcopy(model)
    reference.train()
    opt = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9)
    want = []
    for _ in range(2):  # epochs
        batches = list(loader)
        for i in range(0, len(batches), 2):  # accumulate=2
            opt.zero_grad()
            total = 0.0
            for xb, yb in batches[i : i + 2]:
                loss = F.cross_entropy(reference(xb), yb) / 2
                loss.backward()
                total += float(loss.detach())
            torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
            opt.step()
            want.append(total)
    seen: list[StepInfo] = []
    result = fit(
        RuntimeContext.from_module(model),
        cnn_loss(model),
        optim.sgd(lr=0.05, momentum=0.9),
        loader,
        epochs=2,
        accumulate=2,
        clip=0.5,
        has_state=True,
        on_step=seen.append,
        progress=False,
    )
    assert result.step == 8 and [s.step for s in seen] == list(range(1, 9))
    assert all(s.lr == 0.05 for s in seen)
    torch.testing.assert_close(
        torch.tensor(result.losses), torch.tensor(want), rtol=1e-5, atol=1e-6
    )
    assert_module_equals_context(reference, result.ctx)


@pytest.mark.parametrize("accumulate", [1, 3])
def test_has_aux_reaches_the_callback(accumulate: int) -> None:
    model = ResNet()
    base = cnn_loss(model)

    def loss(ctx: RuntimeContext[Any], x: torch.Tensor, y: torch.Tensor) -> Any:
        value, buffers = base(ctx, x, y)
        return (value, {"twice": value.detach() * 2}), buffers

    seen: list[StepInfo] = []
    fit(
        RuntimeContext.from_module(model),
        loss,
        optim.adam(lr=1e-3),
        lambda step: image_batch(step),
        steps=2,
        has_aux=True,
        has_state=True,
        accumulate=accumulate,
        on_step=seen.append,
        progress=False,
    )
    assert len(seen) == 2 and "twice" in seen[0].aux
