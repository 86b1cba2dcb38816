"""Many threads deriving contexts from one shared snapshot at once.

Every result must be what the same operations give on one thread, and the shared
snapshot must never change.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

import torchlean.runtime.functions as rc
from torchlean import RuntimeContext, empty_context

THREADS = 8
STEPS = 200


def _shared() -> RuntimeContext:
    ctx = empty_context()
    for i in range(50):
        ctx = ctx.register_variable(f"p{i % 20}", np.full(3, i, np.float32))
    return ctx.register_gradient("p1", np.ones(3, np.float32))


def _work(start: RuntimeContext, seed: int) -> list[tuple[str, list[str], int, str]]:
    """A deterministic sequence of operations from ``start``; returns what it observed."""
    rng = np.random.default_rng(seed)
    ctx = start
    seen = []
    for step in range(STEPS):
        name = f"p{int(rng.integers(25))}"
        value = np.full(int(rng.integers(1, 4)), step, np.float32)
        op = int(rng.integers(5))
        if op == 0:
            ctx = ctx.register_variable(name, value)
        elif op == 1:
            ctx = ctx.set_variable(name, value)
        elif op == 2:
            ctx = ctx.accumulate_gradient(name, np.ones(3, np.float32)) if name in ctx else ctx
        elif op == 3:
            ctx = ctx.set_gradient(name, value)
        else:
            ctx = ctx.clear_gradients()
        got = ctx.get_variable(name, value.shape)
        seen.append((name, ctx.variable_names()[:5], ctx.next_id, repr(got)))
    seen.append(("final", [], 0, rc.context_to_string(ctx)))
    return seen


def test_threads_derive_from_one_snapshot() -> None:
    shared = _shared()
    before = rc.context_to_string(shared)
    expected = {seed: _work(shared, seed) for seed in range(THREADS)}
    results: dict[int, list[tuple[str, list[str], int, str]]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(THREADS)

    def run(seed: int) -> None:
        try:
            barrier.wait()
            results[seed] = _work(shared, seed)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(seed,)) for seed in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == expected
    assert rc.context_to_string(shared) == before


def test_threads_reading_one_context() -> None:
    shared = _shared()
    want = {name: shared.variable(name).tolist() for name in set(shared.variable_names())}
    mismatches: list[str] = []

    def read() -> None:
        for _ in range(500):
            for name, value in want.items():
                if shared.variable(name).tolist() != value:
                    mismatches.append(name)

    threads = [threading.Thread(target=read) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert mismatches == []


def test_threads_saving_one_file_and_stepping_one_snapshot(tmp_path: Path) -> None:
    """Threads that save over the same file at once (each save is atomic: the file is
    always one complete context) and take optimizer steps from one shared snapshot."""
    import torchlean.io as tio
    from torchlean import optim

    path = tmp_path / "shared.safetensors"
    contexts = {
        k: empty_context().register_variable("w", np.full(10_000, k, np.float32))
        for k in range(THREADS)
    }
    shared = _shared()
    opt = optim.adamw(lr=0.1)
    state = opt.init(shared)
    before = rc.context_to_string(shared), rc.context_to_string(state)
    expected = opt.step(shared, state, donate=False)[0].variable("p1").tolist()
    errors: list[BaseException] = []
    stepped: list[list[float]] = []
    barrier = threading.Barrier(THREADS)

    def run(k: int) -> None:
        try:
            barrier.wait()
            for _ in range(5):
                tio.save(contexts[k], path)
                stepped.append(opt.step(shared, state, donate=False)[0].variable("p1").tolist())
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    w = tio.load(path).variable("w")
    assert w.shape == (10_000,) and len(set(w.tolist())) == 1 and int(w[0]) in contexts
    assert os.listdir(tmp_path) == [path.name]  # no temporary folder of any thread left
    assert stepped == [expected] * (5 * THREADS)
    assert (rc.context_to_string(shared), rc.context_to_string(state)) == before
