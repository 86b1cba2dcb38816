"""The cycle collector paused around an optimizer step, and restored as it was."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import jax.numpy as jnp
import pytest

from torchlean import RuntimeContext, optim
from torchlean.runtime._collector import paused


@pytest.fixture
def collector_enabled() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    try:
        yield
    finally:
        (gc.enable if was else gc.disable)()


def test_paused_disables_and_restores(collector_enabled: None) -> None:
    with paused:
        assert not gc.isenabled()
        with paused:  # nested: one pause
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_paused_leaves_a_disabled_collector_disabled(collector_enabled: None) -> None:
    gc.disable()
    with paused:
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_paused_restores_after_an_error(collector_enabled: None) -> None:
    with pytest.raises(RuntimeError, match="boom"), paused:
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_paused_from_threads_ends_with_the_last(collector_enabled: None) -> None:
    inside = threading.Barrier(2)
    leave = threading.Event()
    seen: list[bool] = []

    def worker() -> None:
        with paused:
            inside.wait()
            leave.wait()
        seen.append(gc.isenabled())

    thread = threading.Thread(target=worker)
    thread.start()
    with paused:
        inside.wait()
        leave.set()
        thread.join()
        assert seen == [False]  # the worker left first: still paused for this thread
        assert not gc.isenabled()
    assert gc.isenabled()


@pytest.mark.parametrize("enabled", [True, False])
def test_step_keeps_the_collector_as_it_was(collector_enabled: None, enabled: bool) -> None:
    (gc.enable if enabled else gc.disable)()
    ctx = RuntimeContext.empty().with_variables({"w": jnp.ones((2, 3))}, adopt=True)
    opt = optim.adamw(lr=0.1)
    state = opt.init(ctx)
    for _ in range(3):  # the pairing path, then the planned one
        ctx = ctx.with_gradients({"w": jnp.full((2, 3), 0.5)})
        ctx, state = opt.step(ctx, state)
        assert gc.isenabled() is enabled
    with pytest.raises(TypeError):
        opt.step(ctx, state, donate="yes")  # type: ignore[arg-type]
    assert gc.isenabled() is enabled
