"""The fast JSON reader gives exactly what the slow, element-by-element reader gives."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torchlean.errors import FormatError
from torchlean.io import _json_fast
from torchlean.io import torchlean_json as tj
from torchlean.io._json_fast import array_dims, count_bytes, fast_document, skeleton_dims


def slow(data: bytes) -> Any:
    doc, numbers_only = tj._parse(data, "f.json")
    return tj.parse_document(doc, "f.json", numbers_only)


def outcome(read: Any, data: bytes) -> Any:
    try:
        pairs, _ = read(data, "f.json") if read is tj.read_document else read(data)
    except FormatError as e:
        return ("error", str(e))
    return [(n, a.dtype.name, a.shape, a.tobytes()) for n, a in pairs]


numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**60), 2**60),
)
leaf = st.one_of(numbers, numbers, numbers, st.just(True), st.just("1.5"), st.none())


def nested(dims: tuple[int, ...], draw: Any) -> Any:
    if not dims:
        return draw(numbers)
    return [nested(dims[1:], draw) for _ in range(dims[0])]


@st.composite
def documents(draw: Any) -> bytes:
    params: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    for i in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(["w", "b", "layer.0.weight", "é", "a:b"])) + str(i)
        dims = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
        value = nested(dims, draw)
        damage = draw(
            st.sampled_from(["none", "none", "none", "ragged", "leaf", "deeper", "inner"])
        )
        if damage != "none" and isinstance(value, list) and value:
            if damage == "inner":
                inner = value
                while isinstance(inner[-1], list) and inner[-1]:
                    inner = inner[-1]
                if inner is not value:
                    inner.pop() if draw(st.booleans()) else inner.append(draw(numbers))
            elif damage == "ragged":
                value.append([] if isinstance(value[0], list) else [1.0])
            elif damage == "leaf":
                value[-1] = draw(leaf)
            else:
                value[0] = [value[0]]
        params[name] = value
        if draw(st.booleans()):
            shape = list(dims) if draw(st.booleans()) else [*dims, 1]
            meta[name] = {"shape": shape, "dtype": draw(
                st.sampled_from(["torch.float32", "float64", "torch.int64", "float16"])
            )}  # fmt: skip
    layout = draw(st.sampled_from(["per-tensor", "descriptor", "bare"]))
    if layout == "bare":
        doc: Any = params
    elif layout == "descriptor":
        doc = {"params": params, "meta": {"format": "TorchLean.X", "dtype": "float32"}}
    else:
        doc = {"params": params, "meta": meta}
    indent = draw(st.sampled_from([None, 2]))
    return json.dumps(doc, indent=indent, ensure_ascii=draw(st.booleans())).encode()


@settings(max_examples=300, deadline=None)
@given(data=documents())
def test_fast_reader_agrees_with_slow_reader(data: bytes) -> None:
    assert outcome(tj.read_document, data) == outcome(slow, data)


def test_fast_reader_takes_clean_documents() -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    data = json.dumps({"params": {"w": a.tolist(), "s": 2.5}, "meta": {}}, indent=2).encode()
    fast = fast_document(data)
    assert fast is not None
    assert fast["params"]["w"].dims == (3, 4)
    assert outcome(tj.read_document, data) == outcome(slow, data)


@pytest.mark.parametrize(
    "data",
    [
        b'{"params": {"w": [[1, 2], [3]]}}',
        b'{"params": {"w": [[1, 2], 3]}}',
        b'{"params": {"w": [1, [2]]}}',
        b'{"params": {"w": [[0.0, 0.0], []]}}',
        b'{"params": {"w": [1, 2], "w": [3]}}',
        b'{"params": {"w": [1, true]}}',
        b'{"params": {"w\\"x": [1, 2]}}',
        b'{"w": [1, 2], "meta": {"w": [1, 2]}}',
    ],
)
def test_fast_reader_declines_what_it_cannot_vouch_for(data: bytes) -> None:
    assert fast_document(data) is None


@pytest.mark.parametrize(
    ("skeleton", "count", "dims"),
    [
        (b"[]", 0, (0,)),
        (b"[]", 1, (1,)),
        (b"[,,]", 3, (3,)),
        (b"[[,,],[,,]]", 6, (2, 3)),
        (b"[[,,],[,]]", 5, None),
        (b"[[],[]]", 2, (2, 1)),
        (b"[[],[]]", 1, None),
        (b"[[],[]]", 0, None),
        (b"[,[,]]", 3, None),
        (b"[[,],[]]", 2, None),
        (b"[[],[,]]", 2, None),
        (b"[[,],[]]", 3, None),
        (b"[[,],[,]]]", 4, None),
        (b"[[[,],[,]],[[,],[,]],[[,],[,]]]", 12, (3, 2, 2)),
    ],
)
def test_skeleton_dims(skeleton: bytes, count: int, dims: tuple[int, ...] | None) -> None:
    assert skeleton_dims(skeleton, count) == dims


def _array_dims_of(text: bytes) -> tuple[int, ...] | None:
    import simdjson

    parsed = simdjson.Parser().parse(text)
    try:
        count = np.frombuffer(parsed.as_buffer(of_type="d"), np.float64).size
    except TypeError:
        return None  # not numbers only: the flattening refuses it before array_dims
    (opens,) = count_bytes(text, b"[")
    return array_dims(parsed, count, opens, len(text))


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_array_dims_never_vouches_for_what_the_skeleton_refuses(data: Any) -> None:
    dims = tuple(data.draw(st.lists(st.integers(0, 3), min_size=1, max_size=3)))
    value = nested(dims, lambda _: data.draw(st.sampled_from([1.5, -2, 0.25])))
    damage = data.draw(st.sampled_from(["none", "short", "long", "deeper", "list"]))
    inner: Any = value
    while isinstance(inner, list) and inner and isinstance(inner[-1], list):
        inner = inner[-1]
    if damage != "none" and isinstance(inner, list) and inner:
        if damage == "short":
            inner.pop()
        elif damage == "long":
            inner.append(1.0)
        elif damage == "deeper":
            inner[0] = [inner[0]]
        else:
            inner[-1] = [1.0, 2.0]
    text = json.dumps(value, indent=data.draw(st.sampled_from([None, 1]))).encode()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_json_fast, "BYTES_PER_LIST", 0)  # decide for every array
        got = _array_dims_of(text)
    if damage == "none" and 0 not in dims:
        assert got == dims
    if got is not None:  # whenever array_dims decides, the skeleton agrees
        import simdjson

        parsed = simdjson.Parser().parse(text)
        n = np.frombuffer(parsed.as_buffer(of_type="d"), np.float64).size
        skeleton = text.translate(None, b"0123456789.eE+- \t\n\r")
        assert skeleton_dims(skeleton, n) == got
        assert np.array(value).shape == got


@pytest.mark.parametrize(
    ("text", "dims"),
    [
        (b"[[1,2],[3,4]]", (2, 2)),
        (b"[[1,2],[3,[4]]]", None),  # a list among the numbers: one "[" too many
        (b"[[[1],2],[3,4]]", None),
        (b"[[1,2],[3,4,5]]", None),
        (b"[[1,2],[3]]", None),
        (b"[[1,2],3]", None),
        (b"[[],[]]", None),  # an empty list: the skeleton decides
        (b"[1.5,2,3]", (3,)),
    ],
)
def test_array_dims(
    text: bytes, dims: tuple[int, ...] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_json_fast, "BYTES_PER_LIST", 0)
    assert _array_dims_of(text) == dims
