"""TorchLean JSON: torchlean.io.save/load against the reference path, side by side.

Reference save: ``tensor.tolist()`` + ``json.dump(indent=2)``; reference load:
``json.load`` + ``np.array(..., dtype=float32)`` per tensor. Both write and read the same
float32 numbers (checked bit for bit). Times are medians of alternating runs on a model
of ``MB`` megabytes (default 32); peak memory is measured in fresh subprocesses (VmHWM)
on models of ``RSS_MB`` megabytes (default ``256,1024``) against the target
``1.5 x tensor bytes + 200 MB``. Run:

    PYTHONPATH=src python bench/io_json.py
    MB=64 RSS_MB=256 REPEATS=3 PYTHONPATH=src python bench/io_json.py
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

REPEATS = int(os.environ.get("REPEATS", "3"))
SPEED = os.environ.get("SPEED", "1") != "0"
MB = int(os.environ.get("MB", "32"))
RSS_MB = [int(x) for x in os.environ.get("RSS_MB", "256,1024").split(",") if x]


def model(mb: int) -> dict[str, np.ndarray[Any, Any]]:
    """float32 tensors of about ``mb`` megabytes: 4 MB matrices and their biases."""
    rng = np.random.default_rng(0)
    out: dict[str, np.ndarray[Any, Any]] = {}
    for i in range(max(1, mb // 4)):
        out[f"layers.{i}.weight"] = rng.standard_normal((1024, 1024), dtype=np.float32)
        out[f"layers.{i}.bias"] = rng.standard_normal(1024, dtype=np.float32)
    return out


def paired(
    a: Callable[[], Any], b: Callable[[], Any], repeats: int = REPEATS
) -> tuple[float, float]:
    """Median times of ``a`` and ``b``, run alternately so both see the same noise."""
    ta, tb = [], []
    for _ in range(repeats):
        for f, times in ((a, ta), (b, tb)):
            start = time.perf_counter()
            f()
            times.append(time.perf_counter() - start)
    return statistics.median(ta), statistics.median(tb)


def reference_save(state: dict[str, np.ndarray[Any, Any]], path: str) -> None:
    doc = {"params": {n: t.tolist() for n, t in state.items()}, "meta": {"dtype": "float32"}}
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)


def reference_load(path: str) -> dict[str, np.ndarray[Any, Any]]:
    with open(path) as f:
        doc = json.load(f)
    return {n: np.array(v, dtype=np.float32) for n, v in doc["params"].items()}


def _reset_peak() -> None:
    """Start VmHWM afresh (Linux >= 4.0), so the peak is the operation's, not that of
    building the model (``from_state_dict`` copies the arrays it is given)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_kib() -> int:
    with open("/proc/self/status") as f:
        found = re.search(r"VmHWM:\s*(\d+)", f.read())
    return int(found.group(1)) if found else 0


def child(mode: str, mb: int, path: str) -> None:
    """One measured operation in this (fresh) process; prints peak KiB and seconds."""
    import torchlean.io as tio
    from torchlean import RuntimeContext

    start = time.perf_counter()
    if mode == "save":
        ctx = RuntimeContext.from_state_dict(model(mb))
        _reset_peak()
        start = time.perf_counter()
        tio.save(ctx, path)
    elif mode == "load":
        tio.load(path)
    elif mode == "ref-save":
        state = model(mb)
        _reset_peak()
        start = time.perf_counter()
        reference_save(state, path)
    else:
        reference_load(path)
    print(_peak_kib(), time.perf_counter() - start)


def measure(mode: str, mb: int, path: str) -> tuple[float, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(mb), path],
        capture_output=True,
        text=True,
        check=True,
    )
    kib, seconds = done.stdout.split()
    return int(kib) / 1024, float(seconds)


def main() -> int:
    from torchlean import RuntimeContext

    arrays = model(MB)
    ctx = RuntimeContext.from_state_dict(arrays)
    mb = sum(a.nbytes for a in arrays.values()) / 1e6
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        if SPEED:
            speed(arrays, ctx, mb, tmp)
        for size in RSS_MB:
            path = os.path.join(tmp, f"rss{size}.json")
            tensor_mb = sum(a.nbytes for a in model(size).values()) / 2**20
            target = 1.5 * tensor_mb + 200
            save_mb, save_s = measure("save", size, path)
            load_mb, load_s = measure("load", size, path)
            file_mb = os.path.getsize(path) / 2**20
            os.remove(path)
            print(
                f"peak RSS, {tensor_mb:.0f} MiB of tensors ({file_mb:.0f} MiB file):"
                f" save {save_mb:.0f} MiB ({save_s:.1f} s), load {load_mb:.0f} MiB"
                f" ({load_s:.1f} s); target <= {target:.0f} MiB"
            )
    return 0


def speed(arrays: dict[str, Any], ctx: Any, mb: float, tmp: str) -> None:
    """Save and load times against the reference path, and the reference's peak RSS."""
    import torchlean.io as tio

    ref_path = os.path.join(tmp, "ref.json")
    tl_path = os.path.join(tmp, "tl.json")
    ref_save, tl_save = paired(
        lambda: reference_save(arrays, ref_path), lambda: tio.save(ctx, tl_path)
    )
    ref_load, tl_load = paired(lambda: reference_load(ref_path), lambda: tio.load(tl_path))
    for path in (ref_path, tl_path):  # the same numbers, bit for bit
        got = tio.load(path).state_dict()
        ref = reference_load(path)
        for n, a in arrays.items():
            assert got[n].tobytes() == a.tobytes() == ref[n].tobytes(), (path, n)
    sizes = (os.path.getsize(ref_path) / 1e6, os.path.getsize(tl_path) / 1e6)
    print(
        f"TorchLean JSON, {len(arrays)} tensors, {mb:.1f} MB float32 (files: reference"
        f" {sizes[0]:.1f} MB, torchlean {sizes[1]:.1f} MB); median of {REPEATS},"
        " alternating runs"
    )
    print(
        f"save  reference {ref_save:8.3f} s   torchlean {tl_save:8.3f} s   "
        f"speed-up {ref_save / tl_save:6.1f}x   (target >= 20x)"
    )
    print(
        f"load  reference {ref_load:8.3f} s   torchlean {tl_load:8.3f} s   "
        f"speed-up {ref_load / tl_load:6.1f}x   (target >= 10x)"
    )
    ref_rss = {m: measure(m, MB, ref_path)[0] for m in ("ref-save", "ref-load")}
    print(
        f"peak RSS at {mb:.0f} MB: reference save {ref_rss['ref-save']:.0f} MB,"
        f" load {ref_rss['ref-load']:.0f} MB"
    )
    os.remove(ref_path)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        sys.exit(0)
    sys.exit(main())
