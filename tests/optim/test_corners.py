"""The corners people reach, against torch.optim, optax and torch's schedulers: bfloat16
and float16 parameters, parameter groups that overlap, match little or have lr 0,
clipping of zero, infinite, NaN and tiny gradients, and schedules step by step.

Two of these found wrong numbers: on jax and numpy, Adam's bias corrections were
computed in the parameter's dtype (in bfloat16 0.999 is 1.0, so a bfloat16 parameter
never moved), and torch's CPU ``_fused_sgd_`` leaves the leading multiple of 16
elements of a bfloat16 or float16 parameter unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from torchlean import RuntimeContext, optim

SHAPES = {"a.weight": (6, 5), "a.bias": (6,), "b.weight": (3, 6), "n.weight": (6,)}
ALL = list(SHAPES)
STEPS = 8


def _data(dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    init = {k: torch.randn(s, generator=g).to(dtype) for k, s in SHAPES.items()}
    grads = [
        {k: (torch.randn(s, generator=g) * 3).to(dtype) for k, s in SHAPES.items()}
        for _ in range(STEPS)
    ]
    return init, grads


def _convert(library: str, dtype: str) -> Callable[[torch.Tensor], Any]:
    if library == "torch":
        return lambda t: t.clone()
    if library == "jax":
        return lambda t: jnp.asarray(t.float().numpy()).astype(dtype)
    return lambda t: t.float().numpy().astype(dtype)


def _as_float64(x: Any) -> np.ndarray[Any, Any]:
    if isinstance(x, torch.Tensor):
        return x.detach().double().numpy()
    return np.asarray(jnp.asarray(x).astype(jnp.float32)).astype(np.float64)


def _train(
    make: Callable[[], optim.Optimizer],
    library: str,
    dtype: str,
    grads_of: Callable[[list[dict[str, torch.Tensor]]], list[dict[str, torch.Tensor]]] = list,
) -> tuple[dict[str, np.ndarray[Any, Any]], dict[str, torch.Tensor], list[Any]]:
    init, grads = _data(getattr(torch, dtype))
    grads = grads_of(grads)
    conv = _convert(library, dtype)
    ctx = RuntimeContext.from_state_dict({k: conv(v) for k, v in init.items()})
    opt = make()
    state = opt.init(ctx)
    for g in grads:
        ctx, state = opt.step(ctx.with_gradients([(k, conv(g[k])) for k in SHAPES]), state)
    return {k: _as_float64(ctx[k]) for k in SHAPES}, init, grads


def _torch_run(
    make: Callable[[dict[str, torch.nn.Parameter]], torch.optim.Optimizer],
    init: dict[str, torch.Tensor],
    grads: list[dict[str, torch.Tensor]],
    clip: float | None = None,
    schedule: Callable[[int], float] | None = None,
) -> dict[str, np.ndarray[Any, Any]]:
    params = {k: torch.nn.Parameter(v.clone()) for k, v in init.items()}
    opt = make(params)
    sched = None if schedule is None else torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    for g in grads:
        for k in SHAPES:
            params[k].grad = g[k].clone()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(list(params.values()), clip)
        opt.step()
        if sched is not None:
            sched.step()
    return {k: _as_float64(p) for k, p in params.items()}


def _groups(
    cls: Any, groups: list[dict[str, Any]], **defaults: Any
) -> Callable[[dict[str, torch.nn.Parameter]], torch.optim.Optimizer]:
    def make(params: dict[str, torch.nn.Parameter]) -> torch.optim.Optimizer:
        spec = [{**g, "params": [params[n] for n in g["params"]]} for g in groups]
        return cls(spec, **defaults)

    return make


# ---------------------------------------------------------------------- low precision

LOW = [
    (
        "adamw-amsgrad",
        lambda: optim.adamw(lr=1e-2, weight_decay=0.1, amsgrad=True),
        lambda ps: torch.optim.AdamW(
            list(ps.values()), lr=1e-2, weight_decay=0.1, amsgrad=True, fused=True
        ),
    ),
    (
        "adam-wd",
        lambda: optim.adam(lr=1e-2, weight_decay=0.1),
        lambda ps: torch.optim.Adam(list(ps.values()), lr=1e-2, weight_decay=0.1, fused=True),
    ),
    (
        "sgd-momentum-dampening",
        lambda: optim.sgd(lr=1e-2, momentum=0.9, dampening=0.2, weight_decay=0.1),
        # torch's reference: its default (single-tensor) SGD, which computes in the
        # parameter's dtype one operation at a time; see test_low_precision_sgd_trains
        lambda ps: torch.optim.SGD(
            list(ps.values()), lr=1e-2, momentum=0.9, dampening=0.2, weight_decay=0.1
        ),
    ),
    (
        "sgd-nesterov",
        lambda: optim.sgd(lr=1e-2, momentum=0.9, nesterov=True),
        lambda ps: torch.optim.SGD(list(ps.values()), lr=1e-2, momentum=0.9, nesterov=True),
    ),
]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize(("case", "ours", "theirs"), LOW, ids=[c[0] for c in LOW])
def test_low_precision_parameters_train_as_in_torch(
    case: str, ours: Any, theirs: Any, dtype: str
) -> None:
    """bfloat16 and float16 parameters: the three libraries agree with each other and
    with torch.optim within a rounding of the parameter's dtype, and every element
    moves (a step that leaves the parameters unchanged would pass a loose tolerance)."""
    results = {}
    for library in ("torch", "jax", "numpy"):
        if library == "numpy" and dtype == "bfloat16":
            continue  # numpy has no bfloat16
        results[library], init, grads = _train(ours, library, dtype)
    want = _torch_run(theirs, init, grads)
    spacing = {"bfloat16": 2.0**-7, "float16": 2.0**-10}[dtype]
    for library, got in results.items():
        for k in SHAPES:
            start = init[k].double().numpy()
            assert (got[k] != start).mean() > 0.6, (library, k, "did not train")
            # within 2 roundings of the largest values (|x| < 8 here)
            np.testing.assert_allclose(got[k], want[k], atol=16 * spacing, err_msg=library)
    if "jax" in results and case.startswith("adam"):
        # the torch path runs the fused kernel (float32 arithmetic, one rounding), the
        # jax path the same maths widened to float32: equal but for a rare last bit
        for k in SHAPES:
            np.testing.assert_allclose(results["jax"][k], results["torch"][k], rtol=2 * spacing)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("numel", [4, 16, 17, 64])
def test_low_precision_sgd_trains_every_element(dtype: str, numel: int) -> None:
    """torch 2.13's CPU ``_fused_sgd_`` leaves the first ``16 * (numel // 16)`` elements
    of a bfloat16 or float16 parameter as they were; the torch step widens such groups,
    and matches the float32 computation rounded once."""
    torch_dtype = getattr(torch, dtype)
    for momentum in (0.0, 0.9):
        ctx = RuntimeContext.from_state_dict({"w": torch.ones(numel, dtype=torch_dtype)})
        opt = optim.sgd(lr=0.1, momentum=momentum)
        state = opt.init(ctx)
        # the kernel's arithmetic: float32, the parameter and buffer stored rounded
        p = torch.ones(numel, dtype=torch_dtype)
        buf = torch.zeros(numel, dtype=torch_dtype)
        for i in range(3):
            g = torch.full((numel,), 0.5, dtype=torch_dtype)
            ctx, state = opt.step(ctx.with_gradients([("w", g)]), state)
            wide_buf = g.float() if i == 0 else momentum * buf.float() + g.float()
            buf = wide_buf.to(torch_dtype)
            p = (p.float() - 0.1 * (wide_buf if momentum else g.float())).to(torch_dtype)
        assert torch.equal(ctx["w"], p), (momentum, ctx["w"], p)
        assert (ctx["w"] < 0.9).all()


def test_low_precision_jax_adam_is_optax_within_rounding() -> None:
    """optax computes its bias corrections in float32 too: bfloat16 Adam and AdamW agree
    with it within one rounding (before, torchlean's bfloat16 parameters never moved)."""
    key = jax.random.PRNGKey(0)
    for ours, theirs in (
        (optim.adamw(lr=1e-2, weight_decay=0.1), optax.adamw(1e-2, weight_decay=0.1)),
        (optim.adam(lr=1e-2), optax.adam(1e-2)),
    ):
        params = {"w": jax.random.normal(key, (7, 5)).astype(jnp.bfloat16)}
        opt_state = theirs.init(params)
        ctx = RuntimeContext.from_state_dict(dict(params))
        state = ours.init(ctx)
        for i in range(8):
            g = {"w": jax.random.normal(jax.random.PRNGKey(i + 1), (7, 5)).astype(jnp.bfloat16)}
            updates, opt_state = theirs.update(g, opt_state, params)
            params = optax.apply_updates(params, updates)
            ctx, state = ours.step(ctx.with_gradients([("w", g["w"])]), state)
        got = np.asarray(ctx["w"].astype(jnp.float32))
        want = np.asarray(params["w"].astype(jnp.float32))
        assert ctx["w"].dtype == jnp.bfloat16
        np.testing.assert_allclose(got, want, atol=2.0**-7 * 2)
        assert np.abs(got - np.asarray(jax.random.normal(key, (7, 5)))).min() > 0


def test_mixed_dtypes_in_one_context_with_clipping() -> None:
    """float32, bfloat16 and float64 parameters in one context, clipped together: the
    norm of clip_grad_norm_ (over every dtype) and torch's fused AdamW per dtype."""
    dtypes = {"a.weight": torch.bfloat16, "a.bias": torch.float64}
    g = torch.Generator().manual_seed(3)
    init = {
        k: torch.randn(s, generator=g).to(dtypes.get(k, torch.float32)) for k, s in SHAPES.items()
    }
    grads = [
        {k: (torch.randn(s, generator=g) * 3).to(init[k].dtype) for k, s in SHAPES.items()}
        for _ in range(STEPS)
    ]
    want = _torch_run(
        lambda ps: torch.optim.AdamW(list(ps.values()), lr=0.01, fused=True), init, grads, 0.5
    )
    ctx = RuntimeContext.from_state_dict({k: v.clone() for k, v in init.items()})
    opt = optim.adamw(lr=0.01, clip=0.5)
    state = opt.init(ctx)
    for gr in grads:
        ctx, state = opt.step(ctx.with_gradients([(k, gr[k].clone()) for k in SHAPES]), state)
    for k in SHAPES:
        assert ctx[k].dtype == init[k].dtype
        np.testing.assert_array_equal(_as_float64(ctx[k]), want[k])


# ---------------------------------------------------------------------- groups

GROUPS = [
    (
        "adam-lr0-group",
        lambda: optim.adam(lr=0.01, groups=[{"params": "a.*", "lr": 0.0}]),
        _groups(
            torch.optim.Adam,
            [{"params": ["a.weight", "a.bias"], "lr": 0.0}, {"params": ["b.weight", "n.weight"]}],
            lr=0.01,
        ),
    ),
    (
        "adamw-overlapping-first-wins",
        lambda: optim.adamw(
            lr=0.01,
            weight_decay=0.1,
            groups=[{"params": "a.weight", "lr": 0.05}, {"params": ["a.*", "b.*"], "lr": 0.001}],
        ),
        _groups(
            torch.optim.AdamW,
            [
                {"params": ["a.weight"], "lr": 0.05},
                {"params": ["a.bias", "b.weight"], "lr": 0.001},
                {"params": ["n.weight"]},
            ],
            lr=0.01,
            weight_decay=0.1,
        ),
    ),
    (
        "adamw-amsgrad-group-and-mask",
        lambda: optim.adamw(
            lr=0.01,
            amsgrad=True,
            groups=[{"params": "b.*", "betas": (0.5, 0.6), "eps": 1e-3}],
            no_decay=("*.bias", "b.*"),
        ),
        _groups(
            torch.optim.AdamW,
            [
                {"params": ["a.weight", "n.weight"]},
                {"params": ["a.bias"], "weight_decay": 0.0},
                {"params": ["b.weight"], "betas": (0.5, 0.6), "eps": 1e-3, "weight_decay": 0.0},
            ],
            lr=0.01,
            amsgrad=True,
        ),
    ),
    (
        "sgd-nesterov-group-lr0-with-schedule",
        lambda: optim.sgd(
            lr=optim.cosine_decay(0.1, 6),
            momentum=0.9,
            groups=[
                {"params": "b.*", "nesterov": True, "lr": 0.0},
                {"params": "n.*", "dampening": 0.5},
            ],
        ),
        None,  # a schedule: run below with LambdaLR
    ),
]


@pytest.mark.parametrize("library", ["torch", "jax", "numpy"])
@pytest.mark.parametrize(("case", "ours", "theirs"), GROUPS, ids=[c[0] for c in GROUPS])
def test_group_corners_match_torch(case: str, ours: Any, theirs: Any, library: str) -> None:
    got, init, grads = _train(ours, library, "float32")
    schedule = None
    if theirs is None:  # the base rate is a schedule: torch's LambdaLR over its groups
        schedule = optim.cosine_decay(1.0, 6)
        theirs = _groups(
            torch.optim.SGD,
            [
                {"params": ["a.weight", "a.bias"]},
                {"params": ["b.weight"], "nesterov": True, "lr": 0.0},
                {"params": ["n.weight"], "dampening": 0.5},
            ],
            lr=0.1,
            momentum=0.9,
        )
    want = _torch_run(theirs, init, grads, schedule=schedule)
    for k in SHAPES:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=2e-6, err_msg=k)
    if "lr0" in case:  # an lr-0 group does not move (its moments still update)
        frozen = [k for k in SHAPES if k.startswith("a.")] if "adam" in case else ["b.weight"]
        for k in frozen:
            np.testing.assert_array_equal(got[k], init[k].double().numpy())


