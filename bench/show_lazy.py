"""``torchlean show`` on a multi-GB safetensors checkpoint: lazy versus a full load.

Writes a checkpoint of about 2 GiB (or uses the path given), then measures, side by side
in this process, the summary ``torchlean show`` builds (header, previews and a bounded
sample per tensor) against loading the whole file and summarising the context; and the
wall time of ``python -m torchlean show PATH --json`` as a user runs it.

    PYTHONPATH=src python bench/show_lazy.py [PATH] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _write(path: Path) -> None:
    import numpy as np
    import safetensors.numpy

    tensors = {
        f"layers.{i}.weight": np.full((8192, 16384), 0.01 * (i + 1), dtype=np.float32)
        for i in range(4)
    }  # 4 x 512 MiB
    tensors["embed"] = np.arange(1 << 20, dtype=np.float32).reshape(1024, 1024)
    safetensors.numpy.save_file(tensors, str(path))


def _median(f: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("path", nargs="?")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    tmp = None
    if args.path:
        path = Path(args.path)
    else:
        tmp = tempfile.TemporaryDirectory()
        path = Path(tmp.name) / "big.safetensors"
        _write(path)
    try:
        from torchlean import io
        from torchlean.cli import _files
        from torchlean.widgets import summarize

        size = path.stat().st_size
        lazy = _median(lambda: _files.summary(path), args.repeat)
        full = _median(lambda: summarize(io.load(path)), max(1, args.repeat // 2))
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
        cmd = [sys.executable, "-m", "torchlean", "show", str(path), "--json"]

        def run() -> None:
            subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)

        wall = _median(run, args.repeat)
        print(f"file: {size / 2**30:.2f} GiB")
        print(f"lazy summary (show):          median {lazy * 1e3:8.1f} ms")
        print(f"full load + summarize:        median {full * 1e3:8.1f} ms")
        print(f"ratio full / lazy:            {full / lazy:8.1f}x")
        print(f"`python -m torchlean show --json` wall: median {wall:.2f} s")
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
