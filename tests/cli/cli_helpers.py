"""Shared helpers of the CLI tests: the TorchLean fixtures and running ``main``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from torchlean.cli import main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "torchlean"
MLP = FIXTURES / "mlp.json"
CNN = FIXTURES / "cnn.json"
TRANSFORMER = FIXTURES / "transformer_encoder.json"


def run(capsys: pytest.CaptureFixture[str], *argv: str | os.PathLike[str]) -> tuple[int, str, str]:
    """``main(argv)`` and what it printed on stdout and stderr."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err
