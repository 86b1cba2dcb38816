"""Contexts of DTensors and checkpoint folders, on 2 gloo processes (CPU).

The workers (:mod:`_workers`) run on ``torch.multiprocessing`` with a port of their
own and a timeout; the one-process halves (2->1, the crafted ``.metadata``, the CLI on
a folder) run here.
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

import _workers

from torchlean import io
from torchlean.errors import FormatError, TorchLeanError


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folders saved by 2 ranks (``blocking``, ``async``) and by 1 process (``single``);
    the 2-rank worker loads all three as Shard(1) and checks them bitwise."""
    root = tmp_path_factory.mktemp("dist")
    io.save(_workers.plain_context(), root / "single", distributed=True)
    _workers.spawn(_workers.checkpoint_worker, str(root), "single")
    return root


def test_runtime_on_two_ranks() -> None:
    _workers.spawn(_workers.runtime_worker)


@pytest.mark.parametrize("name", ["blocking", "async", "single"])
def test_load_into_one_process_bitwise(folders: Path, name: str) -> None:
    got = io.load(folders / name, backend="torch")
    want = _workers.plain_context()
    pairs = [
        *zip(got.var_registry, want.var_registry, strict=True),
        *zip(got.gradients, want.gradients, strict=True),
    ]
    assert [n for n, _ in got.var_registry] == [n for n, _ in want.var_registry]
    for (name_a, a), (name_b, b) in pairs:
        assert name_a == name_b and a.dtype == b.dtype and a.dims == b.dims
        assert torch.equal(_workers.bits(a.t), _workers.bits(b.t)), name_a
    assert got.next_id == want.next_id
    numpy_ctx = io.load(folders / name)
    assert numpy_ctx.variable_entry("w") is not None
    assert numpy_ctx.variable_entry("w").backend == "numpy"


def test_folder_is_complete_or_absent(folders: Path) -> None:
    for name in ("blocking", "async", "single"):
        assert not (folders / f"{name}.partial").exists()
        assert (folders / name / "torchlean-checkpoint.json").is_file()
    layout = (folders / "blocking" / "torchlean-checkpoint.json").read_text()
    assert '"world_size": 2' in layout and '"S(0) on DeviceMesh' in layout


def test_crafted_metadata_pickle_is_refused(folders: Path, tmp_path: Path) -> None:
    import shutil

    target = tmp_path / "ck"
    shutil.copytree(folders / "blocking", target)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    (target / ".metadata").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(FormatError) as e:
        io.load(target)
    assert str(e.value) == (
        f"{target}: holds a `.metadata` file, a pickle that runs code when read; torchlean"
        " reads checkpoint folders only through their safetensors headers and never"
        " unpickles one. Remove it if you trust the folder, or re-save with io.save(ctx,"
        " DIR, distributed=True)"
    )
    assert not marker.exists()


def test_missing_shard_is_an_error(folders: Path, tmp_path: Path) -> None:
    import shutil

    target = tmp_path / "ck"
    shutil.copytree(folders / "blocking", target)
    for shard in sorted(target.glob("shard-*.safetensors")):
        os.unlink(shard)  # one rank's shards lost: never a silent partial load
        with pytest.raises(FormatError, match=r"is not in the file|do not match the layout"):
            io.load(target)


def test_template_without_a_name_is_an_error(folders: Path) -> None:
    from torchlean.runtime import RuntimeContext

    like = RuntimeContext.empty().with_variables([("w", torch.zeros(8, 6))])
    with pytest.raises(
        TorchLeanError,
        match=r"the template has no entry for variable `n`, variable `e`, variable `b`; give like=",
    ):
        io.load(folders / "single", like=like)


def test_dtensor_refuses_a_single_file_save() -> None:
    pytest.importorskip("torch.distributed.tensor")
    from torchlean.runtime.backends import backend_named

    assert backend_named("dtensor").name == "dtensor"


def test_cli_on_a_folder(folders: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from torchlean.cli import main

    ck = folders / "blocking"
    flat = tmp_path / "flat.safetensors"
    assert main(["show", str(ck)]) == 0
    assert "(8, 6)" in capsys.readouterr().out
    assert main(["convert", str(ck), str(flat)]) == 0
    assert main(["check", str(ck), "--expect", str(flat)]) == 0
    assert main(["diff", str(ck), str(flat)]) == 0
    assert "0 changed" in capsys.readouterr().out
    back = tmp_path / "back.dcp"
    assert main(["convert", str(flat), str(back)]) == 0
    got, want = io.load(back, backend="torch"), io.load(ck, backend="torch")
    for (n, a), (m, b) in zip(got.var_registry, want.var_registry, strict=True):
        assert n == m and torch.equal(_workers.bits(a.t), _workers.bits(b.t))


def test_inspect_of_a_folder_reads_the_headers_only(
    folders: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchlean.io import distributed

    loads: list[str] = []
    load = distributed.load_distributed

    def counted(path: object, **kwargs: object) -> object:
        loads.append(str(path))
        return load(path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(distributed, "load_distributed", counted)
    fs = io.inspect(folders / "blocking")
    want = _workers.plain_context()
    assert [(e.name, e.registry, e.shadowed, e.shape, e.dtype) for e in fs.entries] == [
        (n, "variable", i == 4, at.dims, at.dtype) for i, (n, at) in enumerate(want.var_registry)
    ] + [(n, "gradient", False, at.dims, at.dtype) for n, at in want.gradients]
    assert fs.next_id == want.next_id and loads == []
    w = fs.tensor("w")
    assert torch.equal(
        _workers.bits(torch.from_numpy(w)), _workers.bits(want.variable_entry("w").t)
    )
    fs.tensor("e")
    assert len(loads) == 1  # loaded once, when a value was first asked for
