"""TorchLean JSON both ways: what torchlean writes Lean reads as the same tensors, and
what Lean's importer reads torchlean reads with Lean's result (or refuses, saying so)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import torchlean.io as tio
from torchlean import empty_context
from torchlean.errors import FormatError
from torchlean.io import _json_fast, _json_stream, lean_json
from torchlean.io import torchlean_json as tj

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import lean_reads_the_same


def write(tmp_path: Path, doc: Any, name: str = "w.json", indent: Any = None) -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc, indent=indent))
    return path


def arrays(path: Path, **options: Any) -> dict[str, np.ndarray[Any, Any]]:
    ctx = tj.load_json(path, **options)
    return {n: np.asarray(at.t) for n, at in ctx.latest_variables()}


# ---------------------------------------------------------------- reading what Lean reads


def test_top_level_fields_merge_over_params_as_in_lean(tmp_path: Path) -> None:
    path = write(tmp_path, {"params": {"fc.weight": [[1.0, 2.0]]}, "fc.bias": [0.5]})
    got = arrays(path)
    assert list(got) == ["fc.weight", "fc.bias"]
    assert got["fc.bias"].tolist() == [0.5]
    assert set(lean_json.lean_view(path).tensors) == set(got)


def test_a_top_level_field_replaces_the_params_entry(tmp_path: Path) -> None:
    path = write(tmp_path, {"params": {"w": [1.0, 2.0]}, "w": [3.0]})
    assert arrays(path)["w"].tolist() == [3.0]
    assert lean_json.lean_view(path).tensors["w"].values.tolist() == [3.0]


def test_params_not_an_object_is_the_bare_layout(tmp_path: Path) -> None:
    path = write(tmp_path, {"params": [1.0, 2.0], "w": [3.0]})
    got = arrays(path)
    assert {n: a.tolist() for n, a in got.items()} == {"params": [1.0, 2.0], "w": [3.0]}
    assert set(lean_json.lean_view(path).tensors) == {"params", "w"}


def test_meta_as_a_list_is_a_tensor_as_in_lean(tmp_path: Path) -> None:
    path = write(tmp_path, {"params": {"w": [1.0]}, "meta": [2.0, 3.0]})
    assert arrays(path)["meta"].tolist() == [2.0, 3.0]
    lean_reads_the_same(path)


def test_a_meta_tensor_in_params_hidden_by_the_meta_object_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, {"params": {"meta": [1.0]}, "meta": {"format": "x"}})
    with pytest.raises(FormatError, match="tensor `meta` in `params` is replaced in Lean"):
        tj.load_json(path)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('{"params": {"w": [1.0], "w": [2.0]}}', "it keeps the last value"),
        ('{"params": {"w": [1.0], "name": "mlp"}}', "its lookups skip a string"),
        ('{"params": {"w": [1.0], "cfg": {"a": 1}}}', "its lookups skip an object"),
        ('{"params": {"w": [1.0]}, "meta": {"v": {"shape": [1]}}}', "it ignores `meta`"),
    ],
)
def test_stricter_than_lean_says_so_and_lean_true_reads_as_lean(
    tmp_path: Path, text: str, why: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(FormatError) as info:
        tj.load_json(path)
    assert f"TorchLean's importer would accept the file ({why})" in str(info.value)
    assert "load(path, lean=True) reads it as Lean does" in str(info.value)
    got = arrays(path, lean=True)
    view = lean_json.lean_view(path)
    assert list(got) == list(view.tensors)
    for name, t in view.tensors.items():
        assert got[name].dtype == np.float64
        assert np.array_equal(got[name], t.values)
    assert got["w"].tolist() == ([2.0] if "last" in why else [1.0])


def test_lean_true_uses_lean_number_conversion(tmp_path: Path) -> None:
    # just above the halfway point between 1.0 and the next double: Python rounds up,
    # Lean (64-bit truncation, then rounding) gives 1.0
    path = write(tmp_path, '{"w": [1.00000000000000011102230246251565404236316680908203126]}')
    assert arrays(path, dtype="float64")["w"][0] == 1.0000000000000002
    assert arrays(path, lean=True)["w"][0] == 1.0


def test_lean_true_refuses_what_no_shape_reads(tmp_path: Path) -> None:
    path = write(tmp_path, '{"w": [[1.0, 2.0], [3.0]]}')
    with pytest.raises(FormatError, match=r"Lean reads no tensor from some entries: w\[1\]"):
        tj.load_json(path, lean=True)


def test_dtype_choice_for_files_without_a_dtype(tmp_path: Path) -> None:
    path = write(tmp_path, {"params": {"w": [0.1]}})
    assert arrays(path)["w"].dtype == np.float32  # the default
    assert arrays(path, dtype="float64")["w"][0] == 0.1
    assert arrays(path, lean=True, dtype="float32")["w"].dtype == np.float32
    typed = write(tmp_path, {"params": {"w": [0.1]}, "meta": {"w": {"dtype": "torch.float16"}}})
    assert arrays(typed, dtype="float64")["w"].dtype == np.float16  # meta wins
    with pytest.raises(ValueError, match="dtype `quaternion` is not a known dtype"):
        tj.load_json(path, dtype="quaternion")


# ---------------------------------------------------------------- writing what Lean reads


def test_float64_is_written_so_that_lean_reads_it_exactly(tmp_path: Path) -> None:
    # shortest decimals that Lean's reader misreads by one ulp (found by search)
    hard = np.array([1.370230162280481e-308, 5.051336825919332e215, 1.77849835373553e-308])
    shortest = [lean_json.parse(repr(x)).to_float() for x in hard.tolist()]  # type: ignore[union-attr]
    assert shortest != hard.tolist()
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 2**63, 3000, dtype=np.uint64).view(np.float64)
    values = np.concatenate([hard, noise[np.isfinite(noise)]])
    path = tmp_path / "f64.json"
    tio.save(empty_context().register_variable("w", values), path)
    assert np.array_equal(lean_json.lean_view(path).tensors["w"].values, values)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_every_narrow_float_reads_exactly_in_lean(dtype: str) -> None:
    import orjson

    from torchlean.runtime.dtypes import numpy_dtype

    with np.errstate(invalid="ignore"):  # signalling NaNs
        bits = np.arange(2**16, dtype=np.uint16).view(numpy_dtype(dtype)).astype(np.float64)
    bits = bits[np.isfinite(bits)]
    texts = orjson.dumps(bits, option=orjson.OPT_SERIALIZE_NUMPY).decode()[1:-1].split(",")
    got = [lean_json.parse(t).to_float() for t in texts]  # type: ignore[union-attr]
    assert np.array_equal(np.array(got), bits)


def test_random_float32_reads_exactly_in_lean(tmp_path: Path) -> None:
    # 20 million random bit patterns were checked once (docs/io.md); a sample here
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2**32, 20_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    a = a[np.isfinite(a)]
    path = tmp_path / "f32.json"
    tio.save(empty_context().register_variable("w", a), path)
    assert np.array_equal(lean_json.lean_view(path).tensors["w"].values, a.astype(np.float64))


def test_names_are_raw_utf8(tmp_path: Path) -> None:
    path = tmp_path / "w.json"
    ctx = empty_context().register_variable("😀.w", np.ones(2, np.float32))
    tio.save(ctx, path)
    assert "😀".encode() in path.read_bytes() and b"\\u" not in path.read_bytes()
    assert list(lean_json.lean_view(path).tensors) == ["😀.w"]


def test_a_lone_surrogate_name_never_reaches_a_file(tmp_path: Path) -> None:
    # the context refuses the name when it is registered, so no writer ever sees one
    with pytest.raises(ValueError, match="lone surrogate"):
        empty_context().register_variable("a\ud800", np.ones(2, np.float32))
    assert list(tmp_path.iterdir()) == []


def test_a_float32_variable_named_meta_is_written_without_meta(tmp_path: Path) -> None:
    path = tmp_path / "w.json"
    ctx = empty_context().register_variable("meta", np.arange(3, dtype=np.float32))
    tio.save(ctx.register_variable("w", np.ones((2, 2), np.float32)), path)
    assert json.loads(path.read_text()).keys() == {"params"}
    assert arrays(path)["meta"].tolist() == [0.0, 1.0, 2.0]
    assert lean_json.lean_view(path).tensors["meta"].values.tolist() == [0.0, 1.0, 2.0]


@pytest.mark.parametrize(
    "other", [np.ones(2, np.float64), np.ones(2, np.int64), np.zeros((0, 3), np.float32)]
)
def test_a_variable_named_meta_that_needs_meta_is_refused(tmp_path: Path, other: Any) -> None:
    ctx = empty_context().register_variable("meta", np.ones(2, np.float32))
    with pytest.raises(FormatError, match="Lean's importer merges every top-level field"):
        tio.save(ctx.register_variable("w", other), tmp_path / "w.json")
    assert list(tmp_path.iterdir()) == []


def test_a_variable_named_params_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "w.json"
    tio.save(empty_context().register_variable("params", np.ones(2, np.float32)), path)
    assert arrays(path)["params"].tolist() == [1.0, 1.0]


def test_uint64_at_and_above_2_63_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "u.json"
    u = np.array([2**64 - 1, 2**63, 0], np.uint64)
    tio.save(empty_context().register_variable("u", u), path)
    got = arrays(path)["u"]
    assert got.dtype == np.uint64 and got.tolist() == u.tolist()


# ---------------------------------------------------------------- streaming


@pytest.fixture
def small_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file read a tensor at a time, in tiny blocks."""
    monkeypatch.setattr(tj, "STREAM_ABOVE", 0)
    monkeypatch.setattr(_json_stream, "REGION_MIN", 40)
    monkeypatch.setattr(_json_stream, "BLOCK", 64)
    monkeypatch.setattr(_json_stream, "PIECE", 7)
    monkeypatch.setattr(_json_stream, "CHUNK", 48)
    monkeypatch.setattr(_json_stream, "CHUNK_MAX", 96)


