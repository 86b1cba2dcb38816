"""fit's corners against the plain torch loop: gradient accumulation (Lightning's mean
of micro-batch losses), epochs whose length ``accumulate`` does not divide, dict
batches, the learning rate ``on_step`` reports, resuming with another ``accumulate``,
and ``keep_last`` around a save that crashed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from torchlean import RuntimeContext, optim
from torchlean.errors import ExpectationError
from torchlean.train import fit, latest_checkpoint, load_checkpoint


def _model() -> RuntimeContext[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return RuntimeContext.from_state_dict(
        {"w": torch.randn(3, 2, generator=g), "b": torch.zeros(3)}
    )


def _batch(i: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + i)
    return {"x": torch.randn(4, 2, generator=g), "y": torch.randn(4, 3, generator=g)}


def _loss(ctx: RuntimeContext[Any], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((x @ ctx["w"].T + ctx["b"] - y) ** 2).mean()


class _Loader:
    """A DataLoader-like iterable of dict batches with a length, iterated afresh per
    epoch; records the order it served batches in."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.served: list[int] = []

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Any:
        for i in range(self.n):
            self.served.append(i)
            yield _batch(i)


def _torch_loop(micro_batches: list[list[int]], k: int) -> tuple[dict[str, Any], list[float]]:
    """The plain loop: ``(loss / k).backward()`` per micro-batch, then one AdamW step."""
    ctx = _model()
    params = {n: torch.nn.Parameter(ctx[n].clone()) for n in ("w", "b")}
    opt = torch.optim.AdamW(params.values(), lr=0.05)
    losses = []
    for step in micro_batches:
        opt.zero_grad()
        total = 0.0
        for i in step:
            b = _batch(i)
            loss = ((b["x"] @ params["w"].T + params["b"] - b["y"]) ** 2).mean()
            (loss / k).backward()
            total += float(loss.detach()) / k
        opt.step()
        losses.append(total)
    return {n: p.detach() for n, p in params.items()}, losses


def adamw_fit(**options: Any) -> Any:
    """``fit`` of the small model with AdamW(lr=0.05) on ``_batch``, no progress bar."""
    return fit(_model(), _loss, optim.adamw(lr=0.05), _batch, progress=False, **options)


