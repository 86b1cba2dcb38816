"""One set of gradient/variable rules (``torchlean.runtime.check``) behind every view."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

import torchlean as tl
from torchlean._text import did_you_mean, format_bytes, short_repr
from torchlean.runtime.check import EntryFacts, check_entries, check_pair
from torchlean.runtime.context import donate
from torchlean.widgets import summarize, summarize_sources, to_html, to_text
from torchlean.widgets._format import DONATED
from torchlean.widgets._sources import source_of

sys.path.insert(0, str(Path(__file__).resolve().parent))
from views_helpers import sample_context


class _Source:
    """A source whose values are a numpy array, on a device it names."""

    def __init__(self, values: np.ndarray[Any, Any], device: str) -> None:
        self.values, self.device = values, device
        self.dims, self.dtype = tuple(values.shape), values.dtype.name

    def head(self, n: int) -> np.ndarray[Any, Any]:
        return self.values.reshape(-1)[:n]

    def sample(self, limit: int) -> tuple[np.ndarray[Any, Any], bool]:
        return self.values.reshape(-1), False


def _sources(ctx: tl.RuntimeContext[Any]) -> tuple[list[Any], list[Any]]:
    return (
        [(n, source_of(at)) for n, at in ctx.var_registry],
        [(n, source_of(at)) for n, at in ctx.gradients],
    )


def test_the_file_view_and_the_context_view_find_the_same_problems() -> None:
    ctx = sample_context().register_gradient("steps", np.zeros((), np.float32))
    v, g = _sources(ctx)
    by_file = summarize_sources("t", v, g).problems
    by_context = summarize(ctx).problems
    assert by_file == by_context == ctx.check().problems
    assert {p.kind for p in by_file} == {
        "orphan-gradient",
        "shape-mismatch",
        "dtype-mismatch",
        "non-finite",
    }


def test_mixed_devices_are_found_by_the_file_view_too() -> None:
    s = summarize_sources(
        "t",
        [("w", _Source(np.ones(2, np.float32), "cuda:0"))],
        [("w", _Source(np.ones(2, np.float32), "cpu"))],
    )
    assert [p.message for p in s.problems] == [
        "tensors are on several devices: cuda:0 (variable `w`), cpu (gradient `w`)"
    ]
    import torch

    ctx = (
        tl.empty_context()
        .register_variable("w", np.ones(2, np.float32))
        .register_gradient("w", torch.empty(2, device="meta"))
    )
    facts = (
        [("w", EntryFacts(at.dims, at.dtype, at.device)) for _, at in ctx.var_registry],
        [("w", EntryFacts(at.dims, at.dtype, at.device)) for _, at in ctx.gradients],
    )
    assert check_entries(*facts).problems == ctx.check().problems
    assert [p.kind for p in ctx.check()] == ["mixed-devices"]


def test_check_pair_reads_shapes_and_dtypes_of_anything_that_has_them() -> None:
    ctx = (
        tl.empty_context()
        .register_variable("w", np.zeros((2, 2), np.float32))
        .register_gradient("w", np.zeros(2, np.float64))
    )
    var, grad = ctx.variable_entry("w"), ctx.gradient_entry("w")
    assert var is not None and grad is not None
    assert [p.kind for p in check_pair("w", var, grad, index=0)] == [
        "shape-mismatch",
        "dtype-mismatch",
    ]
    assert check_pair("w", var, var) == ()
    (orphan,) = check_pair("q", None, EntryFacts((1,), "float32", "cpu"))
    assert orphan.message == "gradient `q` has no variable of that name"


MESH = "DeviceMesh((2,), 'cpu', stride=(1,))"
REDISTRIBUTE = (
    f"gradient `w` is laid out as P(sum) on {MESH} but its variable as R on {MESH};"
    " redistribute it explicitly (e.g. grad.redistribute(var.device_mesh,"
    " var.placements) for a DTensor, jax.device_put(grad, var.sharding) for a jax array)"
)


def test_a_pending_reduction_says_the_step_can_do_it() -> None:
    # the facts a DTensor context gives: a Partial gradient of a replicated variable
    var = EntryFacts((3, 4), "float32", "cpu", placement=f"R on {MESH}")
    grad = EntryFacts((3, 4), "float32", "cpu", placement=f"P(sum) on {MESH}", pending=True)
    (problem,) = check_entries([("w", var)], [("w", grad)])
    assert problem.kind == "placement-mismatch"
    assert problem.message == REDISTRIBUTE + (
        ", or let the optimizer step reduce its Partial placements:"
        " step(..., reduce_partial=True) or fit(..., reduce_partial=True) (one collective"
        " per such gradient, on every rank)"
    )
    # another difference: the explicit redistribution only
    (other,) = check_pair(
        "w", var, EntryFacts((3, 4), "float32", "cpu", placement=f"P(sum) on {MESH}")
    )
    assert other.message == REDISTRIBUTE


def test_sampled_counts_say_so() -> None:
    (p,) = check_entries([("x", EntryFacts((10**6,), "float32", "cpu", 1, 0, 1000))])
    assert p.message == "variable `x` has 1 NaN value in a sample of 1,000"


def test_a_donated_context_says_so_instead_of_showing_empty_registries() -> None:
    ctx = sample_context()
    donate(ctx, to="sgd_step")
    text = to_text(ctx)
    assert text.splitlines()[-1] == DONATED
    assert "no problems found" not in text and "Variables" not in text
    page = to_html(ctx)
    assert DONATED in page and "no problems found" not in page
    assert summarize(ctx).donated


def test_text_helpers() -> None:
    assert short_repr("x" * 100) == repr("x" * 100)[:57] + "..."
    assert short_repr("abc", limit=4) == "'..."
    assert short_repr([1, 2]) == "[1, 2]"
    assert did_you_mean("wieght", ["weight", "bias"]) == ["weight"]
    assert did_you_mean("zzz", ["weight"]) == []
    assert [format_bytes(n) for n in (512, 1536, 3 << 30, 5 << 40)] == [
        "512 B",
        "1.5 KiB",
        "3.0 GiB",
        "5.0 TiB",
    ]