def test_streaming_round_trip(tmp_path: Path, small_stream: None) -> None:
    rng = np.random.default_rng(0)
    ctx = empty_context()
    for name, a in {
        "emb": rng.standard_normal((13, 9)).astype(np.float32),
        "x": rng.standard_normal((2, 3, 11)),
        "i": np.arange(50, dtype=np.int16),
        "u": np.array([2**64 - 1] * 30, np.uint64),
        "z": np.zeros((0, 3), np.float32),
        "s": np.float32(2.5),
    }.items():
        ctx = ctx.register_variable(name, a)
    path = tmp_path / "s.json"
    tio.save(ctx, path)
    back = dict(tio.load(path).latest_variables())
    for name, at in ctx.latest_variables():
        assert back[name].dtype == at.dtype
        assert np.array_equal(np.asarray(back[name].t), np.asarray(at.t)), name


def outcome(path: Path) -> Any:
    try:
        return [(n, a.dtype.name, a.shape, a.tobytes()) for n, a in arrays(path).items()]
    except FormatError as e:
        return ("error", str(e))


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(
        st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=3, max_size=3),
        min_size=1,
        max_size=30,
    ),
    damage=st.sampled_from(["none", "short", "long", "leaf", "deep"]),
    indent=st.sampled_from([None, 1]),
)
def test_streaming_reader_agrees_with_whole_reader(
    tmp_path_factory: pytest.TempPathFactory, rows: list[list[float]], damage: str, indent: Any
) -> None:
    value: list[Any] = [list(r) for r in rows]
    at = len(value) // 2
    if damage == "short":
        value[at] = value[at][:2]
    elif damage == "long":
        value[at] = [*value[at], 1.0]
    elif damage == "leaf":
        value[at][1] = "x"
    elif damage == "deep":
        value[at][1] = [1.0]
    path = tmp_path_factory.mktemp("s") / "w.json"
    path.write_text(json.dumps({"params": {"a": [1.0], "w": value, "b": 2}}, indent=indent))
    whole = outcome(path)
    mp = pytest.MonkeyPatch()
    mp.setattr(tj, "STREAM_ABOVE", 0)
    mp.setattr(_json_stream, "REGION_MIN", 40)
    mp.setattr(_json_stream, "BLOCK", 64)
    mp.setattr(_json_stream, "CHUNK", 40)
    mp.setattr(_json_stream, "CHUNK_MAX", 80)
    try:
        streamed = outcome(path)
    finally:
        mp.undo()
    assert streamed == whole  # the same arrays, or the same message


