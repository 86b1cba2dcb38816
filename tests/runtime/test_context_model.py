"""RuntimeContext against a literal list model of the Lean definitions.

The model below transcribes ``NN.Runtime.Context`` word for word: two association lists,
most recent first, and ``next_id``. A Hypothesis state machine applies random operations
to random snapshots (old ones included) of both and compares every observable result;
it also checks that no snapshot ever changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import hypothesis.strategies as st
import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

import torchlean.runtime.functions as rc
from torchlean import RuntimeContext, empty_context

# ------------------------------------------------------------------ the Lean model

# structure AnyTensor (α) where s : Shape; t : Tensor α s  -- here (shape, value)
AnyT = tuple[tuple[int, ...], Any]


@dataclass(frozen=True)
class LeanContext:
    """structure RuntimeContext (α) where var_registry; gradients; next_id."""

    var_registry: list[tuple[str, AnyT]] = field(default_factory=list)
    gradients: list[tuple[str, AnyT]] = field(default_factory=list)
    next_id: int = 0


def l_empty() -> LeanContext:
    return LeanContext([], [], 0)


def l_register_variable(ctx: LeanContext, name: str, value: np.ndarray) -> LeanContext:
    # { ctx with var_registry := (name, ⟨s, value⟩) :: ctx.var_registry,
    #            next_id := ctx.next_id + 1 }
    return LeanContext(
        [(name, (value.shape, value)), *ctx.var_registry], ctx.gradients, ctx.next_id + 1
    )


def l_find(registry: list[tuple[str, AnyT]], name: str) -> AnyT | None:
    # registry.find? (fun p => p.1 == name) |>.map (·.2)
    for n, at in registry:
        if n == name:
            return at
    return None


def l_get(registry: list[tuple[str, AnyT]], name: str, s: tuple[int, ...]) -> Any:
    # match find? with | some at => if h : at.s = s then some (h ▸ at.t) else none | none => none
    at = l_find(registry, name)
    if at is None:
        return None
    return at[1] if at[0] == s else None


def l_set(registry: list[tuple[str, AnyT]], name: str, value: np.ndarray) -> list[Any]:
    # registry.map (fun (n, at) => if n == name then (n, ⟨s, value⟩) else (n, at))
    return [(n, (value.shape, value)) if n == name else (n, at) for n, at in registry]


def l_set_variable(ctx: LeanContext, name: str, value: np.ndarray) -> LeanContext:
    return LeanContext(l_set(ctx.var_registry, name, value), ctx.gradients, ctx.next_id)


def l_register_gradient(ctx: LeanContext, name: str, grad: np.ndarray) -> LeanContext:
    return LeanContext(ctx.var_registry, [(name, (grad.shape, grad)), *ctx.gradients], ctx.next_id)


def l_set_gradient(ctx: LeanContext, name: str, grad: np.ndarray) -> LeanContext:
    return LeanContext(ctx.var_registry, l_set(ctx.gradients, name, grad), ctx.next_id)


def l_clear_gradients(ctx: LeanContext) -> LeanContext:
    return LeanContext(ctx.var_registry, [], ctx.next_id)


def l_has_variable(ctx: LeanContext, name: str) -> bool:
    return any(n == name for n, _ in ctx.var_registry)


def l_variable_names(ctx: LeanContext) -> list[str]:
    return [n for n, _ in ctx.var_registry]


def l_gradient_names(ctx: LeanContext) -> list[str]:
    return [n for n, _ in ctx.gradients]


def l_context_size(ctx: LeanContext) -> int:
    return len(ctx.var_registry)


def l_gradient_count(ctx: LeanContext) -> int:
    return len(ctx.gradients)


def l_is_valid_context(ctx: LeanContext) -> bool:
    # ctx.gradients.all (fun (n, _) => ctx.var_registry.any (fun (m, _) => m == n))
    return all(any(m == n for m, _ in ctx.var_registry) for n, _ in ctx.gradients)


# ------------------------------------------------------------------ the state machine

NAMES = st.sampled_from(["a", "b", "", "fc1.weight"])
SHAPES = st.sampled_from([(), (0,), (2,), (3,), (2, 3), (3, 2)])


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    shape = draw(SHAPES)
    size = int(np.prod(shape, dtype=np.int64))
    values = draw(st.lists(st.integers(-100, 100), min_size=size, max_size=size))
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int32]))
    return np.array(values, dtype=dtype).reshape(shape)


def same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)


class ContextVersusLean(RuleBasedStateMachine):
    """Operations extend the current pair; ``branch`` goes back to any older snapshot."""

    snapshots_bundle = Bundle("snapshots")

    def __init__(self) -> None:
        super().__init__()
        self.ctx: RuntimeContext = empty_context()
        self.model = l_empty()
        self.snapshots: list[tuple[RuntimeContext, LeanContext, str]] = []

    def _step(self, ctx: RuntimeContext, model: LeanContext) -> tuple[RuntimeContext, LeanContext]:
        self.compare(ctx, model)
        self.ctx, self.model = ctx, model
        self.snapshots.append((ctx, model, rc.context_to_string(ctx)))
        return ctx, model

    @rule(target=snapshots_bundle, name=NAMES, value=arrays())
    def register_variable(self, name: str, value: np.ndarray) -> Any:
        return self._step(
            rc.register_variable(self.ctx, name, value),
            l_register_variable(self.model, name, value.copy()),
        )

    @rule(target=snapshots_bundle, name=NAMES, value=arrays())
    def set_variable(self, name: str, value: np.ndarray) -> Any:
        return self._step(
            rc.set_variable(self.ctx, name, value), l_set_variable(self.model, name, value.copy())
        )

    @rule(target=snapshots_bundle, name=NAMES, value=arrays())
    def register_gradient(self, name: str, value: np.ndarray) -> Any:
        return self._step(
            rc.register_gradient(self.ctx, name, value),
            l_register_gradient(self.model, name, value.copy()),
        )

    @rule(target=snapshots_bundle, name=NAMES, value=arrays())
    def set_gradient(self, name: str, value: np.ndarray) -> Any:
        return self._step(
            rc.set_gradient(self.ctx, name, value), l_set_gradient(self.model, name, value.copy())
        )

    @rule(target=snapshots_bundle)
    def clear_gradients(self) -> Any:
        return self._step(rc.clear_gradients(self.ctx), l_clear_gradients(self.model))

    @rule(pair=snapshots_bundle)
    def branch(self, pair: Any) -> None:
        """Continue from an older snapshot: derived contexts must not disturb each other."""
        self.ctx, self.model = pair

    @rule(name=NAMES, shape=SHAPES)
    def lookups(self, name: str, shape: tuple[int, ...]) -> None:
        ctx, model = self.ctx, self.model
        assert same(rc.get_variable(ctx, name, shape), l_get(model.var_registry, name, shape))
        assert same(rc.get_gradient(ctx, name, shape), l_get(model.gradients, name, shape))
        assert rc.has_variable(ctx, name) == l_has_variable(model, name)

    def compare(self, ctx: RuntimeContext, model: LeanContext) -> None:
        assert rc.variable_names(ctx) == l_variable_names(model)
        assert rc.gradient_names(ctx) == l_gradient_names(model)
        assert rc.context_size(ctx) == l_context_size(model)
        assert rc.gradient_count(ctx) == l_gradient_count(model)
        assert ctx.next_id == model.next_id
        assert rc.is_valid_context(ctx) == l_is_valid_context(model)
        for mine, theirs in (
            (ctx.var_registry, model.var_registry),
            (ctx.gradients, model.gradients),
        ):
            assert len(mine) == len(theirs)
            for (n1, at), (n2, (s, t)) in zip(mine, theirs, strict=True):
                assert n1 == n2
                assert at.dims == s
                assert same(at.t, t)
        for name in ("a", "b", "", "fc1.weight", "absent"):
            for shape in ((), (0,), (2,), (3,), (2, 3), (3, 2)):
                assert same(
                    rc.get_variable(ctx, name, shape), l_get(model.var_registry, name, shape)
                )
                assert same(rc.get_gradient(ctx, name, shape), l_get(model.gradients, name, shape))

    @invariant()
    def snapshots_never_change(self) -> None:
        for ctx, model, text in self.snapshots[-8:]:
            assert rc.context_to_string(ctx) == text
            assert rc.variable_names(ctx) == l_variable_names(model)


ContextVersusLean.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestContextVersusLean = ContextVersusLean.TestCase


def test_all_snapshots_unchanged_after_a_long_run() -> None:
    """Snapshots taken along 300 random operations all still read as they did."""
    rng = np.random.default_rng(0)
    ctx, model = empty_context(), l_empty()
    kept = []
    for step in range(300):
        name = ["a", "b", "c"][int(rng.integers(3))]
        value = rng.standard_normal(int(rng.integers(1, 4))).astype(np.float32)
        op = int(rng.integers(4))
        if op == 0:
            ctx, model = (
                rc.register_variable(ctx, name, value),
                l_register_variable(model, name, value),
            )
        elif op == 1:
            ctx, model = rc.set_variable(ctx, name, value), l_set_variable(model, name, value)
        elif op == 2:
            ctx, model = (
                rc.register_gradient(ctx, name, value),
                l_register_gradient(model, name, value),
            )
        else:
            ctx, model = rc.set_gradient(ctx, name, value), l_set_gradient(model, name, value)
        if step % 10 == 0:
            kept.append((ctx, model))
    for ctx, model in kept:
        assert [(n, at.t.tolist()) for n, at in ctx.var_registry] == [
            (n, t.tolist()) for n, (_, t) in model.var_registry
        ]
        assert [(n, at.t.tolist()) for n, at in ctx.gradients] == [
            (n, t.tolist()) for n, (_, t) in model.gradients
        ]
