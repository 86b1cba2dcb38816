"""Crashes and failed writes: a save is all or nothing.

- SIGKILL a writer at random points, over 50 times: the file on disk is always the old
  checkpoint or the complete new one, and temporary files of killed writers are removed
  by the next save (and never trip it).
- A write that fails (ENOSPC, EACCES, EIO, EFBIG; simulated at every step, and real with
  a file-size limit) leaves the old file intact, no temporary file, and raises an
  ``OSError`` of the matching class that names the target.
"""

from __future__ import annotations

import errno
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import torchlean.io as tio
from torchlean import empty_context
from torchlean.io import _atomic

WRITER = Path(__file__).with_name("_crash_writer.py")
SRC = Path(__file__).parents[2] / "src"
TENSORS, SIZE = 8, 1 << 17  # as in _crash_writer.py: 4 MiB per checkpoint


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }


def _value_of(path: Path) -> int:
    """The K of the checkpoint at ``path``, after checking that it is complete."""
    ctx = tio.load(path)
    names = [f"layer{i}.weight" for i in range(TENSORS)]
    assert ctx.variable_names() == names[::-1]
    k = int(ctx.variable("layer0.weight")[0])
    for i, name in enumerate(names):
        a = ctx.variable(name)
        assert a.shape == (SIZE,)
        assert np.all(a == k + i), f"{name} mixes two checkpoints"
    return k


def _gone(pid: int) -> None:
    for _ in range(2000):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.001)
    raise AssertionError(f"process {pid} did not die")


def _leftover_pids(folder: Path, target: str) -> set[int]:
    pids = set()
    for name in os.listdir(folder):
        if name == target:
            continue
        found = re.fullmatch(rf"\.{re.escape(target)}\.(\d+)-\w+\.tmp", name)
        assert found, f"unexpected file {name}"
        pids.add(int(found.group(1)))
    return pids


