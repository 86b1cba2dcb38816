"""The streaming TorchLean JSON reader (files over 4 MB) against the whole-document one:
the same message for the same malformed document (a big list it has not read is
described, never shown as its internal placeholder), and blank space of any length
between the tokens its scanner looks at."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torchlean.errors import FormatError
from torchlean.io import _json_stream
from torchlean.io import torchlean_json as tj

HINT = (
    "; TorchLean's importer would accept the file ({}); load(path, lean=True) reads it as Lean does"
)


def arrays(path: Path) -> dict[str, np.ndarray[Any, Any]]:
    return {n: np.asarray(at.t) for n, at in tj.load_json(path).latest_variables()}


def outcome(path: Path) -> Any:
    try:
        return [(n, a.dtype.name, a.shape, a.tobytes()) for n, a in arrays(path).items()]
    except FormatError as e:
        return str(e)


def streamed(path: Path, region_min: int = 40) -> Any:
    """What the streaming reader gives for ``path``, in tiny blocks (any list longer than
    ``region_min`` bytes after a key is a region)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(tj, "STREAM_ABOVE", 0)
    mp.setattr(_json_stream, "REGION_MIN", region_min)
    mp.setattr(_json_stream, "BLOCK", 64)
    mp.setattr(_json_stream, "CHUNK", 48)
    mp.setattr(_json_stream, "CHUNK_MAX", 96)
    try:
        return outcome(path)
    finally:
        mp.undo()


# ---------------------------------------------------------------- at full size (issue)


def test_an_object_holding_a_big_list_is_described_not_shown_as_a_placeholder(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"parms": {"w": np.zeros((1100, 1024)).tolist()}}))
    assert path.stat().st_size > tj.STREAM_ABOVE  # read a tensor at a time
    with pytest.raises(FormatError) as e:
        tj.load_json(path)
    assert str(e.value) == (
        f"{path}: tensor `parms` must be a number or nested lists of numbers, got"
        " {'w': <list of shape (1100, 1024)>}" + HINT.format("its lookups skip an object")
    )


def test_long_blanks_after_a_big_list_are_read(tmp_path: Path) -> None:
    w = (np.arange(1100 * 1024, dtype=np.float32).reshape(1100, 1024) % 97) / 8
    text = json.dumps({"params": {"w": w.tolist(), "b": [1.0, 2.0]}})
    cut = text.index("]]") + 2
    plain, blank = tmp_path / "plain.json", tmp_path / "blank.json"
    plain.write_text(text)
    blank.write_text(text[:cut] + " " * 70000 + text[cut:])
    assert plain.stat().st_size > tj.STREAM_ABOVE
    got = arrays(blank)
    assert got["w"].tobytes() == w.tobytes() and got["b"].tolist() == [1.0, 2.0]
    assert outcome(blank) == outcome(plain)


# ---------------------------------------------------------------- the same message

L = json.dumps([[float(i * 5 + j) / 4 for j in range(5)] for i in range(6)])  # 6 x 5
RAGGED = json.dumps([[1.0, 2.0], [3.0, 4.0], [5.0]] * 3)
BLANKS = " " * 200
LINES = "\n" * 90 + " \t" * 60


def doc(template: str, value: str = L) -> str:
    """``template`` with each ``@`` replaced by the JSON text ``value``."""
    return template.replace("@", value)


SAME = {
    "a string entry": doc('{"w": @, "b": "x"}'),
    "a bool entry": doc('{"w": @, "b": true}'),
    "a null after long blanks": '{"w":' + BLANKS + L + ', "b": null}',
    "a string after long blanks": doc('{"w": @') + LINES + ', "b": "x"}',
    "a missing comma": doc('{"w": @ "b": 1}'),
    "a missing comma across lines": doc('{"w":\n @\n\n "b": 1}'),
    "a missing comma after long blanks": doc('{"w": @,') + LINES + '"b" 1}',
    "a missing colon after long blanks": doc('{"w": @,') + BLANKS + '"b"' + LINES + "1}",
    "a trailing comma": doc('{"w": @, "b": 1,}'),
    "truncated": doc('{"w": @, "b": [1, 2'),
    "text after the document": doc('{"w": @} x'),
    "a ] too many after long blanks": doc('{"w": @') + LINES + "] }",
    "a duplicate key": doc('{"w": @, "w": @}'),
    "ragged nesting": doc('{"w": @}', RAGGED),
    "ragged nesting, deeper": '{"w": [[[1.0, 2.0], [3.0, 4.0]], [[5.0], [7.0, 8.0]]]}',
    "a list where the first element's nesting has a number, found at its end": (
        '{"w": [[[1.0, 2.0]], [1.0, 2.0], [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]]}'
    ),
    "a number where a list is, after many commas": '{"w": [[1.5], 1.5, 2.5, 3.5, 4.5, 5.5]}',
    "ragged nesting before a value out of range": (
        '{"w": [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1e300, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]}'
    ),
    "a string leaf": '{"w": [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], [1, 2, 3, "x", 5, 6, 7]]}',
    "UTF-8 before the error": doc('{"é": @, "ü": 1 2}'),
    "UTF-8 across lines": doc('{"é":\n @,\n "ü€": [1,\n 2] 3}'),
    "a meta dtype": doc('{"params": {"w": @}, "meta": {"w": {"dtype": "nope"}}}'),
    "a meta shape": doc('{"params": {"w": @}, "meta": {"w": {"shape": [2, 3]}}}'),
    "meta for no tensor": doc('{"params": {"w": @}, "meta": {"v": {"shape": [2, 3]}}}'),
    "a list at the top": doc('[{"w": @}]'),
    "a list of objects": doc('{"w": @, "x": [{"b": 1}, {"a": @}]}'),
    "an empty file of blanks": BLANKS + LINES,
}


