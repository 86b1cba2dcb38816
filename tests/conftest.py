"""Every TorchLean JSON file the suite writes is read by the model of Lean's importer.

During the session, ``torchlean.io.torchlean_json.save_json`` (and the ``json`` format
record that ``io.save`` and the CLI call) is wrapped: after each successful save, the
file is read by :func:`torchlean.io.lean_json.lean_view` (what TorchLean's Lean importer
sees) and by torchlean's own reader, and both must give the same names, shapes and
float64 values, with no problem. A disagreement fails the test that wrote the file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from torchlean.io import torchlean_json
from torchlean.io.lean_json import lean_view

CHECKED: list[str] = []


def lean_reads_the_same(path: str | os.PathLike[str]) -> None:
    """Assert that Lean's importer (the model) reads ``path`` as torchlean does."""
    view = lean_view(path)
    assert view.ok, "\n".join(view.format())
    ours = dict(torchlean_json.load_json(path).latest_variables())
    assert sorted(ours) == list(view.tensors), (sorted(ours), list(view.tensors))
    for name, at in ours.items():
        lean = view.tensors[name]
        mine = np.asarray(at.library.to_numpy(at.t))
        if lean.shape != mine.shape:  # `[]` reads as (0,) in Lean and spells (0, 3) too
            assert math.prod(mine.shape) == 0 and lean.shape == mine.shape[: len(lean.shape)]
            continue
        want = mine.astype(np.float64)  # Lean's Float: ints and narrow floats widened
        assert np.array_equal(lean.values, want), (name, lean.values, want)


@pytest.fixture(autouse=True, scope="session")
def _every_saved_json_reads_the_same_in_lean() -> Iterator[None]:
    original = torchlean_json.save_json
    fmt = torchlean_json.FORMAT

    def save_json(ctx: Any, path: Any) -> None:
        original(ctx, path)
        lean_reads_the_same(path)
        CHECKED.append(os.fspath(path))

    torchlean_json.save_json = save_json  # type: ignore[assignment]
    object.__setattr__(fmt, "save", save_json)
    try:
        yield
    finally:
        torchlean_json.save_json = original  # type: ignore[assignment]
        object.__setattr__(fmt, "save", original)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if CHECKED:
        terminalreporter.write_line(
            f"lean_json: {len(CHECKED)} JSON files written by the suite read the same in"
            " the model of Lean's importer"
        )


@pytest.fixture
def train_side_by_side() -> Any:
    """``train(reference, model, batches, lr=1e-2) -> (want, got, ctx)``: the plain loop
    (forward, cross-entropy, backward, ``torch.optim.AdamW(fused=True)``) on
    ``reference`` and the context loop (``from_module(model)``, ``call_module(...,
    state=True)``, ``value_and_grad(has_state=True)``, ``optim.adamw``) over the same
    ``(x, y)`` batches: the losses of each and the trained context."""
    import torch
    import torch.nn.functional as F

    from torchlean import RuntimeContext, optim
    from torchlean.autograd import call_module, value_and_grad

    def train(reference: Any, model: Any, batches: Any, lr: float = 1e-2) -> Any:
        opt = torch.optim.AdamW(reference.parameters(), lr=lr, fused=True)
        want = []
        for x, y in batches:
            loss = F.cross_entropy(reference(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            want.append(loss.detach())

        def step_loss(c: Any, x: Any, y: Any) -> Any:
            out, state = call_module(model, c, x, state=True)
            return F.cross_entropy(out, y), state

        grad_fn = value_and_grad(step_loss, has_state=True)
        ctx = RuntimeContext.from_module(model)
        adamw = optim.adamw(lr=lr)
        moments = adamw.init(ctx)
        got = []
        for x, y in batches:
            loss, ctx = grad_fn(ctx, x, y)
            ctx, moments = adamw.step(ctx, moments)
            got.append(loss)
        return want, got, ctx

    return train