@pytest.mark.timeout(120)
def test_sigkill_during_save_keeps_old_or_new(tmp_path: Path) -> None:
    writer = subprocess.Popen(
        [sys.executable, str(WRITER)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    assert writer.stdin is not None and writer.stdout is not None
    rng = random.Random(0)

    def ask(line: str) -> str:
        assert writer.stdin is not None and writer.stdout is not None
        writer.stdin.write(line + "\n")
        writer.stdin.flush()
        return writer.stdout.readline().strip()

    kills = 0
    completed = 0
    try:
        for fmt, n in (("safetensors", 22), ("npz", 16), ("json", 16)):
            target = f"ckpt.{fmt}"
            path = tmp_path / target
            seconds = max(float(ask(f"time {path}")), float(ask(f"time {path}")))
            assert _value_of(path) == 0
            previous, pending = 0, set()
            for k in range(1, n + 1):
                pid = int(ask(f"save {path} {k} 0"))
                time.sleep(rng.uniform(0, 3 * seconds))
                os.kill(pid, signal.SIGKILL)
                _gone(pid)
                kills += 1
                now = _value_of(path)  # the old checkpoint or the new one, complete
                assert now in (previous, k), (fmt, k, now, previous)
                completed += now == k
                left = _leftover_pids(tmp_path, target)
                assert left <= pending | {pid}, "a temporary folder of no killed writer"
                previous, pending = now, left
            # one more writer that finishes: the leftovers of the killed ones are gone
            pid = int(ask(f"save {path} {n + 1} 1"))
            _gone(pid)
            assert _value_of(path) == n + 1
            assert os.listdir(tmp_path) == [target]
            path.unlink()
    finally:
        writer.kill()
        writer.communicate()  # waits, and closes both pipes
    assert kills >= 50
    assert completed > 0  # some kills landed after a completed save, the rest mid-save


def test_stale_temporaries_are_removed_only_when_their_writer_is_gone(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    ctx = empty_context().register_variable("w", np.ones(3, np.float32))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    old = time.time() - 3600
    stale = tmp_path / f".w.safetensors.{dead.pid}-abc.tmp"
    alive = tmp_path / f".w.safetensors.{os.getppid()}-abc.tmp"  # a running process
    fresh = tmp_path / f".w.safetensors.{dead.pid}-new.tmp"  # newer than this process
    other = tmp_path / f".other.safetensors.{dead.pid}-abc.tmp"  # another target's
    for p in (stale, alive, fresh, other):
        p.write_bytes(b"half a file")
    for p in (stale, alive, other):
        os.utime(p, (old, old))
    assert _atomic.stale_temporaries(path) == [stale]
    tio.save(ctx, path)  # does not trip on them, and removes the stale one
    assert sorted(os.listdir(tmp_path)) == sorted([path.name, alive.name, fresh.name, other.name])
    assert tio.load(path).variable("w").tolist() == [1, 1, 1]


# -- failed writes -------------------------------------------------------------------

ENOSPC = OSError(errno.ENOSPC, "No space left on device")
EACCES = PermissionError(errno.EACCES, "Permission denied")
EIO = OSError(errno.EIO, "Input/output error")


def _fail_with(error: OSError, *, half: bool = False) -> Any:
    def fail(*args: Any, **kwargs: Any) -> Any:
        if half:  # write part of the file first, as a disk that fills up does
            for a in args:
                if isinstance(a, (str, Path)) and str(a).endswith(".tmp"):
                    Path(a).write_bytes(b"\x00" * 100)
                elif hasattr(a, "write"):
                    a.write(b"\x00" * 100)
        raise error

    return fail


def _patch_point(point: str, fmt: str, error: OSError, monkeypatch: pytest.MonkeyPatch) -> None:
    if point == "create":
        monkeypatch.setattr(_atomic.tempfile, "mkdtemp", _fail_with(error))
    elif point == "write":
        if fmt == "json":
            monkeypatch.setattr(
                _atomic,
                "_write_all",
                lambda fd, data: (os.write(fd, b'{"par'), _fail_with(error)()),
            )
        elif fmt == "safetensors":
            import safetensors

            monkeypatch.setattr(safetensors, "serialize_file", _fail_with(error, half=True))
        else:
            monkeypatch.setattr(np.lib.format, "write_array", _fail_with(error, half=True))
    elif point == "fsync":
        monkeypatch.setattr(os, "fsync", _fail_with(error))
    elif point == "chmod":
        monkeypatch.setattr(os, "chmod", _fail_with(error))
    else:
        monkeypatch.setattr(os, "replace", _fail_with(error))


@pytest.mark.parametrize("point", ["create", "write", "fsync", "chmod", "rename"])
@pytest.mark.parametrize("fmt", ["safetensors", "json", "npz"])
@pytest.mark.parametrize(
    ("error", "kind", "text"),
    [
        (ENOSPC, OSError, "No space left on device"),
        (EACCES, PermissionError, "Permission denied"),
        (EIO, OSError, "Input/output error"),
    ],
)
def test_failed_write_keeps_the_old_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    point: str,
    fmt: str,
    error: OSError,
    kind: type[OSError],
    text: str,
) -> None:
    path = tmp_path / f"ctx.{fmt}"
    tio.save(empty_context().register_variable("w", np.ones(4, np.float32)), path)
    before = path.read_bytes()
    _patch_point(point, fmt, error, monkeypatch)
    with pytest.raises(kind) as info:
        tio.save(empty_context().register_variable("w", np.zeros(4, np.float32)), path)
    monkeypatch.undo()
    assert type(info.value) is kind
    assert info.value.errno == error.errno
    assert info.value.filename == str(path)
    assert str(info.value) == (
        f"[Errno {error.errno}] could not save ({text}); the previous file is unchanged: '{path}'"
    )
    assert info.value.__cause__ is not None
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [path.name]


def test_read_only_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "w.safetensors"
    tio.save(empty_context().register_variable("w", np.ones(4, np.float32)), path)
    before = path.read_bytes()
    folder.chmod(0o555)
    try:
        if os.geteuid() == 0:  # root writes anyway: make the folder refuse as it would
            monkeypatch.setattr(
                _atomic.tempfile,
                "mkdtemp",
                _fail_with(PermissionError(errno.EACCES, "Permission denied", str(folder))),
            )
        with pytest.raises(PermissionError) as info:
            tio.save(empty_context().register_variable("w", np.zeros(4, np.float32)), path)
    finally:
        folder.chmod(0o755)
    assert info.value.filename == str(path)
    assert "Permission denied" in str(info.value)
    assert path.read_bytes() == before
    assert os.listdir(folder) == [path.name]


def test_real_write_failure_in_every_format(tmp_path: Path) -> None:
    """A real failing write: a file-size limit (RLIMIT_FSIZE) makes the kernel refuse
    the write with EFBIG halfway through, in the library's and in the Rust and C++
    writers of safetensors and torch. Works without root and on any file system."""
    script = textwrap.dedent(
        f"""
        import os, resource, signal
        import numpy as np
        import torchlean.io as tio
        from torchlean import empty_context
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        small = empty_context().register_variable("w", np.ones(10, np.float32))
        big = empty_context().register_variable("w", np.ones(1_000_000, np.float32))
        for fmt in ["safetensors", "json", "npz", "pt"]:
            path = os.path.join({str(tmp_path)!r}, "ckpt." + fmt)
            tio.save(small, path)
            before = open(path, "rb").read()
            resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))
            try:
                tio.save(big, path)
            except OSError as e:
                print(fmt, type(e).__name__, e.errno, e.filename == path, str(e))
            resource.setrlimit(
                resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
            )
            assert open(path, "rb").read() == before
            assert not [n for n in os.listdir({str(tmp_path)!r}) if n.startswith(".")]
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=_env(), capture_output=True, text=True, check=True
    ).stdout.splitlines()
    message = "could not save (File too large); the previous file is unchanged"
    assert out == [
        f"{fmt} OSError 27 True [Errno 27] {message}: '{tmp_path / ('ckpt.' + fmt)}'"
        for fmt in ["safetensors", "json", "npz", "pt"]
    ]
    assert sorted(os.listdir(tmp_path)) == ["ckpt.json", "ckpt.npz", "ckpt.pt", "ckpt.safetensors"]
