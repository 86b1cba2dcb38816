"""A short fuzz run of every loader (about 40 s): nothing but TorchLeanErrors.

Runs ``tests/fuzz/run.py --seconds 40`` (atheris, coverage-guided libFuzzer,
seeded with ``tests/fuzz/corpus/``) in a subprocess and prints how many inputs each
format tried. A longer run is the same command with ``--minutes 30``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).parent / "corpus"
FORMATS = ("safetensors", "json", "npz", "pt")
SECONDS = 40


def test_corpus_is_small_and_covers_every_format() -> None:
    total = 0
    for fmt in FORMATS:
        files = list((CORPUS / fmt).iterdir())
        assert len(files) >= 5, fmt
        total += sum(f.stat().st_size for f in files)
    assert total < 300_000
    fixtures = [f.name for f in (CORPUS / "json").iterdir() if f.name.startswith("fixture_")]
    assert sorted(fixtures) == [
        "fixture_cnn.json",
        "fixture_mlp.json",
        "fixture_transformer_encoder.json",
    ]
    in_repo = Path(__file__).parents[1] / "fixtures" / "torchlean"
    for name in fixtures:
        copy = in_repo / name.removeprefix("fixture_")
        assert (CORPUS / "json" / name).read_bytes() == copy.read_bytes(), name


@pytest.mark.timeout(SECONDS + 240)
def test_short_fuzz_run_gives_only_torchlean_errors(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).parent / "run.py"),
            "--seconds",
            str(SECONDS),
            "--work",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=SECONDS + 200,
        check=False,
    )
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr[-6000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+) inputs", done.stdout, re.M))
    assert sorted(counts) == sorted([*FORMATS, "total"])
    for fmt in FORMATS:
        assert int(counts[fmt]) > 100, (fmt, done.stdout)
    assert "only TorchLeanErrors" in done.stdout
    assert not list(tmp_path.rglob("crash-*"))
