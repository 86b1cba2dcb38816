"""``torchlean show`` of a ``.pt`` file beside its safetensors twin: wall time and peak RSS.

Writes a ~200 MB state_dict (``--mb``) twice -- ``torch.save`` and safetensors, the same
tensors -- then runs ``python -m torchlean show PATH --width 120`` on each, in fresh
processes, side by side, ``--repeat`` times, and prints the median wall time and the
median peak RSS (``ru_maxrss`` of the child). A ``.pt`` zip file is read without torch
(io/_torchzip.py: the pickle by a restricted reader, samples with ``pread``); the row
"torch path" is the same show through ``torch.load(mmap=True)`` (what ``inspect`` did
before, and still does for files the torch-free reader leaves to torch), and the floor
that path pays is importing torch. Also the old way of reading a ``.pt`` for ``show``
(``torch.load`` of the whole file, then a summary).

    PYTHONPATH=src python bench/show_pt.py [--mb 200] [--repeat 3]
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

SRC = Path(__file__).resolve().parents[1] / "src"

# the pre-mmap path: the whole file read with torch.load, then summarised in memory
_FULL = (
    "import sys, torch, torchlean.io as tio\n"
    "from torchlean.widgets import summarize\n"
    "ctx = tio.load(sys.argv[1])\n"
    "summarize(ctx)\n"
)


# the same show, with the header read by torch (the path before io/_torchzip.py)
_TORCH_PATH = (
    "import sys\n"
    "import torchlean.io._torchzip as z\n"
    "z.read_header = lambda fd, where: None\n"
    "import torchlean.io.torch as t\n"
    "t.read_header = z.read_header\n"
    "from torchlean.cli import main\n"
    "sys.exit(main(['show', sys.argv[1], '--width', '120']))\n"
)


_WRITE = (
    "import sys, torch\n"
    "from safetensors.torch import save_file\n"
    "folder, mb = sys.argv[1], int(sys.argv[2])\n"
    "per = 4 << 20\n"  # 4 M float32 = 16 MiB per tensor
    "n = max(1, (mb << 20) // (per * 4))\n"
    "t = {f'blocks.{i}.weight': torch.full((2048, per // 2048), 0.01 * (i + 1))"
    " for i in range(n)}\n"
    "t['embed'] = torch.arange(1 << 20, dtype=torch.float32).reshape(1024, 1024)\n"
    "torch.save(t, folder + '/model.pt')\n"
    "save_file(t, folder + '/model.safetensors')\n"
)


def _write(folder: Path, mb: int) -> tuple[Path, Path]:
    """The twin files, written by a child process (this one stays small: a child's peak
    RSS as wait4 reports it includes what it was forked from)."""
    subprocess.run([sys.executable, "-c", _WRITE, str(folder), str(mb)], check=True)
    return folder / "model.pt", folder / "model.safetensors"


def _run(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child process."""
    env = dict(os.environ, PYTHONPATH=str(SRC))
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(argv)}")
    return wall, usage.ru_maxrss / 1024  # KiB on Linux


def _median(argv: list[str], repeat: int) -> tuple[float, float]:
    runs = [_run(argv) for _ in range(repeat)]
    return statistics.median(w for w, _ in runs), statistics.median(r for _, r in runs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pt, st = _write(Path(tmp), args.mb)
        show = [sys.executable, "-m", "torchlean", "show"]
        rows = [
            ("show model.safetensors", _median([*show, str(st), "--width", "120"], args.repeat)),
            ("show model.pt (no torch)", _median([*show, str(pt), "--width", "120"], args.repeat)),
            (
                "show model.pt (torch path)",
                _median([sys.executable, "-c", _TORCH_PATH, str(pt)], args.repeat),
            ),
            (
                "torch.load + summarize .pt",
                _median([sys.executable, "-c", _FULL, str(pt)], args.repeat),
            ),
            ("floor: import torch", _median([sys.executable, "-c", "import torch"], args.repeat)),
        ]
        print(
            f"file: {pt.stat().st_size / 2**20:.0f} MiB (.pt),"
            f" {st.stat().st_size / 2**20:.0f} MiB (.safetensors)"
        )
        print(f"{'':30} {'wall (median)':>14} {'peak RSS (median)':>18}")
        for label, (wall, rss) in rows:
            print(f"{label:30} {wall:12.2f} s {rss:15.0f} MiB")
        (w_st, r_st), (w_pt, r_pt), (w_tp, r_tp) = (rows[i][1] for i in range(3))
        print(
            f"ratio .pt (no torch) / safetensors: wall {w_pt / w_st:.2f}x,"
            f" peak RSS {r_pt / r_st:.2f}x"
        )
        print(
            f"ratio torch path / no torch:        wall {w_tp / w_pt:.2f}x,"
            f" peak RSS {r_tp / r_pt:.2f}x"
        )


if __name__ == "__main__":
    main()
