"""docs/api.md agrees with the code (names, signatures, first docstring lines)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_api_table_is_up_to_date() -> None:
    fresh = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "api_table.py")],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    assert (ROOT / "docs" / "api.md").read_text() == fresh, (
        "docs/api.md is out of date: run `.venv/bin/python scripts/api_table.py > docs/api.md`"
    )