@pytest.mark.parametrize("epochs", [1, 2])
def test_accumulate_with_epochs_not_divisible(epochs: int) -> None:
    """5 batches an epoch, ``accumulate=2``: ``epochs * 5 // 2`` steps, micro-batches
    taken across the epoch boundary (batch 4 of the first epoch and batch 0 of the
    second make one step), the last odd one left unused; each step's loss is the mean
    of its micro-batches' (Lightning's), its update the plain loop's."""
    loader = _Loader(5)
    result = fit(
        _model(), _loss, optim.adamw(lr=0.05), loader, epochs=epochs, accumulate=2, progress=False
    )
    stream = [i for _ in range(epochs) for i in range(5)]
    steps = [stream[2 * s : 2 * s + 2] for s in range(epochs * 5 // 2)]
    assert result.step == len(steps) == {1: 2, 2: 5}[epochs]
    if epochs == 2:
        assert steps[2] == [4, 0]
    want, losses = _torch_loop(steps, 2)
    np.testing.assert_allclose(result.losses, losses, rtol=1e-6)
    for n in ("w", "b"):
        torch.testing.assert_close(result.ctx[n], want[n], rtol=1e-6, atol=1e-7)


def test_on_step_reports_the_rate_the_step_used() -> None:
    """A second ``fit`` given the first's state continues its count: the schedule is read
    at that count by the step, and ``StepInfo.lr`` says the same (it said the rate of
    count 0, 1, ... again). Checked against the update itself: plain SGD moves ``w`` by
    ``-lr * grad``, with ``grad`` the batch itself."""
    ctx = RuntimeContext.from_state_dict({"w": torch.zeros(2)})
    schedule = optim.linear_warmup(1.0, 10)
    opt = optim.sgd(lr=schedule)

    def loss(c: RuntimeContext[Any], x: torch.Tensor) -> torch.Tensor:
        return (c["w"] * x).sum()

    def data(i: int) -> tuple[torch.Tensor]:
        return (torch.full((2,), 1.0),)

    seen: list[tuple[int, float]] = []
    first = fit(
        ctx, loss, opt, data, steps=3, progress=False, on_step=lambda i: seen.append((i.step, i.lr))
    )
    assert seen == [(1, 0.0), (2, 0.1), (3, 0.2)]
    seen.clear()
    moved: list[float] = []
    last = [float(first.ctx["w"][0])]

    def record(info: Any) -> None:
        seen.append((info.step, info.lr))

    def movement(c: RuntimeContext[Any]) -> float:
        now = float(c["w"][0])
        moved.append(last[0] - now)
        last[0] = now
        return now

    second = fit(
        first.ctx,
        loss,
        opt,
        data,
        steps=3,
        state=first.state,
        progress=False,
        on_step=record,
        eval_fn=movement,
        eval_every=1,
    )
    assert int(second.state["count"]) == 6
    assert [s for s, _ in seen] == [1, 2, 3]
    np.testing.assert_allclose([lr for _, lr in seen], [0.3, 0.4, 0.5], rtol=1e-12)
    np.testing.assert_allclose(moved, [0.3, 0.4, 0.5], rtol=1e-6)


def test_resume_with_another_accumulate_is_refused(tmp_path: Path) -> None:
    """A checkpoint's step count means ``step * accumulate`` batches used; resuming with
    another ``accumulate`` would skip another number of them (silently, before). The
    same ``accumulate`` resumes as before."""
    adamw_fit(steps=2, accumulate=2, checkpoint_dir=tmp_path, checkpoint_every=1)
    path = tmp_path / "step-000002.safetensors"
    with pytest.raises(ExpectationError) as err:
        adamw_fit(steps=4, accumulate=3, checkpoint_dir=tmp_path, resume=True)
    assert str(err.value) == (
        f"fit: checkpoint {path} was written with accumulate=2 (after step 2 it had used 4"
        " batches), but this run has accumulate=3 and would skip 6 batches; resume with"
        " accumulate=2"
    )
    resumed = adamw_fit(steps=4, accumulate=2, checkpoint_dir=tmp_path, resume=True)
    whole = adamw_fit(steps=4, accumulate=2)
    assert resumed.losses == whole.losses[2:]
    for n in ("w", "b"):
        assert torch.equal(resumed.ctx[n], whole.ctx[n])
    # load_checkpoint reads a file with the count as any other
    _, state, step = load_checkpoint(path, _model(), optim.adamw(lr=0.05).init(_model()))
    assert step == 2 and int(state["count"]) == 2


def test_keep_last_after_a_crash_mid_save(tmp_path: Path, monkeypatch: Any) -> None:
    """A save that fails halfway (here: the rename into place raises, as a full disk or a
    kill would stop it) leaves the earlier checkpoints whole, no half file under a
    checkpoint's name, and ``keep_last`` counting only complete files; a resumed run
    continues from the newest complete one and rotates as before. The hidden folder a
    killed writer leaves is not a checkpoint and is left alone."""
    leftover = tmp_path / ".step-000003.safetensors.999-dead.tmp"
    leftover.mkdir(parents=True)
    (leftover / "step-000003.safetensors").write_bytes(b"half a file")

    real_replace = os.replace
    calls = {"n": 0}

    def crash_on_third(src: Any, dst: Any) -> None:
        if str(dst).endswith("step-000003.safetensors"):
            calls["n"] += 1
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_third)
    with pytest.raises(OSError, match="No space left"):
        adamw_fit(steps=6, checkpoint_dir=tmp_path, checkpoint_every=1, keep_last=2)
    assert calls["n"] == 1
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert names == ["step-000001.safetensors", "step-000002.safetensors"]
    assert latest_checkpoint(tmp_path) == tmp_path / "step-000002.safetensors"
    monkeypatch.setattr(os, "replace", real_replace)
    resumed = adamw_fit(
        steps=6, checkpoint_dir=tmp_path, checkpoint_every=1, keep_last=2, resume=True
    )
    whole = adamw_fit(steps=6)
    assert resumed.losses == whole.losses[2:]
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert names == ["step-000005.safetensors", "step-000006.safetensors"]
    assert leftover.is_dir()


def _shuffled_run(folder: Path, epochs: int, accumulate: int, resume: bool) -> Any:
    from torch.utils.data import DataLoader, TensorDataset

    x = torch.randn(10, 2, generator=torch.Generator().manual_seed(0))
    y = torch.randn(10, 3, generator=torch.Generator().manual_seed(1))
    loader = DataLoader(TensorDataset(x, y), batch_size=2, shuffle=True)

    def loss(c: RuntimeContext[Any], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # dropout draws from torch's global generator between the epochs' shuffles
        return ((torch.nn.functional.dropout(x @ c["w"].T, 0.3) - y) ** 2).mean()

    torch.manual_seed(5)
    return fit(
        RuntimeContext.from_state_dict({"w": torch.ones(3, 2)}),
        loss,
        optim.adamw(lr=0.05),
        loader,
        epochs=epochs,
        accumulate=accumulate,
        checkpoint_dir=folder,
        checkpoint_every=1,
        resume=resume,
        progress=False,
    )


@pytest.mark.parametrize(
    ("accumulate", "at"), [(1, 3), (1, 5), (1, 6), (1, 12), (2, 2), (2, 3), (2, 6)]
)
def test_resume_mid_epoch_of_a_shuffling_loader(tmp_path: Path, accumulate: int, at: int) -> None:
    """A shuffling DataLoader draws each epoch's order when that epoch's iterator is
    made, from torch's generator as training left it. Resumed in the second or third
    epoch, the run drew every pass's order from the first pass's state (different
    losses, silently); the checkpoint now keeps the state of the pass under way."""
    whole = _shuffled_run(tmp_path / "whole", 3, accumulate, False)
    folder = tmp_path / "cut"
    _shuffled_run(folder, 3, accumulate, False)
    for path in folder.iterdir():
        if int(path.name[5:11]) > at:
            path.unlink()
    resumed = _shuffled_run(folder, 3, accumulate, True)
    assert resumed.losses == whole.losses[at:]
    assert torch.equal(resumed.ctx["w"], whole.ctx["w"])


def test_resume_with_more_epochs_continues_the_shorter_run(tmp_path: Path) -> None:
    """Two epochs, then resumed with three: the third epoch of one run of three."""
    whole = _shuffled_run(tmp_path / "whole", 3, 1, False)
    first = _shuffled_run(tmp_path / "grown", 2, 1, False)
    more = _shuffled_run(tmp_path / "grown", 3, 1, True)
    assert first.losses + more.losses == whole.losses
    assert torch.equal(more.ctx["w"], whole.ctx["w"])


def test_checkpoints_never_mix_with_later_ones_of_another_run(tmp_path: Path) -> None:
    """Rolling back (``resume=`` an earlier file) or starting afresh into a folder that
    holds later checkpoints would write this run's files among another run's:
    ``keep_last`` (by step) would remove this run's, and ``resume=True`` would continue
    the other run. Refused before the first step; without checkpoints it runs."""

    def run(steps: int, **options: Any) -> Any:
        return fit(
            _model(), _loss, optim.adamw(lr=0.05), _batch, steps=steps, progress=False, **options
        )

    run(6, checkpoint_dir=tmp_path, checkpoint_every=1)
    for options, start in (
        ({"resume": tmp_path / "step-000002.safetensors"}, 2),
        ({}, 0),
    ):
        with pytest.raises(ExpectationError) as err:
            run(8, checkpoint_dir=tmp_path, checkpoint_every=1, keep_last=2, **options)
        later = [f"step-{i:06d}.safetensors" for i in range(start + 1, 7)]
        shown = ", ".join(later[:3]) + (f" and {len(later) - 3} more" if len(later) > 3 else "")
        assert str(err.value) == (
            f"fit: {tmp_path} holds checkpoints of steps after {start} ({shown}); this run's"
            " checkpoints would mix with them (keep_last removes by step, and resume=True"
            " would continue from theirs). Resume from the latest (resume=True), or move"
            " them out of checkpoint_dir, or write to another one"
        )
    rolled_back = run(4, resume=tmp_path / "step-000002.safetensors")
    assert rolled_back.step == 4 and len(rolled_back.losses) == 2
    assert latest_checkpoint(tmp_path) == tmp_path / "step-000006.safetensors"
