"""Shared helpers of the CLI tests: the TorchLean fixtures and running ``main``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from torchlean.cli import main


def fixtures_dir() -> Path:
    """``shared/fixtures/torchlean`` beside the repository (or $TORCHLEAN_FIXTURES)."""
    override = os.environ.get("TORCHLEAN_FIXTURES")
    if override:
        return Path(override)
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "shared" / "fixtures" / "torchlean"
        if candidate.is_dir():
            return candidate
    raise AssertionError(
        "TorchLean fixtures not found: put shared/fixtures/torchlean beside the"
        " repository or set TORCHLEAN_FIXTURES"
    )


FIXTURES = fixtures_dir()
MLP = FIXTURES / "mlp.json"
CNN = FIXTURES / "cnn.json"
TRANSFORMER = FIXTURES / "transformer_encoder.json"


def run(capsys: pytest.CaptureFixture[str], *argv: str | os.PathLike[str]) -> tuple[int, str, str]:
    """``main(argv)`` and what it printed on stdout and stderr."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err
