"""Sharded safetensors checkpoints (``torchlean.io.sharded``): an index and its shards.

The Hugging Face files are written here with the layout ``save_pretrained(...,
max_shard_size=...)`` writes (transformers is not a test dependency): plain safetensors
shards with ``{"format": "pt"}`` metadata, and ``json.dumps(index, indent=2,
sort_keys=True)`` of ``{"metadata": {"total_size": N}, "weight_map": {...}}``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy

import torchlean as tl
from torchlean import io
from torchlean.errors import FormatError
from torchlean.io import sharded

# ---------------------------------------------------------------------- helpers


def _hf_state_dict() -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(0)
    return {
        "transformer.wte.weight": rng.standard_normal((50, 16)).astype(np.float32),
        "transformer.h.0.attn.c_attn.weight": rng.standard_normal((16, 48)).astype(np.float32),
        "transformer.h.0.attn.c_attn.bias": rng.standard_normal(48).astype(np.float32),
        "transformer.h.0.mlp.c_fc.weight": rng.standard_normal((16, 64)).astype(np.float16),
        "transformer.ln_f.weight": np.ones(16, np.float32),
        "lm_head.weight": rng.standard_normal((50, 16)).astype(np.float32),
    }


def write_hf(folder: Path, state: dict[str, np.ndarray[Any, Any]], limit: int) -> Path:
    """``save_pretrained(folder, max_shard_size=limit)``'s files for ``state``."""
    folder.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, np.ndarray[Any, Any]]] = []
    current: dict[str, np.ndarray[Any, Any]] = {}
    used = 0
    for key, a in state.items():
        if a.nbytes > limit:
            shards.append({key: a})
            continue
        if current and used + a.nbytes > limit:
            shards.append(current)
            current, used = {}, 0
        current[key] = a
        used += a.nbytes
    if current:
        shards.append(current)
    weight_map = {}
    n = len(shards)
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{n:05d}.safetensors"
        safetensors.numpy.save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    index = {
        "metadata": {"total_size": sum(a.nbytes for a in state.values())},
        "weight_map": weight_map,
    }
    path = folder / "model.safetensors.index.json"
    path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return path


def _file_order(folder: Path) -> list[str]:
    """The keys of the shards in ``folder``: shard by shard, each in its file's order."""
    from safetensors import safe_open

    keys: list[str] = []
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), framework="numpy") as f:
            keys += list(f.offset_keys())
    return keys


def _same_bits(a: Any, b: Any) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _context() -> tl.RuntimeContext[Any]:
    rng = np.random.default_rng(1)
    w1 = rng.standard_normal((8, 8)).astype(np.float32)
    return (
        tl.empty_context()
        .register_variable("fc1.weight", w1)
        .register_variable("fc1.bias", np.array([np.nan, -0.0, np.inf, 1e-45], np.float32))
        .register_variable("fc2.weight", rng.standard_normal((32, 8)).astype(np.float32))
        .register_variable("step", np.array(7, np.int64))
        .register_variable("fc1.weight", w1 * 2)  # shadows the first entry
        .register_gradient("fc1.weight", np.ones((8, 8), np.float32))
    )


def _assert_same_context(a: tl.RuntimeContext[Any], b: tl.RuntimeContext[Any]) -> None:
    assert a.next_id == b.next_id and a.dtype == b.dtype
    for ra, rb in ((a.var_registry, b.var_registry), (a.gradients, b.gradients)):
        assert [n for n, _ in ra] == [n for n, _ in rb]
        for (_, x), (_, y) in zip(ra, rb, strict=True):
            assert _same_bits(x.library.to_numpy(x.t), y.library.to_numpy(y.t))


# ---------------------------------------------------------------------- Hugging Face layout


def test_a_save_pretrained_index_and_its_folder_load_bit_for_bit(tmp_path: Path) -> None:
    state = _hf_state_dict()
    index = write_hf(tmp_path / "gpt", state, limit=4000)
    shards = sorted(p.name for p in (tmp_path / "gpt").glob("*.safetensors"))
    assert len(shards) == 4  # three small shards and the big embedding on its own
    for source in (index, tmp_path / "gpt", str(index)):
        assert io.format_of(source) == "sharded"
        ctx = io.load(source)
        got = dict(ctx.latest_variables())
        assert list(got) == _file_order(tmp_path / "gpt")  # shard order, then file order
        for key, a in state.items():
            assert _same_bits(got[key].t, a)
    ctx = io.load(index, backend="torch")
    assert _same_bits(ctx["lm_head.weight"].numpy(), state["lm_head.weight"])


