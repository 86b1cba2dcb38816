"""Tied weights under fire: a tie across three names, save/load of the tie, a file that
omits the tied key or has both keys (equal, or different: refused, never one picked
silently), shape-mismatched ties, and non-strict loading that reports instead of
raising."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import torchlean.io as tio
from torchlean import RuntimeContext
from torchlean.errors import ExpectationError, UnknownNameError


class ThreeTied(torch.nn.Module):
    """An embedding whose weight is also two heads' weight (three names, one tensor)."""

    def __init__(self, *, heads: int = 2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(5, 4)
        self.head = torch.nn.Linear(4, 5, bias=False)
        self.head.weight = self.emb.weight
        if heads == 2:
            self.out = torch.nn.Linear(4, 5, bias=False)
            self.out.weight = self.emb.weight


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_a_tie_across_three_names_is_one_variable_saved_once(tmp_path: Path, suffix: str) -> None:
    ctx = RuntimeContext.from_module(ThreeTied())
    assert ctx.variable_names() == ["emb.weight"]
    assert ctx.aliases() == {"head.weight": "emb.weight", "out.weight": "emb.weight"}
    path = tmp_path / f"w{suffix}"
    tio.save(ctx, path)
    assert [e.name for e in tio.inspect(path).entries] == ["emb.weight"]
    back = tio.load(path, backend="torch")
    assert back.aliases() == ctx.aliases()
    fresh = ThreeTied()
    torch.nn.init.zeros_(fresh.emb.weight)
    back.load_into(fresh)
    assert fresh.head.weight is fresh.emb.weight and fresh.out.weight is fresh.emb.weight
    assert torch.equal(fresh.emb.weight, ctx["emb.weight"])


def test_a_file_that_omits_the_tied_keys_loads() -> None:
    w = torch.randn(5, 4)
    module = ThreeTied()
    RuntimeContext.from_state_dict({"emb.weight": w}).load_into(module)
    assert module.out.weight is module.emb.weight
    assert torch.equal(module.out.weight, w)


def test_a_file_with_every_tied_key_equal_loads() -> None:
    w = torch.randn(5, 4)
    sd = {"emb.weight": w, "head.weight": w.clone(), "out.weight": w.clone()}
    module = ThreeTied()
    RuntimeContext.from_state_dict(sd).load_into(module)
    assert module.head.weight is module.emb.weight
    assert torch.equal(module.emb.weight, w)


@pytest.mark.parametrize("strict", [True, False])
def test_tied_keys_with_different_values_are_refused_not_one_picked(strict: bool) -> None:
    sd = {"emb.weight": torch.randn(5, 4), "head.weight": torch.randn(5, 4)}
    module = ThreeTied(heads=1)
    before = module.emb.weight.detach().clone()
    with pytest.raises(ExpectationError) as info:
        RuntimeContext.from_state_dict(sd).load_into(module, strict=strict)
    assert str(info.value) == (
        "load_into: the module ties `emb.weight` and `head.weight` (one tensor) but the"
        " context holds them as variables with different values; loading both would keep"
        " one of them silently. Keep the one you mean (build the context without the"
        " other, or ctx.tie(alias, to=name)); nothing was copied, the module is unchanged"
    )
    assert torch.equal(module.emb.weight, before)


def test_tied_keys_that_differ_only_in_dtype_compare_as_the_module_holds_them() -> None:
    w = torch.randn(5, 4)
    sd = {"emb.weight": w, "head.weight": w.double()}
    module = ThreeTied(heads=1)
    RuntimeContext.from_state_dict(sd).load_into(module, dtypes=False)
    assert torch.equal(module.emb.weight, w)


def test_a_tie_whose_keys_disagree_in_shape_is_a_mismatch() -> None:
    sd = {"emb.weight": torch.randn(5, 4), "head.weight": torch.randn(4, 5)}
    with pytest.raises(ExpectationError, match=r"mismatched `head\.weight`: expected shape"):
        RuntimeContext.from_state_dict(sd).load_into(ThreeTied(heads=1), strict=False)


def test_non_strict_reports_missing_and_unexpected_and_never_calls_a_shape_missing() -> None:
    module = ThreeTied(heads=1)
    report = RuntimeContext.from_state_dict({"extra": torch.ones(1)}).load_into(
        module, strict=False
    )
    assert report.missing == ("emb.weight", "head.weight")
    assert report.unexpected == ("extra",)
    # a shape mismatch is a mismatch, not a missing name, and still raises
    with pytest.raises(ExpectationError) as info:
        RuntimeContext.from_state_dict({"emb.weight": torch.ones(5, 3)}).load_into(
            module, strict=False
        )
    assert "missing" not in str(info.value)
    assert "mismatched `emb.weight`: expected shape (5, 4), got (5, 3)" in str(info.value)


def test_load_with_expect_non_strict_reports(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    tio.save(
        RuntimeContext.from_state_dict({"emb.weight": torch.ones(5, 4), "zzz": torch.ones(1)}),
        path,
    )
    ctx, report = tio.load(path, expect=ThreeTied(), strict=False)
    assert report.unexpected == ("zzz",) and report.missing == ()
    assert ctx.variable_names()[::-1] == ["emb.weight", "zzz"]


def test_tie_to_an_alias_names_the_variable() -> None:
    ctx = RuntimeContext.from_state_dict({"a": torch.ones(2)}).tie("b", to="a")
    assert ctx.tie("c", to="b").aliases() == {"b": "a", "c": "a"}
    with pytest.raises(UnknownNameError):
        ctx.tie("c", to="nothing")
