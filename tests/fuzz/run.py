"""Fuzz every loader: ``python -m tests.fuzz.run [--minutes M | --seconds S] [--formats F,...]``
(or ``python tests/fuzz/run.py ...``), from the repository root.

Runs the atheris target (:mod:`tests.fuzz.target`) once per format, one after the other,
each in its own process for its share of the time, seeded with
``tests/fuzz/corpus/<format>/`` (read, never written). New inputs that find new
coverage go to ``--work`` (default: a temporary folder, removed at the end; give a
folder to keep them). Each process runs under libFuzzer's limits: 2 GiB of memory,
10 s per input. A crash (anything but a TorchLeanError) stops that format's run, saves
the input under ``--work/<format>/crash-*`` and makes the exit code 1.

Prints, per format, the inputs tried and the seconds taken, and the total.

Reading map:
- :func:`fuzz_one` -- one format's run; returns (inputs tried, seconds, crash or None).
- :func:`main` -- the command line.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).parent / "corpus"
FORMATS = ("safetensors", "json", "npz", "pt")


def fuzz_one(
    fmt: str, seconds: float, work: Path, *, seed: int = 1, runs: int | None = None
) -> tuple[int, float, str | None]:
    """Fuzz one format for ``seconds``; (inputs tried, seconds, crash text or None)."""
    out = work / fmt
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")])
    scratch = Path(tempfile.mkdtemp(prefix="torchlean-fuzz-"))
    env["TORCHLEAN_FUZZ_SCRATCH"] = str(scratch)
    args = [
        sys.executable,
        str(Path(__file__).parent / "target.py"),
        fmt,
        str(out),
        str(CORPUS / fmt),
        f"-max_total_time={max(1, round(seconds))}",
        f"-seed={seed}",
        "-rss_limit_mb=2048",
        "-timeout=10",
        "-max_len=16384",
        f"-artifact_prefix={out}/",
        "-print_final_stats=1",
    ]
    if runs is not None:
        args.append(f"-runs={runs}")
    start = time.perf_counter()
    try:
        done = subprocess.run(
            args,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=seconds + 120,
            check=False,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    took = time.perf_counter() - start
    text = done.stderr
    found = re.findall(r"stat::number_of_executed_units: (\d+)", text)
    tried = int(found[-1]) if found else 0
    if done.returncode != 0:
        return tried, took, text[-6000:]
    return tried, took, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fuzz.run", description=__doc__.split("\n\n")[0]
    )
    time_group = parser.add_mutually_exclusive_group()
    time_group.add_argument("--minutes", type=float, help="total time, shared by the formats")
    time_group.add_argument("--seconds", type=float, help="total time, shared by the formats")
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated formats")
    parser.add_argument("--seed", type=int, default=1, help="libFuzzer's random seed")
    parser.add_argument("--work", type=Path, help="keep new inputs and crashes here")
    args = parser.parse_args(argv)
    total = args.seconds if args.seconds else 60 * (args.minutes or 1.0)
    formats = [f for f in args.formats.split(",") if f]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        parser.error(f"unknown format {unknown[0]}; use {', '.join(FORMATS)}")
    work = args.work or Path(tempfile.mkdtemp(prefix="torchlean-fuzz-work-"))
    crashed = False
    inputs = 0
    start = time.perf_counter()
    try:
        for fmt in formats:
            tried, took, crash = fuzz_one(fmt, total / len(formats), work, seed=args.seed)
            inputs += tried
            status = "ok" if crash is None else "CRASH"
            print(f"{fmt:12s} {tried:9d} inputs in {took:6.1f} s  {status}", flush=True)
            if crash is not None:
                crashed = True
                print(crash, file=sys.stderr)
    finally:
        if args.work is None and not crashed:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"total        {inputs:9d} inputs in {time.perf_counter() - start:6.1f} s;"
        f" {'a crash: inputs kept in ' + str(work) if crashed else 'only TorchLeanErrors'}"
    )
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