# ---------------------------------------------------------------------- clipping


def _inf(grads: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    grads[2]["a.bias"][0] = float("inf")
    return grads


def _nan(grads: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    grads[2]["a.bias"][0] = float("nan")
    return grads


def _zero(grads: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    return [{k: torch.zeros_like(v) for k, v in g.items()} for g in grads]


def _tiny(grads: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    return [{k: v * 1e-30 for k, v in g.items()} for g in grads]


def _one_tiny_group(grads: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    return [{k: v * 1e-30 if k == "n.weight" else v for k, v in g.items()} for g in grads]


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy's inf * 0
@pytest.mark.parametrize("library", ["torch", "jax", "numpy"])
@pytest.mark.parametrize("max_norm", [1.0, 1e-3])
@pytest.mark.parametrize("grads_of", [_inf, _nan, _zero, _tiny, _one_tiny_group])
def test_clip_option_is_clip_grad_norm(library: str, max_norm: float, grads_of: Any) -> None:
    """``clip=`` against ``clip_grad_norm_`` then torch.optim.SGD: a zero norm (the
    factor ``max_norm / 1e-6`` clamped to 1), an infinite or NaN gradient (torch's
    default ``error_if_nonfinite=False``: every parameter becomes NaN, the same
    elements on both sides), tiny gradients, one group of tiny gradients."""

    def ours() -> optim.Optimizer:
        return optim.sgd(lr=0.1, momentum=0.9, groups=[{"params": "n.*", "lr": 0.5}], clip=max_norm)

    got, init, grads = _train(ours, library, "float32", grads_of)
    want = _torch_run(
        _groups(
            torch.optim.SGD,
            [{"params": ["a.weight", "a.bias", "b.weight"]}, {"params": ["n.weight"], "lr": 0.5}],
            lr=0.1,
            momentum=0.9,
        ),
        init,
        grads,
        max_norm,
    )
    for k in SHAPES:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)


# ---------------------------------------------------------------------- schedules


def _torch_lrs(make: Callable[[torch.optim.Optimizer], Any], n: int) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = make(opt)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])  # the rate of this step
        opt.step()
        sched.step()
    return out


def test_schedules_step_by_step() -> None:
    """The rate of step ``i`` (count ``i``) against torch's scheduler (read before its
    ``i``-th ``step()``) and optax's schedule at count ``i``; python ints and traced
    jax integers. An off-by-one in the count shifts every value."""
    n = 30
    lr = torch.optim.lr_scheduler
    cases = [
        (
            optim.cosine_decay(1.0, 20, final=0.1),
            _torch_lrs(lambda o: lr.CosineAnnealingLR(o, T_max=20, eta_min=0.1), 21),
            optax.cosine_decay_schedule(1.0, 20, alpha=0.1),
        ),
        (
            optim.linear_warmup(1.0, 5, init=0.2),
            _torch_lrs(lambda o: lr.LinearLR(o, 0.2, 1.0, total_iters=5), n),
            optax.linear_schedule(0.2, 1.0, 5),
        ),
        (
            optim.warmup_cosine(1.0, 5, 25, init=0.1, final=0.05),
            _torch_lrs(
                lambda o: lr.SequentialLR(
                    o,
                    [
                        lr.LinearLR(o, 0.1, 1.0, total_iters=5),
                        lr.CosineAnnealingLR(o, T_max=20, eta_min=0.05),
                    ],
                    milestones=[5],
                ),
                26,
            ),
            optax.warmup_cosine_decay_schedule(0.1, 1.0, 5, 25, end_value=0.05),
        ),
    ]
    for ours, from_torch, from_optax in cases:
        values = [ours(i) for i in range(n)]
        # torch's cosine restarts after T_max; optax's (and ours) stays at the end value
        np.testing.assert_allclose(values[: len(from_torch)], from_torch, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(values, [float(from_optax(i)) for i in range(n)], atol=1e-6)
        traced = jax.jit(ours)
        np.testing.assert_allclose(
            [float(traced(jnp.asarray(i))) for i in range(n)], values, atol=1e-6
        )


@pytest.mark.parametrize("library", ["torch", "jax-jit"])
def test_per_group_schedules_with_mask_and_clip(library: str) -> None:
    """A schedule per group (torch: LambdaLR with one lambda per group), betas per group,
    the mask and clipping together, on torch and inside jax.jit."""
    init = {"a": np.ones((3, 2), np.float32), "b": np.full(3, 2.0, np.float32)}
    grads = [
        {
            k: np.random.default_rng(i).standard_normal(v.shape).astype(np.float32)
            for k, v in init.items()
        }
        for i in range(6)
    ]
    opt = optim.adamw(
        lr=optim.cosine_decay(0.1, 5),
        weight_decay=0.1,
        groups=[{"params": "b", "lr": optim.linear_warmup(0.2, 3), "betas": (0.8, 0.9)}],
        no_decay="b",
        clip=0.7,
    )
    conv: Callable[[np.ndarray[Any, Any]], Any] = (
        torch.tensor if library == "torch" else jnp.asarray
    )
    ctx = RuntimeContext.from_state_dict({k: conv(v) for k, v in init.items()})
    state = opt.init(ctx)
    step = jax.jit(lambda c, s: opt.step(c, s, donate=False)) if library != "torch" else opt.step
    for g in grads:
        ctx, state = step(ctx.with_gradients([(k, conv(v)) for k, v in g.items()]), state)
    params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in init.items()}
    theirs = torch.optim.AdamW(
        [
            {"params": [params["a"]], "lr": 0.1},
            {"params": [params["b"]], "lr": 0.2, "betas": (0.8, 0.9), "weight_decay": 0.0},
        ],
        weight_decay=0.1,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        theirs, [optim.cosine_decay(1.0, 5), optim.linear_warmup(1.0, 3)]
    )
    for g in grads:
        for k in init:
            params[k].grad = torch.tensor(g[k])
        torch.nn.utils.clip_grad_norm_(list(params.values()), 0.7)
        theirs.step()
        sched.step()
    for k in init:
        np.testing.assert_allclose(
            _as_float64(ctx[k]), _as_float64(params[k]), rtol=1e-5, atol=5e-6
        )


def test_optax_masked_adamw_with_schedule_continues_after_import() -> None:
    """optax.adamw with a warm-up/cosine schedule and a weight-decay mask, 4 steps, its
    state imported into adamw with the same schedule and ``no_decay``: 6 more steps on
    both sides agree (the schedule read at the imported count)."""
    key = jax.random.PRNGKey(0)
    params = {"dense": {"kernel": jax.random.normal(key, (3, 4)), "bias": jnp.zeros(4)}}

    def mask(p: Any) -> Any:
        return jax.tree_util.tree_map_with_path(lambda path, x: path[-1].key != "bias", p)

    tx = optax.adamw(
        optax.warmup_cosine_decay_schedule(0.0, 0.05, 3, 20), weight_decay=0.1, mask=mask
    )
    opt_state = tx.init(params)
    grads = [
        jax.tree.map(lambda x, i=i: jax.random.normal(jax.random.PRNGKey(i + 1), x.shape), params)
        for i in range(10)
    ]
    for g in grads[:4]:
        updates, opt_state = tx.update(g, opt_state, params)
        params = optax.apply_updates(params, updates)
    ctx = RuntimeContext.from_pytree(params)
    opt, state = optim.import_optax_state(
        opt_state,
        ctx,
        optimizer=optim.adamw(
            lr=optim.warmup_cosine(0.05, 3, 20), weight_decay=0.1, no_decay="*.bias"
        ),
    )
    assert int(state["count"]) == 4
    for g in grads[4:]:
        updates, opt_state = tx.update(g, opt_state, params)
        params = optax.apply_updates(params, updates)
        ctx, state = opt.step(
            ctx.with_gradients(
                [("dense.kernel", g["dense"]["kernel"]), ("dense.bias", g["dense"]["bias"])]
            ),
            state,
        )
    for name, want in (("kernel", params["dense"]["kernel"]), ("bias", params["dense"]["bias"])):
        np.testing.assert_allclose(np.asarray(ctx[f"dense.{name}"]), np.asarray(want), atol=1e-6)


def test_bfloat16_torch_state_import_continues_as_torch_fused() -> None:
    """A bfloat16 AdamW run in torch, imported after 3 steps: 3 more steps give the bits
    of torch's fused AdamW continuing from the same state (torch's default path differs
    from fused=True by its roundings, see docs/training.md)."""
    import copy

    g = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(40, generator=g).bfloat16())
    grads = [torch.randn(40, generator=g).bfloat16() for _ in range(6)]
    theirs = torch.optim.AdamW([p], lr=0.01, fused=True)
    for gr in grads[:3]:
        p.grad = gr.clone()
        theirs.step()
    saved = copy.deepcopy(theirs.state_dict())
    ctx = RuntimeContext.from_state_dict({"w": p.detach().clone()})
    opt, state = optim.import_torch_state(saved, ctx, names=["w"], optimizer=optim.adamw(lr=0.01))
    for gr in grads[3:]:
        p.grad = gr.clone()
        theirs.step()
        ctx, state = opt.step(ctx.with_gradients([("w", gr.clone())]), state)
    assert ctx["w"].dtype == torch.bfloat16
    assert torch.equal(ctx["w"], p.detach())
