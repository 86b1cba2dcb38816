"""torchlean demo: trains, prints the context and the accuracy, writes three files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from torchlean import io
from torchlean.demo import cli_main, init_mlp, two_moons


def test_two_moons_is_seeded_and_balanced() -> None:
    x, y = two_moons(100)
    x2, y2 = two_moons(100)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert x.shape == (100, 2) and x.dtype == np.float32 and y.sum() == 50
    assert abs(float(x.mean())) < 0.3


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_demo_writes_its_files_and_reports(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    code = cli_main(["--steps", "40", "--backend", backend, "--out", str(out), "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0
    assert "test accuracy" in text and "fc1.weight" in text
    for name in ("checkpoint.safetensors", "weights.json", "loss.png"):
        assert str(out / name) in text.replace("\n", "")
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    weights = io.load(out / "weights.json")
    assert set(weights.state_dict()) == set(init_mlp("torch").state_dict())
    checkpoint = io.load(out / "checkpoint.safetensors").state_dict()
    assert int(checkpoint["train/step"]) == 40
    assert "optim/exp_avg/fc1.weight" in checkpoint


def test_demo_learns_the_moons(tmp_path: Path) -> None:
    from torchlean.demo import run

    result = run(steps=150, out=tmp_path, progress=False)
    assert result.accuracy > 0.95
    assert result.losses[-1] < result.losses[0] / 10


def test_demo_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli_main(["--help"])
    assert info.value.code == 0
    assert "torchlean demo" in capsys.readouterr().out
    assert cli_main(["--steps", "0"]) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["--backend", "numpy"])
