"""The Python model of Lean's JSON reading (torchlean.io.lean_json), rule by rule.

Each test is a small hand-written document and what Lean's definitions give for it:
``Lean.Json.parse`` (grammar, strings, duplicate keys), ``JsonNumber.toFloat`` /
``Float.ofScientific`` (the float Lean reads), and TorchLean's ``Import.PyTorch``
(``unwrapParams``, ``parseTensor``, ``getTensor?``); then the three TorchLean fixtures
through the lookups of TorchLean's MLP, CNN and Transformer importers.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from torchlean.errors import FormatError
from torchlean.io.lean_json import (
    JsonNumber,
    LeanFinding,
    float_of_scientific,
    get_tensor,
    lean_import,
    lean_view,
    load_weights,
    parse,
    parse_tensor,
    unwrap_params,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "torchlean"


def num(text: str) -> float:
    value = parse(text)
    assert isinstance(value, JsonNumber)
    return value.to_float()


# ---------------------------------------------------------------- grammar


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0.0),
        ("-0", 0.0),
        ("7", 7.0),
        ("-12", -12.0),
        ("1.5", 1.5),
        ("-0.75", -0.75),
        ("1e2", 100.0),
        ("1E2", 100.0),
        ("1e+2", 100.0),
        ("1e-2", 0.01),
        ("1e002", 100.0),  # the exponent may have leading zeros
        ("2.50E-1", 0.25),
        ("0.000", 0.0),
        (" \t\r\n 3 \n", 3.0),
    ],
)
def test_numbers_lean_accepts(text: str, value: float) -> None:
    assert num(text) == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("NaN", "offset 0: unexpected input"),
        ("Infinity", "offset 0: unexpected input"),
        ("-Infinity", "offset 1: expected 1-9"),
        ("+1", "offset 0: unexpected input"),
        (".5", "offset 0: unexpected input"),
        ("1.", "offset 2: expected digit"),
        ("1.e5", "offset 2: expected digit"),
        ("01", "offset 1: expected end of input"),
        ("-01", "offset 2: expected end of input"),
        ("-", "offset 1: unexpected end of input"),
        ("1e", "offset 2: unexpected end of input"),
        ("1e+", "offset 3: unexpected end of input"),
        ("1ex", "offset 2: expected 0-9"),
        ("0x10", "offset 1: expected end of input"),
        ("1 2", "offset 2: expected end of input"),
        ("", "offset 0: unexpected end of input"),
        ("   ", "offset 3: unexpected end of input"),
        ("[1, 2,]", "offset 6: unexpected input"),
        ('{"a": 1,}', 'offset 8: expected "'),
        ("[1 2]", "offset 3: unexpected character in array"),
        ('{"a" 1}', "offset 5: expected :"),
        ('{"a": 1 "b": 2}', "offset 8: unexpected character in object"),
        ("{a: 1}", 'offset 1: expected "'),
        ("['a']", "offset 1: unexpected input"),
        ("tru", "offset 0: expected: true"),
        ("nul", "offset 0: expected: null"),
        ("[1] // comment", "offset 4: expected end of input"),
        ("\f1", "offset 0: unexpected input"),  # form feed is not whitespace for Lean
        ("\u00a01", "offset 0: unexpected input"),  # nor is a no-break space
        ('"a\tb"', "offset 2: unexpected character in string"),  # raw control character
        ('"a\\x"', "offset 3: illegal \\u escape"),
        ('"\\u12G4"', "offset 5: invalid hex character"),
        ('"\\u12', "offset 5: unexpected end of input"),
        ('"abc', "offset 4: unexpected end of input"),
        ("[[[", "offset 3: unexpected end of input"),
    ],
)
def test_documents_lean_refuses(text: str, message: str) -> None:
    with pytest.raises(FormatError) as info:
        parse(text)
    assert f"Lean.Json.parse fails: {message} (line" in str(info.value)
    view = lean_view(text.encode())
    assert not view.ok and view.tensors == {} and view.layout == "none"
    assert view.problems[0].place == "document"


def test_a_parse_error_gives_lean_s_byte_offset_line_and_column() -> None:
    with pytest.raises(
        FormatError, match=r"^Lean\.Json\.parse fails: offset 12: unexpected input "
    ):
        parse('{"é":\n [1, NaN]}'.encode())
    with pytest.raises(FormatError) as info:
        parse('{"é":\n [1, NaN]}')
    assert str(info.value) == (
        "Lean.Json.parse fails: offset 12: unexpected input (line 2, column 6)"
        " (NaN and Infinity are not JSON numbers for Lean)"
    )


def test_utf8_is_required_and_a_byte_order_mark_is_not_skipped() -> None:
    with pytest.raises(FormatError) as info:
        parse(b'{"a": [1.0]}\xff')
    assert str(info.value) == (
        "Lean cannot read this file: not valid UTF-8 at byte 12 (invalid start byte);"
        " IO.FS.readFile requires UTF-8"
    )
    with pytest.raises(FormatError, match="not valid UTF-8 at byte 1 "):
        parse(b'"\xed\xa0\x80"')  # an encoded surrogate is not UTF-8
    with pytest.raises(FormatError) as info:
        parse(b"\xef\xbb\xbf{}")
    assert str(info.value) == (
        "Lean.Json.parse fails: offset 0: unexpected input (line 1, column 1)"
        " (a UTF-8 byte-order mark: Lean does not skip it)"
    )
    with pytest.raises(FormatError, match="lone surrogate"):
        parse('"\ud800"')


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('"plain"', "plain"),
        ('"\\" \\\\ \\/ \\b \\f \\n \\r \\t"', '" \\ / \b \f \n \r \t'),
        ('"\\u00e9\\u00E9"', "éé"),
        ('"\\u0000"', "\0"),
        ('"é😀\x7f"', "é😀\x7f"),  # raw characters from U+0020 up, DEL included
        ('"\\ud83d\\ude00"', "\0\0"),  # Char.ofNat of a surrogate is '\0': no pairs
        ('"\\udfff"', "\0"),
    ],
)
def test_strings(text: str, value: str) -> None:
    assert parse(text.encode()) == value


def test_literals_arrays_and_objects() -> None:
    assert parse("[true, false, null, [], {}]") == [True, False, None, [], {}]
    assert parse('{"b": 1, "a": {"y": [], "x": 2}}') == {
        "a": {"x": JsonNumber(2, 0), "y": []},
        "b": JsonNumber(1, 0),
    }


def test_objects_are_in_lean_s_key_order_and_the_last_repeated_key_wins() -> None:
    doc = parse('{"b": 1, "a": 2, "é": 3, "Z": 4, "a": 5}')
    assert isinstance(doc, dict)
    assert list(doc) == ["Z", "a", "b", "é"]  # compare on String: by code point
    assert doc["a"] == JsonNumber(5, 0)


def test_deep_nesting_does_not_exhaust_python_s_stack() -> None:
    depth = sys.getrecursionlimit() * 20
    doc = parse("[" * depth + "1" + "]" * depth)
    for _ in range(depth):
        assert isinstance(doc, list) and len(doc) == 1
        doc = doc[0]
    assert doc == JsonNumber(1, 0)


# ---------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("text", "mantissa", "exponent"),
    [
        ("1.50", 150, 2),
        ("1.5e3", 1500, 0),  # shiftl multiplies the mantissa out
        ("1.500e1", 1500, 2),
        ("15e-1", 15, 1),  # shiftr adds to the exponent
        ("-2.5e-3", -25, 4),
        ("-0.0", 0, 1),
        ("12e0", 12, 0),
    ],
)
def test_json_number_is_lean_s_mantissa_and_exponent(
    text: str, mantissa: int, exponent: int
) -> None:
    assert parse(text) == JsonNumber(mantissa, exponent)


def test_minus_zero_reads_as_plus_zero_but_an_underflow_keeps_its_sign() -> None:
    for text in ("-0", "-0.0", "-0e5", "-0.000e-3"):
        assert math.copysign(1.0, num(text)) == 1.0, text
    assert math.copysign(1.0, num("-1e-400")) == -1.0  # (-1.0) * 0.0
    assert num("1e-400") == 0.0


def test_overflow_and_huge_exponents() -> None:
    assert num("1e400") == math.inf
    assert num("-1.5e309") == -math.inf
    assert num("1.7976931348623157e308") == sys.float_info.max
    assert num("1e999999999999") == math.inf  # answered at once
    assert num("1e-999999999999") == 0.0
    assert num("0e999999999999") == 0.0
    assert num("4.9406564584124654e-324") == 5e-324
    assert num("2e-324") == 0.0  # below half the smallest subnormal


def test_integers_are_exact_up_to_2_53_and_round_beyond() -> None:
    assert num("9007199254740992") == 2.0**53
    assert num("9007199254740993") == 2.0**53  # a tie: to even
    assert num("9007199254740995") == 2.0**53 + 4
    assert num("-9223372036854775808") == -(2.0**63)
    for n in [0, 1, 3, 2**31 - 1, 2**52 + 1, 2**53 - 1]:
        assert float_of_scientific(n, False, 0) == float(n)


def test_lean_s_decimal_reading_is_not_always_correctly_rounded() -> None:
    # Float.ofScientific truncates to 64 bits before rounding to 53: a decimal just
    # above the halfway point between 1.0 and its successor rounds to the even one.
    text = "1.00000000000000011102230246251565404236316680908203126"
    assert num(text) == 1.0
    assert float(text) == 1.0000000000000002
    # It happens to shortest reprs too (about 1 in 8000 random doubles, more among
    # subnormals); 17 significant digits always read back exactly.
    for x in (5.519986214306439e-06, 7.693241842407077e127, 2.112004277485811e-308):
        assert num(repr(x)) != x
        assert num("%.17g" % x) == x  # noqa: UP031


def test_float_of_scientific_agrees_with_python_on_easy_values() -> None:
    for m, e in [(1, 1), (5, 1), (25, 2), (123456789, 4), (1, 0), (3, 300)]:
        assert float_of_scientific(m, True, e) == float(f"{m}e-{e}")
        assert float_of_scientific(m, False, e) == float(f"{m}e{e}")
    with pytest.raises(ValueError, match="natural numbers, got -1 and 0"):
        float_of_scientific(-1, True, 0)


def test_every_float32_repr_reads_back_exactly() -> None:
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32)
    values = bits.view(np.float32)
    for x in values[np.isfinite(values)].tolist():
        assert num(repr(x).replace("e+", "e")) == x


# ---------------------------------------------------------------- the importer


def test_parse_tensor_reads_exact_shapes() -> None:
    j = parse("[[1, 2, 3], [4, 5, 6]]")
    got = parse_tensor((2, 3), j)
    assert got is not None and got.dtype == np.float64
    np.testing.assert_array_equal(got, [[1, 2, 3], [4, 5, 6]])
    for wrong in [(3, 2), (2,), (2, 3, 1), (6,), ()]:
        assert parse_tensor(wrong, j) is None, wrong
    scalar = parse_tensor((), parse("2.5"))
    assert scalar is not None and scalar.shape == () and scalar == 2.5
    assert parse_tensor((1,), parse("2.5")) is None
    assert parse_tensor((), parse("[2.5]")) is None


def test_an_empty_array_reads_as_every_shape_with_a_leading_zero() -> None:
    empty = parse("[]")
    for shape in [(0,), (0, 3), (0, 0, 7)]:
        got = parse_tensor(shape, empty)
        assert got is not None and got.shape == shape
    rows = parse("[[], []]")
    assert parse_tensor((2, 0), rows) is not None
    assert parse_tensor((2, 0, 5), rows) is not None
    assert parse_tensor((2,), rows) is None


def test_ragged_and_non_numbers_read_as_no_tensor() -> None:
    assert parse_tensor((2, 2), parse("[[1, 2], [3]]")) is None
    assert parse_tensor((2,), parse("[1, true]")) is None
    assert parse_tensor((2,), parse('[1, "2"]')) is None
    assert parse_tensor((2,), parse("[1, null]")) is None


def test_unwrap_params_merges_every_other_top_level_field_over_params() -> None:
    doc = parse('{"params": {"a": [1], "b": [2]}, "b": [3], "c": 4, "meta": {"x": 1}}')
    assert isinstance(doc, dict)
    state = unwrap_params(doc)
    assert list(state) == ["a", "b", "c", "meta"]
    assert state["b"] == [JsonNumber(3, 0)]  # the top-level field wins
    assert load_weights(doc) == state


def test_params_that_is_not_an_object_leaves_the_whole_object_as_the_state_dict() -> None:
    for text in ['{"params": [1.0, 2.0], "w": [3.0]}', '{"params": "x", "w": [3.0]}']:
        doc = parse(text)
        assert isinstance(doc, dict)
        assert unwrap_params(doc) is doc
    assert load_weights(parse("[1]")) is None
    assert load_weights(parse("3")) is None


def test_get_tensor() -> None:
    state = load_weights(parse('{"params": {"w": [[1, 2]]}}'))
    assert state is not None
    w = get_tensor(state, "w", (1, 2))
    assert w is not None and w.tolist() == [[1.0, 2.0]]
    assert get_tensor(state, "w", (2, 1)) is None
    assert get_tensor(state, "missing", (1, 2)) is None


# ---------------------------------------------------------------- the view


def shapes(text: str) -> dict[str, tuple[int, ...]]:
    return {n: t.shape for n, t in lean_view(text.encode()).tensors.items()}


def test_the_issue_s_files_lean_reads() -> None:
    assert shapes('{"params": {"fc.weight": [[1.0, 2.0]]}, "fc.bias": [0.5]}') == {
        "fc.bias": (1,),
        "fc.weight": (1, 2),
    }
    view = lean_view(b'{"params": [1.0, 2.0], "w": [3.0]}')
    assert view.layout == "bare"
    assert {n: t.shape for n, t in view.tensors.items()} == {"params": (2,), "w": (1,)}
    assert view.notes == (
        LeanFinding(
            "`params` is an array, not an object: the whole object is the state dict", "params"
        ),
    )


def test_a_top_level_meta_replaces_a_tensor_named_meta() -> None:
    view = lean_view(b'{"params": {"meta": [1.0, 2.0], "w": [1.0]}, "meta": {"dtype": "f"}}')
    assert list(view.tensors) == ["w"]
    assert view.skipped == {"meta": "object"}
    assert view.notes == (
        LeanFinding("the top-level field replaces params' `meta` (array) with an object", "meta"),
    )
    assert view.ok


def test_the_view_lists_tensors_in_lean_s_order_with_float64_values() -> None:
    view = lean_view(b'{"b": [[1, 2], [3, 4]], "a": 0.5, "c": [], "d": [[], []], "s": "x"}')
    assert view.layout == "bare"
    assert [(n, t.shape) for n, t in view.tensors.items()] == [
        ("a", ()),
        ("b", (2, 2)),
        ("c", (0,)),
        ("d", (2, 0)),
    ]
    assert view.skipped == {"s": "string"}
    arrays = view.arrays()
    assert arrays["b"].dtype == np.float64 and arrays["b"].tolist() == [[1, 2], [3, 4]]
    assert view.ok and view.problems == () and view.notes == ()


def test_problems_name_the_tensor_and_the_index() -> None:
    view = lean_view(
        b'{"params": {"r": [[1, 2], [3]], "b": [[1, 2], [3, true]], "s": ["a", "b"],'
        b' "n": [[1], 2], "m": [1, [2]], "ok": [1]}, "x": null, "f": false}'
    )
    assert list(view.tensors) == ["ok"]
    assert view.skipped == {"f": "bool", "x": "null"}
    assert [(p.place, p.message) for p in view.problems] == [
        ("b[1][1]", "no tensor shape reads it: expected a number, got a bool"),
        ("m[1]", "no tensor shape reads it: expected a number, got an array"),
        ("n[1]", "no tensor shape reads it: expected an array of length 1, got a number"),
        (
            "r[1]",
            "no tensor shape reads it: ragged: expected an array of length 2 (as at the"
            " first entry), got length 1",
        ),
        ("s[0]", "no tensor shape reads it: expected a number, got a string"),
    ]
    assert not view.ok


def test_the_document_must_be_an_object() -> None:
    view = lean_view(b"[1, 2]")
    assert view.layout == "none" and view.tensors == {}
    assert view.problems == (
        LeanFinding("loadWeights? fails: the document is an array, not an object"),
    )
    view = lean_import(parse("3"))
    assert view.problems[0].message == "loadWeights? fails: the document is a number, not an object"


def test_notes_for_what_lean_reads_differently() -> None:
    view = lean_view(
        b'{"params": {"w": [1.0, -0.0], "w": [2.0, 3.0], "big": [9007199254740993],'
        b' "inf": [1e400], "tiny": [1e-400], "z": -0}, "w": [5.0], "w": [6.0]}'
    )
    assert [(n.place, n.message) for n in view.notes] == [
        ("w", "key `w` repeats in `params`; Lean keeps the last value"),
        ("w", "key `w` repeats in the top level; Lean keeps the last value"),
        ("w", "the top-level field replaces params' `w` (array) with an array"),
        ("big[0]", "the integer 9007199254740993 reads as 9007199254740992.0"),
        ("inf[0]", "a finite number reads as inf"),
        ("tiny[0]", "a nonzero number reads as 0.0 (underflow)"),
        ("z", "-0 reads as +0.0 (Lean's mantissa is an integer)"),
    ]
    assert view.arrays()["w"].tolist() == [6.0]
    assert view.ok


def test_format_gives_readable_lines(tmp_path: Path) -> None:
    path = tmp_path / "w.json"
    path.write_bytes(b'{"params": {"a": [[1, 2]], "b": [1, [2]]}, "meta": {}, "a": [1]}')
    assert lean_view(path).format() == [
        f"{path}: what TorchLean's importer (Import.PyTorch) sees",
        'layout: {"params": {...}}, other top-level fields merged over it',
        "1 tensor:",
        "  a  (1,)",
        "not tensors (Lean's lookups skip them): meta (object)",
        "1 note:",
        "  a: the top-level field replaces params' `a` (array) with an array",
        "1 problem:",
        "  b[1]: no tensor shape reads it: expected a number, got an array",
    ]
    assert lean_view(b"{}").format() == [
        "<bytes>: what TorchLean's importer (Import.PyTorch) sees",
        "layout: the whole object is the state dict",
        "0 tensors:",
        "no problems: Lean imports every tensor listed",
    ]


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match=r"^parse: data must be bytes or str, got int$"):
        parse(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^lean_view: source must be a str or os\.PathLike"):
        lean_view(5)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        lean_view(FIXTURES / "missing.json")


# ---------------------------------------------------------------- the TorchLean fixtures


def lean_mlp(state: dict, in_dim: int, hid: int, out: int) -> list[np.ndarray] | None:
    """``loadMlpStateDict``: ``fc1.*``/``fc2.*`` keys, else ``layers.0.*``/``layers.2.*``."""

    def try_keys(w1: str, b1: str, w2: str, b2: str) -> list[np.ndarray] | None:
        got = [
            get_tensor(state, w1, (hid, in_dim)),
            get_tensor(state, b1, (hid,)),
            get_tensor(state, w2, (out, hid)),
            get_tensor(state, b2, (out,)),
        ]
        return None if any(t is None for t in got) else got  # type: ignore[return-value]

    return try_keys("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias") or try_keys(
        "layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias"
    )


def lean_cnn(state: dict, in_c: int, out_c: int, k: int, flat: int) -> list[np.ndarray] | None:
    """``loadCnnStateDict``: ``conv1.*``, ``conv2.*``, ``fc.*``."""
    got = [
        get_tensor(state, "conv1.weight", (out_c, in_c, k, k)),
        get_tensor(state, "conv1.bias", (out_c,)),
        get_tensor(state, "conv2.weight", (out_c, out_c, k, k)),
        get_tensor(state, "conv2.bias", (out_c,)),
        get_tensor(state, "fc.weight", (out_c, flat)),
        get_tensor(state, "fc.bias", (out_c,)),
    ]
    return None if any(t is None for t in got) else got  # type: ignore[return-value]


def lean_transformer(state: dict, embed: int, hidden: int) -> list[np.ndarray] | None:
    """``loadTransformerEncoderStateDict``: each weight under its TorchLean name or its
    nested PyTorch name (``getTensorAny?``)."""
    wanted = [
        ((embed, embed), ["Wq", "layers.0.mha.q_proj.weight"]),
        ((embed, embed), ["Wk", "layers.0.mha.k_proj.weight"]),
        ((embed, embed), ["Wv", "layers.0.mha.v_proj.weight"]),
        ((embed, embed), ["Wo", "layers.0.mha.out_proj.weight"]),
        ((embed, hidden), ["W1", "layers.0.ffn.fc1.weight"]),
        ((hidden, embed), ["W2", "layers.0.ffn.fc2.weight"]),
        ((hidden,), ["b1", "layers.0.ffn.fc1.bias"]),
        ((embed,), ["b2", "layers.0.ffn.fc2.bias"]),
        ((embed,), ["norm1_gamma", "layers.0.norm1.weight"]),
        ((embed,), ["norm1_beta", "layers.0.norm1.bias"]),
        ((embed,), ["norm2_gamma", "layers.0.norm2.weight"]),
        ((embed,), ["norm2_beta", "layers.0.norm2.bias"]),
    ]
    out = []
    for shape, keys in wanted:
        found = next((t for k in keys if (t := get_tensor(state, k, shape)) is not None), None)
        if found is None:
            return None
        out.append(found)
    return out


@pytest.mark.parametrize(
    ("fixture", "load", "wrong"),
    [
        ("mlp.json", lambda s: lean_mlp(s, 2, 3, 1), lambda s: lean_mlp(s, 3, 2, 1)),
        ("cnn.json", lambda s: lean_cnn(s, 1, 2, 3, 8), lambda s: lean_cnn(s, 1, 2, 3, 9)),
        (
            "transformer_encoder.json",
            lambda s: lean_transformer(s, 2, 2),
            lambda s: lean_transformer(s, 2, 3),
        ),
    ],
)
def test_the_fixtures_import_as_torchlean_s_model_importers_read_them(
    fixture: str, load: object, wrong: object
) -> None:
    data = (FIXTURES / fixture).read_bytes()
    state = load_weights(parse(data))
    assert state is not None
    got = load(state)  # type: ignore[operator]
    assert got is not None
    assert wrong(state) is None  # type: ignore[operator]
    view = lean_view(FIXTURES / fixture)
    assert view.ok and view.notes == () and view.layout == "params"
    assert view.skipped == {"meta": "object"}
    params = json.loads(data)["params"]
    assert list(view.tensors) == sorted(params)
    for name, values in params.items():
        expected = np.array(values, dtype=np.float64)  # Python's correctly rounded reading
        assert view.tensors[name].shape == expected.shape
        np.testing.assert_array_equal(view.tensors[name].values, expected)
    flat = [t.ravel() for t in got]
    assert sum(t.size for t in flat) == sum(t.values.size for t in view.tensors.values())
