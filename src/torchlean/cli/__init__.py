"""The ``torchlean`` command (filled in by the CLI module)."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Run the ``torchlean`` command; returns the exit code."""
    return 0