def test_inspect_reads_the_headers_only_and_slices_from_the_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = _hf_state_dict()
    index = write_hf(tmp_path, state, limit=4000)

    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("inspect must not load a shard whole")

    monkeypatch.setattr(sharded, "load_safetensors", no_load)
    fs = io.inspect(index)
    assert fs.format == "sharded" and fs.layout is None and fs.next_id is None
    assert [e.name for e in reversed(fs.variables)] == _file_order(tmp_path)
    assert fs.nbytes == sum(a.nbytes for a in state.values())
    info = fs.info("transformer.h.0.mlp.c_fc.weight")
    assert info.shape == (16, 64) and info.dtype == "float16"
    want = state["transformer.h.0.mlp.c_fc.weight"]
    assert _same_bits(fs.head("transformer.h.0.mlp.c_fc.weight", 5), want.reshape(-1)[:5])
    assert fs.sliceable
    with fs.blocks(info) as read:
        assert _same_bits(read((slice(2, 4), slice(60, 64))), want[2:4, 60:64])


def test_the_files_on_disk_are_what_save_pretrained_writes(tmp_path: Path) -> None:
    ctx = tl.RuntimeContext.from_state_dict(_hf_state_dict())
    index = io.save_sharded(ctx, tmp_path / "out", max_shard_size=4000)
    assert index == tmp_path / "out" / "model.safetensors.index.json"
    names = sorted(os.listdir(tmp_path / "out"))
    assert names == [
        "model-00001-of-00004.safetensors",
        "model-00002-of-00004.safetensors",
        "model-00003-of-00004.safetensors",
        "model-00004-of-00004.safetensors",
        "model.safetensors.index.json",
    ]
    # the same assignment of tensors to shards as the reference writer above
    ref = write_hf(tmp_path / "ref", _hf_state_dict(), limit=4000)
    mine = json.loads(index.read_text())
    theirs = json.loads(ref.read_text())
    assert mine["weight_map"] == theirs["weight_map"]
    assert mine["metadata"]["total_size"] == theirs["metadata"]["total_size"]
    assert set(mine) == {"metadata", "weight_map"}
    assert index.read_text() == json.dumps(mine, indent=2, sort_keys=True) + "\n"
    for name in names[:-1]:
        plain = safetensors.numpy.load_file(str(tmp_path / "out" / name))
        for key, a in plain.items():
            assert _same_bits(a, _hf_state_dict()[key])
        with open(tmp_path / "out" / name, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            assert json.loads(f.read(n))["__metadata__"]["format"] == "pt"


def test_a_whole_context_round_trips_bit_for_bit(tmp_path: Path) -> None:
    ctx = _context()
    for size in (1, 300, "1KB", "5GB"):
        folder = tmp_path / f"s{size}"
        index = io.save_sharded(ctx, folder, max_shard_size=size)
        for backend in ("numpy", "torch"):
            _assert_same_context(ctx, io.load(index, backend=backend))
        fs = io.inspect(folder)
        assert fs.next_id == ctx.next_id and fs.layout == "torchlean"
        assert [(e.name, e.shadowed) for e in fs.variables] == [
            ("fc1.weight", False),
            ("step", False),
            ("fc2.weight", False),
            ("fc1.bias", False),
            ("fc1.weight", True),
        ]
    # max_shard_size=1: every tensor is a shard of its own
    assert len(list((tmp_path / "s1").glob("*.safetensors"))) == 6
    assert len(list((tmp_path / "s5GB").glob("*.safetensors"))) == 1


def test_a_pinned_and_bfloat16_context_round_trips(tmp_path: Path) -> None:
    import ml_dtypes

    a = np.arange(6, dtype=np.float32).astype(ml_dtypes.bfloat16).reshape(2, 3)
    ctx = tl.empty_context(dtype="bfloat16").register_variable("w", a)
    ctx = ctx.register_variable("b", a[0] * 3)
    path = tmp_path / "m.safetensors.index.json"
    io.save(ctx, path)  # io.save of an index path: the default shard size
    assert sorted(os.listdir(tmp_path)) == ["m-00001-of-00001.safetensors", path.name]
    back = io.load(path)
    _assert_same_context(ctx, back)
    assert back.dtype == "bfloat16"


def test_save_into_an_index_path_names_the_shards_after_it(tmp_path: Path) -> None:
    path = io.save_sharded(_context(), tmp_path / "weights.json", max_shard_size=300)
    assert path == tmp_path / "weights.json"
    assert sorted(os.listdir(tmp_path))[0].startswith("weights-00001-of-")


def test_a_failed_save_leaves_nothing(tmp_path: Path) -> None:
    ctx = _context()
    with pytest.raises(RuntimeError, match="stop"), sharded.staged(ctx, tmp_path / "out") as idx:
        assert idx.exists() and idx.parent != tmp_path / "out"
        raise RuntimeError("stop")
    assert os.listdir(tmp_path / "out") == []


@pytest.mark.parametrize(
    ("size", "want"),
    [
        (1, 1),
        ("10", 10),
        ("5GB", 5 * 10**9),
        ("500MiB", 500 << 20),
        ("2kb", 2000),
        ("1.5 GiB", 3 << 29),
    ],
)
def test_parse_size(size: int | str, want: int) -> None:
    assert sharded.parse_size(size) == want


# ---------------------------------------------------------------------- refusals


def _hf(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    index = write_hf(tmp_path, _hf_state_dict(), limit=4000)
    return index, json.loads(index.read_text())


def _rewrite(index: Path, data: dict[str, Any]) -> None:
    index.write_text(json.dumps(data))


def test_a_missing_shard_is_an_error(tmp_path: Path) -> None:
    index, _ = _hf(tmp_path)
    (tmp_path / "model-00002-of-00004.safetensors").unlink()
    (tmp_path / "model-00003-of-00004.safetensors").unlink()
    for read in (io.load, io.inspect):
        with pytest.raises(FormatError) as e:
            read(index)
        assert str(e.value) == (
            f"{index}: the index names shards model-00002-of-00004.safetensors,"
            " model-00003-of-00004.safetensors, which are not in its folder"
        )


def test_a_key_the_index_names_but_its_shard_lacks_is_an_error(tmp_path: Path) -> None:
    index, data = _hf(tmp_path)
    data["weight_map"]["ghost.weight"] = "model-00001-of-00004.safetensors"
    _rewrite(index, data)
    with pytest.raises(FormatError) as e:
        io.load(index)
    assert str(e.value) == (
        f"{index}: the index and its shards disagree: `ghost.weight` is not in"
        " model-00001-of-00004.safetensors, where the index puts it"
    )


def test_a_key_the_index_does_not_name_or_puts_elsewhere_is_an_error(tmp_path: Path) -> None:
    index, data = _hf(tmp_path)
    moved = "transformer.ln_f.weight"
    old = data["weight_map"][moved]
    data["weight_map"][moved] = "model-00001-of-00004.safetensors"
    del data["weight_map"]["transformer.h.0.attn.c_attn.bias"]
    _rewrite(index, data)
    with pytest.raises(FormatError) as e:
        io.inspect(index)
    assert old == "model-00003-of-00004.safetensors"
    assert str(e.value) == (
        f"{index}: the index and its shards disagree: model-00002-of-00004.safetensors"
        " holds `transformer.h.0.attn.c_attn.bias`, which the index does not name;"
        f" {old} holds `{moved}`, which the index puts in model-00001-of-00004.safetensors;"
        " `transformer.ln_f.weight` is not in model-00001-of-00004.safetensors, where the"
        " index puts it"
    )


@pytest.mark.parametrize("name", ["../x.safetensors", "/etc/passwd", "a/b.safetensors", ".."])
def test_a_shard_name_that_is_a_path_is_refused(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "model"
    index, data = _hf(folder)
    # a valid shard lies where ../x.safetensors points: it must not be read
    safetensors.numpy.save_file({"w": np.ones(2, np.float32)}, str(tmp_path / "x.safetensors"))
    data["weight_map"]["w"] = name
    _rewrite(index, data)
    for read in (io.load, io.inspect):
        with pytest.raises(FormatError) as e:
            read(index)
        assert str(e.value) == (
            f"{index}: refused shard name {name!r} (for `w`): a shard must be a file name in"
            " the index's folder, not a path"
        )


def test_keys_in_two_shards_of_a_folder_without_index_are_an_error(tmp_path: Path) -> None:
    safetensors.numpy.save_file({"w": np.ones(2, np.float32)}, str(tmp_path / "a.safetensors"))
    safetensors.numpy.save_file({"w": np.zeros(2, np.float32)}, str(tmp_path / "b.safetensors"))
    with pytest.raises(FormatError) as e:
        io.load(tmp_path)
    assert str(e.value) == (
        f"{tmp_path}: the index and its shards disagree: `w` is in both a.safetensors and"
        " b.safetensors"
    )


def test_a_folder_without_index_loads_its_shards_in_name_order(tmp_path: Path) -> None:
    safetensors.numpy.save_file({"b": np.ones(2, np.float32)}, str(tmp_path / "2.safetensors"))
    safetensors.numpy.save_file({"a": np.zeros(3, np.int8)}, str(tmp_path / "1.safetensors"))
    (tmp_path / "notes.txt").write_text("not a shard")
    ctx = io.load(tmp_path)
    assert [n for n, _ in ctx.latest_variables()] == ["a", "b"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "{",
            "not a valid safetensors index: not JSON (Expecting property name enclosed in"
            " double quotes: line 1 column 2 (char 1))",
        ),
        (
            '{"metadata": {}}',
            "not a valid safetensors index: expected a JSON object with a"
            ' "weight_map" object of tensor names to shard files',
        ),
        ('{"weight_map": {"w": 3}}', "the index maps `w` to 3; a shard is a file name (a str)"),
        ('{"weight_map": {}, "metadata": []}', 'the index\'s "metadata" must be a JSON object'),
    ],
)
def test_a_malformed_index_is_an_error(tmp_path: Path, text: str, message: str) -> None:
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(text)
    with pytest.raises(FormatError) as e:
        io.load(index)
    assert str(e.value) == f"{index}: {message}"


def test_a_folder_with_two_indexes_or_a_whole_context_is_refused(tmp_path: Path) -> None:
    io.save_sharded(_context(), tmp_path / "a.safetensors.index.json")
    io.save_sharded(_context(), tmp_path / "b.safetensors.index.json")
    with pytest.raises(FormatError) as e:
        io.load(tmp_path)
    assert str(e.value) == (
        f"{tmp_path}: the folder holds 2 indexes (a.safetensors.index.json,"
        " b.safetensors.index.json); name the one to read"
    )
    single = tmp_path / "single"
    single.mkdir()
    io.save(_context(), single / "ckpt.safetensors")
    with pytest.raises(FormatError) as e:
        io.load(single)
    assert str(e.value) == (
        f"{single}: ckpt.safetensors holds a whole torchlean context, not a shard; load it"
        " by its own name"
    )


def test_a_layout_that_names_a_key_no_shard_has_is_an_error(tmp_path: Path) -> None:
    index = io.save_sharded(_context(), tmp_path, max_shard_size=300)
    data = json.loads(index.read_text())
    data["metadata"]["torchlean"]["variables"][0][1] = "nowhere"
    _rewrite(index, data)
    with pytest.raises(FormatError) as e:
        io.load(index)
    assert str(e.value) == (
        f"{index}: variables[0] (`fc1.weight`) refers to tensor `nowhere`, which is not in the file"
    )


def test_bad_max_shard_sizes() -> None:
    with pytest.raises(ValueError, match="at least 1 byte, got '0GB'"):
        sharded.parse_size("0GB")
    with pytest.raises(ValueError, match="got '5 Gb of memory'"):
        sharded.parse_size("5 Gb of memory")
    with pytest.raises(TypeError, match=r"got 5\.0"):
        sharded.parse_size(5.0)  # type: ignore[arg-type]