@pytest.mark.parametrize("name", list(SAME))
def test_the_streamed_and_whole_readers_give_the_same_message(tmp_path: Path, name: str) -> None:
    path = tmp_path / "w.json"
    path.write_text(SAME[name])
    whole = outcome(path)
    assert isinstance(whole, str)  # an error
    assert streamed(path) == whole
    # regions only where the scanner sees more than 40 bytes; then everywhere it can
    assert streamed(path, region_min=8) == whole


DESCRIBED = {
    "an object holding a big list": (
        doc('{"parms": {"w": @}}'),
        "tensor `parms` must be a number or nested lists of numbers, got"
        " {'w': <list of shape (6, 5)>}" + HINT.format("its lookups skip an object"),
    ),
    "objects nested": (
        doc('{"a": {"b": {"c": @, "d": 1}}}'),
        "tensor `a` must be a number or nested lists of numbers, got"
        " {'b': {'c': <list of shape (6, 5)>, 'd': 1}}" + HINT.format("its lookups skip an object"),
    ),
    "an object in a tensor": (
        doc('{"w": @, "x": [1, {"a": @}]}'),
        "tensor `x` has a non-numeric leaf at [1]: {'a': <list of shape (6, 5)>}",
    ),
    "a list of objects": (
        doc('{"w": @, "x": [{"a": @}, {"b": 1}]}'),
        "tensor `x` has a non-numeric leaf at [0]: {'a': <list of shape (6, 5)>}",
    ),
    "a ragged list in an object": (
        doc('{"p": {"w": @}}', RAGGED),
        f"tensor `p` must be a number or nested lists of numbers, got {{'w': <list of"
        f" {len(RAGGED)} bytes, not a regular array of numbers>}}"
        + HINT.format("its lookups skip an object"),
    ),
    "an empty list in an object": (
        '{"p": {"w": [[], [], [], [], [], [], [], [], [], [], [], [], [], []]}}',
        "tensor `p` must be a number or nested lists of numbers, got"
        " {'w': <list of shape (14, 0)>}" + HINT.format("its lookups skip an object"),
    ),
}


@pytest.mark.parametrize("name", list(DESCRIBED))
def test_a_big_list_the_streamed_reader_has_not_read_is_described(
    tmp_path: Path, name: str
) -> None:
    # where the whole-document reader shows the value, the streamed one describes it
    text, message = DESCRIBED[name]
    path = tmp_path / "w.json"
    path.write_text(text)
    whole = outcome(path)
    assert isinstance(whole, str) and "tl" not in whole.split(":", 1)[1]
    assert streamed(path) == f"{path}: {message}"
    assert "\\x00" not in message and "\\u0000" not in message


# Where the two differ on purpose: a problem inside a big list is found by walking its
# brackets (bounded memory), before the rest of the document is parsed, and said in the
# walk's words.
DIFFERENT = {
    "a big list truncated": (
        doc('{"w": @, "b": [1, 2') + LINES,
        "tensor `b` is truncated (the file ends inside it)",
        "truncated JSON (unexpected end of data: line 91 column 121 (char 405))",
    ),
    "a syntax error in a big list": (
        '{"w": [' + ", ".join(["1.5"] * 30) + ",, 1.5]}",
        "tensor `w` is not a regular array of numbers (a malformed number, or text after it"
        " at byte 162)",
        "not valid JSON (unexpected character, expected a JSON value: line 1 column 157"
        " (char 156))",
    ),
    "a string in a big list, after a bad entry": (
        '{"a": "x", "w": [' + ", ".join(["1.5"] * 30) + ', "x"]}',
        'tensor `w` has a non-numeric leaf at [30]: "x"',
        'tensor `a` must be a number or nested lists of numbers, got "x"'
        + HINT.format("its lookups skip a string"),
    ),
}


@pytest.mark.parametrize("name", list(DIFFERENT))
def test_where_the_streamed_reader_says_another_thing(tmp_path: Path, name: str) -> None:
    text, streamed_message, whole_message = DIFFERENT[name]
    path = tmp_path / "w.json"
    path.write_text(text)
    assert outcome(path) == f"{path}: {whole_message}"
    assert streamed(path) == f"{path}: {streamed_message}"