def _no_chunks(*args: Any) -> None:
    return None


@st.composite
def tensor_texts(draw: Any) -> tuple[bytes, str]:
    """A float tensor of rank 1 to 3 as TorchLean JSON, sometimes damaged, and what the
    damage is."""
    dims = draw(st.lists(st.integers(1, 6), min_size=1, max_size=3))
    numbers = st.one_of(
        st.floats(allow_nan=False, allow_infinity=False, width=32),
        st.floats(allow_nan=False, allow_infinity=False),
        st.integers(-(2**60), 2**60),
    )

    def nested(d: list[int]) -> Any:
        return [nested(d[1:]) for _ in range(d[0])] if d else draw(numbers)

    value = nested(dims)
    damage = draw(st.sampled_from(["none", "none", "short", "long", "leaf", "deep", "huge", "row"]))
    inner = value
    for _ in range(draw(st.integers(0, len(dims) - 1))):
        inner = inner[draw(st.integers(0, len(inner) - 1))]
    spot = draw(st.integers(0, len(inner) - 1))
    if damage == "short" and len(inner) > 1:
        del inner[spot]
    elif damage == "long":
        inner.insert(spot, inner[spot])
    elif damage == "leaf":
        inner[spot] = draw(st.sampled_from(["x", None, True, {}]))
    elif damage == "deep":
        inner[spot] = [inner[spot]]
    elif damage == "huge":
        inner[spot] = 1e300  # out of range for float32
    elif damage == "row":
        value.append(value[0] if len(dims) == 1 else [value[0]])
    doc = {"params": {"a": [1.0], "w": value, "b": 2.0}}
    indent = draw(st.sampled_from([None, None, 1, 2]))
    text = json.dumps(doc, indent=indent)
    if draw(st.booleans()):
        text = text.replace(",", " , ")
    return text.encode(), damage


