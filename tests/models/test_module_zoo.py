"""Modules people use, and their odd corners, trained on a context against the plain
PyTorch loop on the same seed: ``model.train()`` (or ``eval()``), forward, backward,
``torch.optim.AdamW(fused=True)`` beside ``RuntimeContext.from_module``,
``call_module(model, ctx, x, state=True)``, ``value_and_grad(has_state=True)`` and
``optim.adamw``; the losses, every parameter and buffer (and the module's own
non-persistent buffers, which the context does not hold) equal within float32 noise
after several steps.

The corners: a CNN in ``channels_last`` (conv weights and activations not contiguous),
BatchNorm with ``momentum=None`` / without running statistics / without affine / in
eval mode, GroupNorm, LayerNorm, InstanceNorm with running statistics, parametrized
weights (``weight_norm``, ``spectral_norm`` with its power-iteration buffers updated in
the forward pass, ``orthogonal``, and the hook-based ``torch.nn.utils.weight_norm``),
weights tied both ways and one weight shared by three layers, integer and bool buffers
updated in place, an EMA buffer, a non-persistent buffer, dropout drawn from a module's
own generator, ``nn.MultiheadAttention`` (``in_proj_weight``; separate k/v projections
and bias_kv), an embedding with ``padding_idx``, LSTM and GRU (their ``_flat_weights``),
a TransformerEncoderLayer in train and eval (its fast path), PReLU and a transposed
convolution."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

from torchlean import RuntimeContext, optim
from torchlean.autograd import call_module, value_and_grad
from torchlean.errors import TorchLeanError

STEPS = 5
Batches = list[tuple[torch.Tensor, torch.Tensor]]


def images(*, channels_last: bool = False) -> Batches:
    g = torch.Generator().manual_seed(1)
    out = [
        (torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 5, (4,), generator=g))
        for _ in range(STEPS)
    ]
    if channels_last:
        out = [(x.to(memory_format=torch.channels_last), y) for x, y in out]
    return out


def vectors(width: int = 8) -> Batches:
    g = torch.Generator().manual_seed(2)
    return [
        (torch.randn(6, width, generator=g), torch.randint(0, 5, (6,), generator=g))
        for _ in range(STEPS)
    ]


def tokens(high: int = 10) -> Batches:
    g = torch.Generator().manual_seed(3)
    return [
        (torch.randint(0, high, (7,), generator=g), torch.randint(0, 10, (7,), generator=g))
        for _ in range(STEPS)
    ]


def sequences() -> Batches:
    g = torch.Generator().manual_seed(4)
    return [
        (torch.randn(3, 5, 4, generator=g), torch.randint(0, 5, (3,), generator=g))
        for _ in range(STEPS)
    ]


def cnn(norm: Callable[[int], nn.Module] = nn.BatchNorm2d) -> nn.Module:
    # no conv bias before a norm: its gradient is ~0, and Adam turns that noise into
    # steps that differ between any two correct implementations
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        norm(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, bias=False),
        nn.GroupNorm(2, 8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )


class Tied3(nn.Module):
    """One weight in three layers."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.head = nn.Linear(8, 5)
        self.b.weight = self.a.weight
        self.c.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.c(torch.tanh(self.b(torch.tanh(self.a(x))))))