# ---------------------------------------------------------------- blanks of any length

R = 64 << 10  # the scanner's REGION_MIN: a longer stretch between strings is looked at
W = np.arange(110 * 100, dtype=np.float32).reshape(110, 100) / 7  # ~100 KB of text: a region
TEXT = json.dumps({"params": {"w": W.tolist(), "v": (W[:3] * 2).tolist(), "b": [1.0, 2.0]}})
PLACES = {
    "at the start": 0,
    "between a key and its colon": TEXT.index('"w"') + 3,
    "after a colon": TEXT.index('"w"') + 4,
    "between two ] of a tensor's end": TEXT.index("]]") + 1,
    "after a tensor's ]": TEXT.index("]]") + 2,
    "between keys": TEXT.index('"v"'),
    "between rows": TEXT.index("], [") + 2,
    "after a small tensor": TEXT.index("]}") + 1,
    "before the last }": len(TEXT) - 1,
    "at the end": len(TEXT),
}


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("plain") / "w.json"
    path.write_text(TEXT)
    return outcome(path)


@pytest.mark.parametrize("length", [R - 1, R, R + 1, 2 * R - 1, 2 * R + 1, 3 * R + 7])
@pytest.mark.parametrize("place", list(PLACES))
def test_blank_runs_of_any_length_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plain: Any, place: str, length: int
) -> None:
    at = PLACES[place]
    path = tmp_path / "w.json"
    blanks = (" \n\t\r" * (length // 4 + 1))[:length]
    path.write_text(TEXT[:at] + blanks + TEXT[at:])
    monkeypatch.setattr(tj, "STREAM_ABOVE", 0)  # read a tensor at a time, default blocks
    assert outcome(path) == plain
    assert plain[0][0] == "w" and plain[0][3] == W.tobytes()


@pytest.mark.parametrize("length", [R - 1, R + 1, 2 * R + 1])
@pytest.mark.parametrize("shape", ["[110, 100]", "[110, 99]"])
def test_long_blanks_in_a_small_list_of_meta_are_read_a_tensor_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, length: int, shape: str
) -> None:
    # the list is a region for the scanner; read as the small list it is, not by
    # reading the whole file (which the reader does for a big list inside meta)
    text = TEXT[:-1] + ', "meta": {"w": {"shape": ' + shape.replace(",", "," + " " * length)
    path = tmp_path / "w.json"
    path.write_text(text + "}}}")
    whole = outcome(path)
    monkeypatch.setattr(tj, "STREAM_ABOVE", 0)
    monkeypatch.setattr(tj, "read_document", None)  # no reading the file whole
    assert outcome(path) == whole
    if shape == "[110, 99]":
        assert whole == f"{path}: tensor `w` has shape (110, 100) but meta says (110, 99)"
    else:
        assert whole[0][3] == W.tobytes()


@pytest.mark.parametrize("length", [R - 1, R + 1, 2 * R + 1])
def test_an_error_after_long_blanks_is_placed_as_the_whole_reader_places_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, length: int
) -> None:
    at = PLACES["between keys"]
    path = tmp_path / "w.json"
    path.write_text(TEXT[:at] + "\n" * length + TEXT[at:].replace('"v": [', '"v" [', 1))
    whole = outcome(path)
    assert whole.startswith(f"{path}: not valid JSON (unexpected character")
    monkeypatch.setattr(tj, "STREAM_ABOVE", 0)
    assert outcome(path) == whole


@settings(max_examples=200, deadline=None)
@given(
    spots=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 300)), min_size=1, max_size=6),
    region_min=st.sampled_from([8, 40, 100]),
    damage=st.sampled_from(["none", "comma", "colon", "brace"]),
)
def test_blanks_anywhere_read_as_the_whole_reader_reads_them(
    tmp_path_factory: pytest.TempPathFactory,
    spots: list[tuple[float, int]],
    region_min: int,
    damage: str,
) -> None:
    # blank runs of random lengths between any two tokens, in tiny blocks, in a valid
    # document or one with a syntax error outside its lists: the same arrays, or the
    # same message
    text = '{"params": {"w": @, "v": [[1.5, 2.5]], "b": 3}, "meta": {"w": {"shape": [6, 5]}}}'
    text = doc(text)
    if damage == "comma":
        text = text.replace(', "b"', ' "b"')
    elif damage == "colon":
        text = text.replace('"v":', '"v"')
    elif damage == "brace":
        text = text[:-1]
    between = [i for i in range(len(text) + 1) if i == len(text) or text[i] in "{}[],: "]
    for where, length in sorted(spots, reverse=True):
        at = between[int(where * (len(between) - 1))]
        text = text[:at] + ("\n \t" * length)[: length * 2] + text[at:]
    path = tmp_path_factory.mktemp("b") / "w.json"
    path.write_text(text)
    whole = outcome(path)
    assert streamed(path, region_min=region_min) == whole
    assert (damage == "none") == (not isinstance(whole, str))