@settings(max_examples=300, deadline=None)
@given(case=tensor_texts(), chunk=st.sampled_from([1, 16, 64, 256]), dtype=st.sampled_from(
    ["float32", "float64", "float16"]
))  # fmt: skip
def test_chunked_reader_agrees_with_the_other_readers(
    tmp_path_factory: pytest.TempPathFactory, case: tuple[bytes, str], chunk: int, dtype: str
) -> None:
    # the chunk reader gives what the whole-document reader gives; where it declines,
    # the other streaming readers give the same result and the same error as without it
    text, _ = case
    path = tmp_path_factory.mktemp("c") / "w.json"
    path.write_bytes(text)

    def read() -> Any:
        try:
            got = arrays(path, dtype=dtype)
        except FormatError as e:
            return ("error", str(e))
        return [(n, a.dtype.name, a.shape, a.tobytes()) for n, a in got.items()]

    whole = read()
    mp = pytest.MonkeyPatch()
    mp.setattr(tj, "STREAM_ABOVE", 0)
    mp.setattr(_json_stream, "REGION_MIN", 24)  # above the blanks after a list
    mp.setattr(_json_stream, "BLOCK", 64)
    mp.setattr(_json_stream, "CHUNK", chunk)
    mp.setattr(_json_stream, "CHUNK_MAX", 4 * chunk)
    mp.setattr(_json_fast, "BYTES_PER_LIST", 0)  # small lists: walked all the same
    try:
        chunked = read()
        mp.setattr(_json_stream, "_read_elements", _no_chunks)
        without = read()
    finally:
        mp.undo()
    assert chunked == without
    assert chunked == whole  # the same arrays, or the same message


def _never(*args: Any) -> None:
    raise AssertionError("read another way than in chunks")