class TiedBack(nn.Module):
    """The head declared first: the embedding takes the head's weight."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 10, bias=False)
        self.embed = nn.Embedding(10, 4)
        self.embed.weight = self.head.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embed(idx)))


class Counters(nn.Module):
    """An integer and a bool buffer updated in place, a non-persistent buffer and an
    EMA buffer, all read by the forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 5)
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.register_buffer("seen", torch.tensor(False))
        self.register_buffer("ema", torch.zeros(8))
        self.register_buffer("scale", torch.ones(5), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.count += 1
            self.seen.fill_(True)
            with torch.no_grad():
                self.ema.mul_(0.9).add_(x.mean(0), alpha=0.1)
                self.scale.mul_(1.01)
        return self.lin(x - self.ema) * self.scale * (1 + 0.1 * self.count)


class Dropped(nn.Module):
    """Dropout drawn from the module's own generator."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.head = nn.Linear(8, 16), nn.Linear(16, 5)
        self.generator = torch.Generator().manual_seed(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.lin(x))
        keep = torch.rand(h.shape, generator=self.generator) > 0.3
        return self.head(h * keep / 0.7)


class Attention(nn.Module):
    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.kv = options.get("kdim"), options.get("vdim")
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True, **options)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = x.view(2, 3, 8)
        k = q[..., : self.kv[0]] if self.kv[0] else q
        v = q[..., : self.kv[1]] if self.kv[1] else q
        out, _ = self.attn(q, k, v)
        return self.head(out.reshape(6, 8))


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(x.view(2, 3, 8)).reshape(6, 8))


class Recurrent(nn.Module):
    def __init__(self, kind: type[nn.Module]) -> None:
        super().__init__()
        self.rnn = kind(4, 6, batch_first=True, num_layers=2)
        self.head = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


class Lookup(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4, padding_idx=0)
        self.head = nn.Linear(4, 10)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(idx))


class Transposed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose1d(5, 4, 3, stride=2)
        self.norm = nn.InstanceNorm1d(4, affine=True, track_running_stats=True)
        self.act = nn.PReLU()
        self.head = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.norm(self.up(x))).mean(-1))


def mlp_with(first: nn.Module) -> nn.Module:
    return nn.Sequential(first, nn.ReLU(), nn.Linear(16, 5))


CASES: dict[str, tuple[Callable[[], nn.Module], Callable[[], Batches], str]] = {
    "cnn": (cnn, images, "train"),
    "cnn-eval": (cnn, images, "eval"),
    "cnn-channels-last": (
        lambda: cnn().to(memory_format=torch.channels_last),
        lambda: images(channels_last=True),
        "train",
    ),
    "batchnorm-cumulative": (
        lambda: cnn(lambda c: nn.BatchNorm2d(c, momentum=None)),
        images,
        "train",
    ),
    "batchnorm-no-stats": (
        lambda: cnn(lambda c: nn.BatchNorm2d(c, track_running_stats=False)),
        images,
        "train",
    ),
    "batchnorm-no-stats-eval": (
        lambda: cnn(lambda c: nn.BatchNorm2d(c, track_running_stats=False)),
        images,
        "eval",
    ),
    "batchnorm-no-affine": (
        lambda: cnn(lambda c: nn.BatchNorm2d(c, affine=False)),
        images,
        "train",
    ),
    "layernorm": (
        lambda: nn.Sequential(
            nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 5), nn.LayerNorm(5, bias=False)
        ),
        vectors,
        "train",
    ),
    "weight-norm": (
        lambda: mlp_with(parametrizations.weight_norm(nn.Linear(8, 16))),
        vectors,
        "train",
    ),
    "spectral-norm": (
        lambda: mlp_with(parametrizations.spectral_norm(nn.Linear(8, 16))),
        vectors,
        "train",
    ),
    "spectral-norm-eval": (
        lambda: mlp_with(parametrizations.spectral_norm(nn.Linear(8, 16))),
        vectors,
        "eval",
    ),
    "stacked-parametrizations": (
        lambda: mlp_with(
            parametrizations.spectral_norm(parametrizations.weight_norm(nn.Linear(8, 16)))
        ),
        vectors,
        "train",
    ),
    "orthogonal": (
        lambda: nn.Sequential(parametrizations.orthogonal(nn.Linear(8, 8)), nn.Linear(8, 5)),
        vectors,
        "train",
    ),
    "hook-weight-norm": (
        lambda: mlp_with(torch.nn.utils.weight_norm(nn.Linear(8, 16))),
        vectors,
        "train",
    ),
    "tied-three": (Tied3, vectors, "train"),
    "tied-backwards": (TiedBack, tokens, "train"),
    "counters": (Counters, vectors, "train"),
    "counters-eval": (Counters, vectors, "eval"),
    "dropout-generator": (Dropped, vectors, "train"),
    "attention": (Attention, vectors, "train"),
    "attention-kv": (
        lambda: Attention(kdim=4, vdim=6, bias=False, add_bias_kv=True),
        vectors,
        "train",
    ),
    "attention-eval": (Attention, vectors, "eval"),
    "encoder": (Encoder, vectors, "train"),
    "encoder-eval": (Encoder, vectors, "eval"),
    "embedding-padding": (Lookup, lambda: tokens(3), "train"),
    "lstm": (lambda: Recurrent(nn.LSTM), sequences, "train"),
    "gru": (lambda: Recurrent(nn.GRU), sequences, "train"),
    "transposed-instancenorm": (Transposed, sequences, "train"),
}


def build(make: Callable[[], nn.Module], mode: str) -> nn.Module:
    torch.manual_seed(0)
    model = make()
    return model.train() if mode == "train" else model.eval()


@pytest.mark.filterwarnings("ignore::FutureWarning")  # the hook-based weight_norm
@pytest.mark.parametrize("case", list(CASES))
def test_trains_as_the_plain_loop(case: str, train_side_by_side: Any) -> None:
    make, data, mode = CASES[case]
    batches = data()
    reference, model = build(make, mode), build(make, mode)
    want, got, ctx = train_side_by_side(reference, model, batches)
    torch.testing.assert_close(torch.stack(got), torch.stack(want), rtol=1e-5, atol=1e-6)
    state, aliases = ctx.state_dict(), ctx.aliases()
    for name, t in reference.state_dict().items():
        torch.testing.assert_close(
            state[aliases.get(name, name)], t, rtol=1e-5, atol=1e-6, msg=name
        )
    # what the context does not hold (a non-persistent buffer) is the module's own,
    # updated by the forward passes as the plain module's
    persistent = set(reference.state_dict())
    own = dict(model.named_buffers())
    for name, t in reference.named_buffers():
        if name not in persistent:
            torch.testing.assert_close(own[name], t, msg=name)
    # the module's own parameters were never trained
    fresh = build(make, mode)
    for (name, p), q in zip(model.named_parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_a_parameter_unused_this_step_moves_unlike_torch_optim() -> None:
    """Pins the one known difference from the plain loop (docs/training.md): a
    parameter the loss does not reach gets a zero gradient, and AdamW still moves it
    (momentum of the step it was used, weight decay); torch.optim skips it (``.grad`` is
    ``None``). ``frozen=`` for that step, on a context without gradients, gives torch's
    numbers."""

    class Branch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(8, 5), nn.Linear(8, 5)

        def forward(self, x: torch.Tensor, use_b: bool) -> torch.Tensor:
            return self.a(x) + self.b(x) if use_b else self.a(x)

    x, y = vectors()[0]
    uses = [True, False, False]
    reference, model = build(Branch, "train"), build(Branch, "train")
    opt = torch.optim.AdamW(reference.parameters(), lr=1e-2)
    for use_b in uses:
        opt.zero_grad()
        F.cross_entropy(reference(x, use_b), y).backward()
        opt.step()

    def loss(c: RuntimeContext[Any], use_b: bool) -> Any:
        return F.cross_entropy(call_module(model, c, (x, use_b)), y)

    adamw = optim.adamw(lr=1e-2)
    zero, frozen = RuntimeContext.from_module(model), RuntimeContext.from_module(model)
    zero_state, frozen_state = adamw.init(zero), adamw.init(frozen)
    for use_b in uses:
        _, zero = value_and_grad(loss)(zero, use_b)
        zero, zero_state = adamw.step(zero, zero_state)
        # no gradient at all for b this step (the last step's cleared): the step skips it
        skip = value_and_grad(loss, frozen=() if use_b else "b.*")
        _, frozen = skip(frozen.clear_gradients(), use_b)
        frozen, frozen_state = adamw.step(frozen, frozen_state)
    for name, t in reference.state_dict().items():
        torch.testing.assert_close(frozen[name], t, rtol=1e-5, atol=1e-6, msg=name)
    assert (zero["b.weight"] - reference.b.weight).abs().max() > 1e-3


COMPLEX = (
    "optimizer step: variable `w` is complex64, which the optimizers do not train"
    " (torch.optim trains a complex parameter as pairs of reals); keep it as a real tensor"
    " (torch.view_as_real) and view it as complex in the loss, or freeze it"
    " (value_and_grad(frozen=...)); nothing was updated"
)


@pytest.mark.parametrize("make", [optim.adamw, optim.sgd])
def test_a_complex_parameter_is_refused_naming_it(make: Callable[..., Any]) -> None:
    """value_and_grad differentiates a complex parameter, init gives it no state: the
    step said it had none and to build the state from a context that has it (it had)."""

    class Spectral(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(8, 5, dtype=torch.cfloat))
            self.b = nn.Parameter(torch.zeros(5))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x.to(torch.cfloat) @ self.w).abs() + self.b

    model = Spectral()
    ctx = RuntimeContext.from_module(model)
    x, y = vectors()[0]
    _, ctx = value_and_grad(lambda c: F.cross_entropy(call_module(model, c, x), y))(ctx)
    opt = make(lr=0.1)
    with pytest.raises(TorchLeanError, match=re.escape(COMPLEX)):
        opt.step(ctx, opt.init(ctx))


def test_what_from_module_sees_of_a_parametrized_weight() -> None:
    """The parametrizations' originals are the variables (weight_norm's magnitude and
    direction), the power-iteration vectors of spectral_norm (the second
    parametrization, index 1) are buffers; the computed ``weight`` is no variable.
    ("stacked-parametrizations" above trains it as the plain loop.)"""
    stacked = parametrizations.spectral_norm(parametrizations.weight_norm(nn.Linear(8, 16)))
    ctx = RuntimeContext.from_module(stacked)
    assert sorted(ctx.variable_names()) == [
        "bias",
        "parametrizations.weight.1._u",
        "parametrizations.weight.1._v",
        "parametrizations.weight.original0",
        "parametrizations.weight.original1",
    ]
    assert ctx.buffers() == ["parametrizations.weight.1._u", "parametrizations.weight.1._v"]
