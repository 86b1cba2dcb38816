"""Sharded jax arrays in a context and orbax checkpoint folders: 8 host devices in one
process, and 2 processes x 4 devices under ``jax.distributed`` (the workers, in
:mod:`_jax_workers`, run in fresh processes so that ``XLA_FLAGS`` comes before jax)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from torchlean import io

WORKERS = os.path.join(os.path.dirname(__file__), "_jax_workers.py")
SRC = str(Path(__file__).resolve().parents[2] / "src")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, WORKERS, *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    return done.stdout


def test_sharded_arrays_print_view_and_check_on_eight_devices(tmp_path: Path) -> None:
    assert _run("views", str(tmp_path)).strip() == "views ok"


def test_orbax_folder_restores_under_another_sharding_and_on_one_device(tmp_path: Path) -> None:
    assert _run("orbax", str(tmp_path)).strip() == "orbax ok"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_processes_read_local_shards_and_save_one_folder(tmp_path: Path) -> None:
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, WORKERS, "multi", str(rank), port, str(tmp_path)],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=90)
            outs.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, (code, out, err) in enumerate(outs):
        assert code == 0, out + err[-4000:]
        assert f"multi {rank} ok" in out
    # 2 -> 1: the folder the two processes wrote, whole, in this process
    ctx = io.load(tmp_path / "multi.orbax")
    want = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    assert ctx.variable_entry("w").t.tobytes() == want.tobytes()
    assert [n for n, _ in ctx.var_registry] == ["b", "w"]