@pytest.mark.parametrize("indent", [None, 2])
@pytest.mark.parametrize(
    "shape", [(300,), (40, 7), (5, 6, 7), (2, 3, 2, 5), (1, 1), (1, 100), (250, 1)]
)
def test_clean_float_tensors_are_read_in_chunks_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shape: tuple[int, ...], indent: Any
) -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal(shape).astype(np.float32)
    path = write(tmp_path, {"params": {"w": w.tolist()}}, indent=indent)
    monkeypatch.setattr(tj, "STREAM_ABOVE", 0)
    monkeypatch.setattr(_json_stream, "REGION_MIN", 8)
    monkeypatch.setattr(_json_stream, "CHUNK", 200)
    monkeypatch.setattr(_json_stream, "CHUNK_MAX", 3200)
    monkeypatch.setattr(_json_fast, "BYTES_PER_LIST", 0)  # small lists: checked all the same
    monkeypatch.setattr(_json_stream, "_read_whole", _never)
    monkeypatch.setattr(_json_stream, "_block_numbers", _never)
    got = arrays(path)["w"]
    assert got.shape == w.shape and got.tobytes() == w.tobytes()
    assert not got.flags.writeable and type(got.base) is bytes  # adopted without a copy


def test_a_big_tensor_nested_deeper_than_numpy_holds_is_a_format_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # read a tensor at a time, it raised numpy's bare ValueError
    path = write(tmp_path, '{"w": ' + "[" * 99 + "1.5, 2.5" + "]" * 99 + "}")
    monkeypatch.setattr(tj, "STREAM_ABOVE", 0)
    monkeypatch.setattr(_json_stream, "REGION_MIN", 8)
    for chunk in (4, 1 << 20):
        monkeypatch.setattr(_json_stream, "CHUNK", chunk)
        with pytest.raises(FormatError, match=r"`w` is nested 99 lists deep; a tensor has at"):
            tio.load(path)


def test_an_element_longer_than_the_widest_chunk_is_read_another_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = np.arange(600, dtype=np.float32).reshape(2, 300) / 7
    path = write(tmp_path, {"params": {"w": w.tolist()}})
    monkeypatch.setattr(tj, "STREAM_ABOVE", 0)
    monkeypatch.setattr(_json_stream, "REGION_MIN", 8)
    monkeypatch.setattr(_json_stream, "CHUNK", 64)
    monkeypatch.setattr(_json_stream, "CHUNK_MAX", 256)
    assert arrays(path)["w"].tobytes() == w.tobytes()


def test_a_bad_leaf_in_a_big_tensor_is_found_in_bounded_memory(tmp_path: Path) -> None:
    # issue 10 case 8: 24 MB of zeros ending in a string leaf
    path = tmp_path / "x.json"
    n = 12 * 1024 * 1024
    with open(path, "wb") as f:
        f.write(b'{"params": {"w": [' + b"0," * n + b'"x"]}}')
    # VmHWM: this process's own peak (ru_maxrss would include the parent's, inherited)
    script = (
        "import re, sys, torchlean.io as tio\n"
        "try:\n    tio.load(sys.argv[1])\nexcept Exception as e:\n    print(e)\n"
        "print(re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read()).group(1))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True
    )
    message, peak_kib = done.stdout.strip().splitlines()
    assert message == f'{path}: tensor `w` has a non-numeric leaf at [{n}]: "x"'
    assert int(peak_kib) < 300 * 1024  # the old error path took ~1.9 GB


def test_io_load_passes_the_json_options(tmp_path: Path) -> None:
    path = write(tmp_path, '{"params": {"w": [0.1], "w": [0.2]}}')
    ctx = tio.load(path, lean=True, dtype="float64")
    assert np.asarray(ctx["w"]).tolist() == [0.2]
    st_path = tmp_path / "w.safetensors"
    tio.save(empty_context().register_variable("w", np.ones(1, np.float32)), st_path)
    with pytest.raises(ValueError, match="load: lean= do not apply to format 'safetensors'"):
        tio.load(st_path, lean=True)


@given(text=st.binary(max_size=600).map(lambda b: bytes(b"[],1 "[x % 5] for x in b)))
def test_count_opens_counts_every_bracket(text: bytes) -> None:
    for end in {0, len(text) // 2, len(text)}:
        assert _json_stream._count_opens(bytearray(text), end) == text.count(b"[", 0, end)
