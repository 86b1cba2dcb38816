"""Checking weights against what a model expects, and the nn.Module bridges."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import torchlean.io as tio
from torchlean import RuntimeContext, empty_context
from torchlean.errors import ExpectationError


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2)
    )


def test_every_problem_at_once(tmp_path: Path) -> None:
    ctx = RuntimeContext.from_module(model(), backend="numpy")
    sd = ctx.state_dict()
    sd["module.0.weight"] = sd.pop("0.weight")  # a DataParallel name
    sd["2.wieght"] = sd.pop("2.weight")  # a typo
    sd["2.bias"] = np.zeros(3, np.float32)  # wrong shape
    sd["extra"] = np.zeros(1, np.float32)
    path = tmp_path / "w.safetensors"
    tio.save(RuntimeContext.from_state_dict(sd), path)
    with pytest.raises(ExpectationError) as info:
        tio.load(path, expect=model())
    text = str(info.value)
    assert "4 problems" not in text
    assert "missing `0.weight` (did you mean `module.0.weight`?)" in text
    assert "missing `2.weight` (did you mean `2.wieght`?)" in text
    assert "unexpected `extra`" in text
    assert "mismatched `2.bias`: expected shape (2,), got (3,)" in text
    assert text.startswith(f"{path} do not match what is expected (6 problems):")


def test_report_and_dtypes() -> None:
    ctx = empty_context().register_variable("w", np.ones((2, 2), np.float64))
    report = tio.compare(ctx, {"w": (2, 2)})
    assert report.ok
    assert tio.check_expected(ctx, {"w": ((2, 2), "float64")}, dtypes=True).ok
    with pytest.raises(
        ExpectationError, match="mismatched `w`: expected dtype float32, got float64"
    ):
        tio.check_expected(ctx, {"w": ((2, 2), "float32")}, dtypes=True)
    bad = tio.compare(ctx, {"v": (2, 2)})
    assert bad.missing == ("v",) and bad.unexpected == ("w",) and not bad


def test_expect_with_another_context_and_prefix_hint(tmp_path: Path) -> None:
    ctx = empty_context().register_variable("module.fc", np.ones(2, np.float32))
    want = empty_context().register_variable("fc", np.ones(2, np.float32))
    with pytest.raises(ExpectationError, match=r'load with strip_prefix="module\."'):
        tio.check_expected(ctx, want)
    path = tmp_path / "dp.npz"
    tio.save(ctx, path)
    assert list(tio.load(path, expect=want, strip_prefix="module.").state_dict()) == ["fc"]


def test_from_module_and_load_into() -> None:
    src = model()
    ctx = RuntimeContext.from_module(src)
    assert list(ctx.state_dict()) == list(src.state_dict())
    with torch.no_grad():
        src[0].weight.add_(1.0)  # training the module later never changes the context
    assert not torch.equal(ctx["0.weight"], src[0].weight)
    dst = model()
    with torch.no_grad():
        for p in dst.parameters():
            p.zero_()
    ctx.load_into(dst)
    for name, t in dst.state_dict().items():
        assert torch.equal(t, ctx[name]), name


def test_load_into_leaves_module_unchanged_when_wrong() -> None:
    dst = model()
    before = {n: t.clone() for n, t in dst.state_dict().items()}
    ctx = RuntimeContext.from_module(model())
    ctx = ctx.set_variable("2.bias", torch.zeros(5))
    ctx = ctx.register_variable("0.weight", torch.ones(4, 3, dtype=torch.float64))
    with pytest.raises(ExpectationError) as info:
        ctx.load_into(dst)
    assert "mismatched `2.bias`: expected shape (2,), got (5,)" in str(info.value)
    assert "mismatched `0.weight`: expected dtype float32, got float64" in str(info.value)
    for n, t in dst.state_dict().items():
        assert torch.equal(t, before[n])


def test_expectation_is_checked_before_any_tensor_data_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchlean.io import safetensors as st_module

    path = tmp_path / "w.safetensors"
    tio.save(empty_context().register_variable("w", np.ones(3, np.float32)), path)

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("tensor data was read")

    monkeypatch.setattr(st_module, "_read_numpy", no_reading)
    with pytest.raises(
        ExpectationError, match=r"mismatched `w`: expected shape \(4,\), got \(3,\)"
    ):
        tio.load(path, expect={"w": (4,)})


def test_importing_torchlean_io_imports_neither_torch_nor_jax() -> None:
    import subprocess
    import sys

    code = (
        "import sys, torchlean, torchlean.io, torchlean.io.safetensors, torchlean.io.npz,"
        " torchlean.io.torchlean_json, torchlean.io.torch, torchlean.io.expect;"
        "print(sorted(m for m in ('torch', 'jax') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_strip_prefix_refuses_to_merge_two_names(tmp_path: Path) -> None:
    ctx = empty_context().register_variable("module.w", np.ones(1, np.float32))
    ctx = ctx.register_variable("w", np.ones(2, np.float32))
    path = tmp_path / "c.safetensors"
    tio.save(ctx, path)
    with pytest.raises(ValueError, match=r"would give variables `w` and `module\.w` the same"):
        tio.load(path, strip_prefix="module.")
