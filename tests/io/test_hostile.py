"""Hostile files: every one gives a FormatError naming the file and the fault.

The files in ``tests/io/hostile/`` are made by ``make_hostile.py`` beside them (and
committed). Each has one exact message (or, where the text comes from a library and
runs long, a prefix ending in ``...``) for ``load``, ``inspect`` and ``torchlean show``.
Memory and time are bounded: a subprocess under ``RLIMIT_AS`` of 2 GiB and a timeout
reads every file; the pickles that would create a sentinel file if they ever ran are
read there with a fresh working directory, and a control run shows that the payloads
are live.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import torchlean.io as tio
from torchlean.cli import main
from torchlean.errors import FormatError, TorchLeanError

HOSTILE = Path(__file__).parent / "hostile"
SENTINEL = "hostile_sentinel"  # what the evil payloads would create (make_hostile.SENTINEL)
_SAFETENSORS = "not a valid safetensors file: Error while deserializing header: "
_WEIGHTS_ONLY = (
    "refused to load: the pickle needs more than tensors and plain containers, and is never"
    " run (weights_only=True): WeightsUnpickler error: Unsupported global: GLOBAL io.open"
    " was not an allowed global by default."
)

# file -> the message after "<path>: " (a prefix where it ends in "...")
LEAN_KEEPS_LAST = (
    "; TorchLean's importer would accept the file (it keeps the last value);"
    " load(path, lean=True) reads it as Lean does"
)
HOSTILE_CASES: dict[str, str] = {
    # safetensors: header lengths, offsets, dtypes, JSON of the header
    "st_claims_more.safetensors": _SAFETENSORS + "incomplete metadata, file not fully covered",
    "st_overlap.safetensors": _SAFETENSORS + "invalid offset for tensor `b`",
    "st_out_of_range.safetensors": _SAFETENSORS + "invalid offset for tensor `w`",
    "st_offsets_disagree.safetensors": _SAFETENSORS
    + "invalid shape, data type, or offset for tensor",
    "st_len_2_63.safetensors": "not a valid safetensors file: the header's length says"
    " 9223372036854775808 bytes but only 78 follow",
    "st_len_max.safetensors": "not a valid safetensors file: the header's length says"
    " 18446744073709551615 bytes but only 78 follow",
    "st_len_past_end.safetensors": "not a valid safetensors file: the header's length says"
    " 100000 bytes but only 78 follow",
    "st_len_zero.safetensors": _SAFETENSORS
    + "invalid JSON in header: EOF while parsing a value at line 1 column 0",
    "st_unknown_dtype.safetensors": _SAFETENSORS
    + "invalid JSON in header: unknown variant `F128`, expected one of ...",
    "st_not_json.safetensors": _SAFETENSORS
    + "invalid UTF-8 in header: invalid utf-8 sequence of 1 bytes from index 19",
    "st_header_list.safetensors": _SAFETENSORS + "invalid JSON in header: invalid type:"
    " sequence, expected struct HashMetadata at line 1 column 0",
    "st_deep_header.safetensors": _SAFETENSORS
    + "invalid JSON in header: recursion limit exceeded at line 1 column 133",
    "st_big_number.safetensors": _SAFETENSORS
    + "invalid JSON in header: number out of range at line 1 column 38",
    "st_nan_token.safetensors": _SAFETENSORS
    + "invalid JSON in header: expected value at line 1 column 34",
    "st_shape_string.safetensors": _SAFETENSORS + "invalid JSON in header: invalid type:"
    ' string "4", expected usize at line 1 column 64',
    "st_shape_negative.safetensors": _SAFETENSORS + "invalid JSON in header: invalid value:"
    " integer `-4`, expected usize at line 1 column 63",
    "st_shape_overflow.safetensors": _SAFETENSORS
    + "overflow computing buffer size from shape and/or element type",
    "st_duplicate_key.safetensors": _SAFETENSORS + "invalid offset for tensor `w`",
    "st_meta_not_string.safetensors": _SAFETENSORS + "invalid JSON in header: invalid type:"
    " integer `5`, expected a string at line 1 column 32",
    "st_layout_deep.safetensors": "the torchlean metadata is not valid JSON: nested too deeply",
    "st_layout_nan.safetensors": "next_id must be a non-negative int, got nan",
    "st_layout_1e400.safetensors": "next_id must be a non-negative int, got inf",
    "st_layout_pair.safetensors": "variables[0] must be a [name, key] pair of strings,"
    " got ['w', 3]",
    "st_layout_stray.safetensors": "the torchlean metadata does not mention tensor `x`",
    "st_layout_pin.safetensors": "variable `w` has dtype float32 but the file says the"
    " context holds float16 only",
    "st_layout_pin_bogus.safetensors": "the pinned dtype must be a dtype name or null,"
    " got 'quaternion'",
    "st_no_numpy_dtype.safetensors": "tensor `w` has dtype F8_E8M0, which numpy cannot hold",
    "st_empty.safetensors": "not a valid safetensors file: header too small (0 bytes; the"
    " header's length alone takes 8)",
    "st_seven_bytes.safetensors": "not a valid safetensors file: header too small (7 bytes;"
    " the header's length alone takes 8)",
    # TorchLean JSON
    "json_deep_100000.json": "not valid JSON (depth limit exceeded: line 1 column 1041"
    " (char 1040))",
    "json_deep_meta.json": "not valid JSON (depth limit exceeded: line 1 column 1056 (char 1055))",
    "json_deep_ragged_1020.json": "tensor `w` has ragged nesting: a number at"
    " [0][0][0][0]...(1012 more)...[0][0][0][1] where the first element's nesting has a list",
    "json_deep_object_leaf.json": "JSON nested 992 levels deep, too deep to check for"
    " duplicate keys (a TorchLean document nests far less; at most 200)",
    "json_deep_regular_100.json": "tensor `w` is nested 100 lists deep; a tensor has at most"
    " 64 dimensions",
    "json_1e400.json": "not valid JSON (number is infinity when parsed as double: line 1"
    " column 13 (char 12))",
    "json_big_int.json": "not valid JSON (number is infinity when parsed as double: line 1"
    " column 22 (char 21))",
    "json_float32_overflow.json": "tensor `w` holds 1e+300 at flat index 1, which is out of"
    " range for float32",
    "json_infinity.json": "not valid JSON (unexpected character, expected a JSON value:"
    " line 1 column 13 (char 12))",
    "json_neg_infinity.json": "not valid JSON (no digit after sign: line 1 column 9 (char 8))",
    "json_nan_meta.json": "not valid JSON (unexpected character, expected a JSON value:"
    " line 1 column 49 (char 48))",
    "json_string_number.json": 'tensor `w` has a non-numeric leaf at [1]: "1.5"',
    "json_string_shape.json": 'meta shape of `w` must be a list of non-negative ints, got ["2"]',
    "json_ragged_2d.json": "tensor `w` has ragged nesting: [1] has 1 elements but [0] has 2",
    "json_meta_disagrees.json": "tensor `w` has shape (2, 2) but meta says (4,)",
    "json_meta_bool.json": "tensor `w` has dtype bool but holds values other than 0 and 1",
    "json_meta_huge_shape.json": "meta shape of `w` is not a possible tensor shape: at most"
    " 64 dimensions, fewer than 2**62 elements (got [0, 4611686018427387904,"
    " 4611686018427387904])",
    "json_meta_65_dims.json": "meta shape of `w` is not a possible tensor shape: at most 64"
    " dimensions, fewer than 2**62 elements (got [0, 0, 0, 0, 0, 0, ...])",
    "json_duplicate_meta.json": "duplicate key `w`" + LEAN_KEEPS_LAST,
    "json_duplicate_params.json": "duplicate key `w`" + LEAN_KEEPS_LAST,
    "json_null.json": "tensor `w` must be a number or nested lists of numbers, got null"
    "; TorchLean's importer would accept the file (its lookups skip null);"
    " load(path, lean=True) reads it as Lean does",
    "json_meta_dtype_comma.json": "meta dtype `floa},2` is not a known dtype",
    "json_meta_dtype_syntax.json": "meta dtype of `w` `,orch.bool` is not a known dtype",
    "json_meta_dtype_struct.json": "meta dtype of `w` `f4,i4` is not a known dtype",
    "json_bad_utf8.json": "not valid JSON (str is not valid UTF-8: surrogates not allowed:"
    " line 1 column 1 (char 0))",
    "json_trailing.json": "not valid JSON (unexpected content after document: line 1"
    " column 12 (char 11))",
    # npz: pickles, zip bombs, lying headers and directories
    "npz_object.npz": "member `w.npy` is an object array, which only a pickle can hold;"
    " refused (allow_pickle stays off)",
    "npz_bomb_deflate.npz": "member `w.npy` holds 134217728 data bytes but its header says"
    " shape (4,) of float32, which is 16 bytes",
    "npz_bomb_lying_directory.npz": "member `w.npy` claims 130538 compressed bytes inflate"
    " to 144 bytes, which deflate cannot do (at most 1032:1); the zip directory lies"
    " (a zip bomb?)",
    "npz_bomb_bzip2.npz": "member `w.npy` is compressed with bzip2; only stored or deflated"
    " members are read (what numpy and torch write)",
    "npz_huge_shape.npz": "member `w.npy` holds 0 data bytes but its header says shape"
    " (1099511627776,) of float64, which is 8796093022208 bytes",
    "npz_shape_lies.npz": "member `w.npy` holds 8 data bytes but its header says shape"
    " (100,) of float32, which is 400 bytes",
    "npz_overlap.npz": "members `a.npy` and `b.npy` overlap in the archive (a zip bomb?)",
    "npz_bad_crc.npz": "not a valid .npz archive: Bad CRC-32 for file 'w.npy'",
    "npz_truncated.npz": "not a valid .npz archive: File is not a zip file",
    "npz_not_npy.npz": "member `readme.txt` is not a .npy array (an .npz holds only those)",
    "npz_not_npy_magic.npz": "not a valid .npz archive: the magic string is not correct;"
    " expected b'\\x93NUMPY', got b'hello,'",
    "npz_duplicate_member.npz": "two members are named `w.npy`",
    "npz_structured.npz": "member `w.npy` has dtype |V4, not a tensor's dtype",
    "npz_unicode.npz": "member `w.npy` has dtype <U3, not a tensor's dtype",
    "npz_header_too_long.npz": "not a valid .npz archive: Header info length (60000) is"
    " large and may not be safe to load securely.",
    "npz_layout_deep.npz": "the torchlean metadata is not valid JSON: nested too deeply",
    "npz_empty.npz": "not a valid .npz archive: File is not a zip file",
    # PyTorch
    "pt_evil_pickle.pt": _WEIGHTS_ONLY,
    "pt_evil_zip.pt": _WEIGHTS_ONLY,
    "pt_not_state_dict.pt": "expected a state_dict (a mapping of names to tensors), got list",
    "pt_deep.pt": "expected a state_dict (a mapping of names to tensors), got list",
    "pt_truncated_zip.pt": "not a valid PyTorch file (PytorchStreamReader failed reading"
    " zip archive: failed finding central directory.)",
    "pt_bomb_lying_directory.pt": "member `bomb/data/0` claims 8 compressed bytes inflate to"
    " 4026531840 bytes, which deflate cannot do (at most 1032:1); the zip directory lies"
    " (a zip bomb?)",
    "pt_zip64_disks.pt": "not a valid PyTorch file (zipfiles that span multiple disks are"
    " not supported)",
    "pt_zip_version.pt": "not a valid PyTorch file (zip file version 18.6)",
    "pt_bomb_stored_size.pt": "member `bomb/version` is stored (not compressed) but the zip"
    " directory gives it 2 bytes in the archive and 4026531840 bytes unpacked",
    "pt_empty.pt": "empty file, not a PyTorch file",
    "pt_stack_underflow.pt": "not a valid PyTorch file (IndexError: pop from empty list)",
}

# Where inspect (header only) says something else, or finds nothing wrong yet: the
# data of a tensor numpy cannot hold is refused when it is read (show reads it).
INSPECT_CASES: dict[str, str | None] = {
    "st_layout_pin.safetensors": "tensor `w` has dtype float32 but the file says the"
    " context holds float16 only",
    "st_no_numpy_dtype.safetensors": None,
}
# the files whose payload would create SENTINEL if it were ever unpickled
EVIL = ("pt_evil_pickle.pt", "pt_evil_zip.pt", "npz_object.npz")


def check_message(path: Path, error: BaseException, message: str) -> None:
    text = str(error)
    assert isinstance(error, FormatError), (type(error), text)
    assert isinstance(error, ValueError)
    want = f"{path}: {message}"
    if want.endswith("..."):
        assert text.startswith(want[:-3]), text
    else:
        assert text == want


def test_every_hostile_file_has_a_case() -> None:
    found = sorted(p.name for p in HOSTILE.iterdir() if p.suffix != ".py" and p.is_file())
    assert found == sorted(HOSTILE_CASES)


def test_the_generator_makes_the_committed_files() -> None:
    """make_hostile.py rewrites the same bytes (the bombs, slow to make, are left out)."""
    sys.path.insert(0, str(HOSTILE))
    try:
        import make_hostile  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(HOSTILE))
    made: dict[str, bytes] = {}
    for make in (
        make_hostile.safetensors_files,
        make_hostile.json_files,
        make_hostile.npz_files,
        make_hostile.pt_files,
    ):
        made.update(make())
    assert make_hostile.SENTINEL == SENTINEL
    assert set(made) | {n for n in HOSTILE_CASES if "bomb" in n} == set(HOSTILE_CASES)
    for name, data in made.items():
        assert (HOSTILE / name).read_bytes() == data, name
    for name in ("npz_bomb_deflate.npz", "npz_bomb_lying_directory.npz", "npz_bomb_bzip2.npz"):
        assert (HOSTILE / name).stat().st_size < 200_000, name


@pytest.mark.parametrize(("name", "message"), sorted(HOSTILE_CASES.items()))
def test_load_refuses(name: str, message: str) -> None:
    path = HOSTILE / name
    with pytest.raises(FormatError) as info:
        tio.load(path)
    check_message(path, info.value, message)


@pytest.mark.parametrize(("name", "message"), sorted(HOSTILE_CASES.items()))
def test_inspect_refuses(name: str, message: str) -> None:
    path = HOSTILE / name
    message_or_none = INSPECT_CASES.get(name, message)
    if message_or_none is None:
        summary = tio.inspect(path)
        with pytest.raises(FormatError) as info:
            summary.head(summary.entries[0].name, 2)
        check_message(path, info.value, message)
        return
    with pytest.raises(FormatError) as info:
        tio.inspect(path)
    check_message(path, info.value, message_or_none)


@pytest.mark.parametrize("name", sorted(HOSTILE_CASES))
def test_show_is_one_line_and_exit_code_2(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = HOSTILE / name
    capsys.readouterr()
    code = main(["show", str(path)])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.endswith("\n")
    assert err.startswith(f"torchlean show: error: {path}: ")
    assert "Traceback" not in err


# ------------------------------------------------------------ not regular files


def _not_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    cases: dict[str, tuple[Path, str]] = {}
    d = tmp / "dir.safetensors"
    d.mkdir()
    # a folder reads as sharded safetensors (torchlean.io.sharded): this one has none
    cases["directory"] = (
        d,
        "is a directory without a *.safetensors.index.json or *.safetensors file",
    )
    fifo = tmp / "fifo.json"
    os.mkfifo(fifo)
    cases["fifo"] = (fifo, "is a FIFO, not a regular file")
    zero = tmp / "zero.json"
    zero.symlink_to("/dev/zero")
    cases["symlink to /dev/zero"] = (zero, "is a device, not a regular file")
    loop = tmp / "loop.npz"
    loop.symlink_to(tmp / "loop.npz")
    cases["symlink loop"] = (loop, "a symlink loop, not a file")
    return cases


@pytest.mark.parametrize("kind", ["directory", "fifo", "symlink to /dev/zero", "symlink loop"])
def test_paths_that_are_not_files(tmp_path: Path, kind: str) -> None:
    path, message = _not_files(tmp_path)[kind]
    for read in (tio.load, tio.inspect):
        with pytest.raises(TorchLeanError) as info:
            read(path)
        assert str(info.value) == f"{path}: {message}"


def test_symlink_to_a_good_file_loads_and_a_dangling_one_is_missing(tmp_path: Path) -> None:
    import numpy as np

    from torchlean import empty_context

    real = tmp_path / "real.safetensors"
    tio.save(empty_context().register_variable("w", np.ones(2, np.float32)), real)
    link = tmp_path / "link.safetensors"
    link.symlink_to(real)
    assert tio.load(link)["w"].tolist() == [1.0, 1.0]
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "nowhere.json")
    with pytest.raises(FileNotFoundError):
        tio.load(dangling)


# ------------------------------------------------- bounded memory, no code runs

_READ_ALL = r"""
import json, os, resource, sys, time
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import torchlean.io as tio
from torchlean.errors import TorchLeanError
out = {}
for path in sys.argv[2:]:
    for how in ("load", "inspect"):
        start = time.perf_counter()
        try:
            getattr(tio, how)(path)
            what = "ok"
        except TorchLeanError as e:
            what = type(e).__name__ + ": " + str(e)
        except BaseException as e:  # MemoryError, RecursionError, ...
            what = "UNEXPECTED " + type(e).__name__ + ": " + str(e)[:300]
        out[how + " " + os.path.basename(path)] = [what, time.perf_counter() - start]
try:  # the control: the limit is real
    bytearray(limit + (1 << 30))
    limited = False
except MemoryError:
    limited = True
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"results": out, "peak_kib": peak, "limited": limited}))
"""

MEMORY_LIMIT = 2 << 30  # RLIMIT_AS: address space, torch's own mappings included


def _read_in_subprocess(tmp: Path, names: list[str]) -> dict[str, Any]:
    env = dict(os.environ)
    src = Path(__file__).resolve().parents[2] / "src"
    env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", _READ_ALL, str(MEMORY_LIMIT)] + [str(HOSTILE / n) for n in names],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_every_file_in_bounded_memory_and_no_code_runs(tmp_path: Path) -> None:
    """All hostile files, read in one process under RLIMIT_AS = 2 GiB (the 1 GiB and
    8 TiB bombs included) with a fresh working directory: each gives a TorchLeanError,
    and the sentinel the pickles would create does not appear."""
    result = _read_in_subprocess(tmp_path, sorted(HOSTILE_CASES))
    assert result["limited"]
    slowest = max(result["results"].items(), key=lambda kv: kv[1][1])
    print(
        f"{len(result['results'])} reads; slowest {slowest[0]} {slowest[1][1]:.2f} s;"
        f" peak RSS {result['peak_kib'] / 1024:.0f} MiB"
    )
    for key, (what, _) in result["results"].items():
        how, name = key.split(" ", 1)
        if how == "inspect" and INSPECT_CASES.get(name, "") is None:
            assert what == "ok", key
            continue
        assert what.startswith("FormatError: "), (key, what)
    assert not (tmp_path / SENTINEL).exists()
    assert os.listdir(tmp_path) == []


_RUN_PAYLOAD = r"""
import pickle, sys, zipfile, numpy as np
name = sys.argv[1]
if name == "pt_evil_pickle.pt":
    pickle.loads(open(sys.argv[2], "rb").read())
elif name == "pt_evil_zip.pt":
    with zipfile.ZipFile(sys.argv[2]) as z:
        pickle.loads(z.read("hostile/data.pkl"))
else:
    np.load(sys.argv[2], allow_pickle=True)["w"]
"""


@pytest.mark.parametrize("name", EVIL)
def test_the_evil_payloads_are_live(tmp_path: Path, name: str) -> None:
    """The control: unpickled without torchlean's guard, each payload creates the
    sentinel, so its absence above means something."""
    subprocess.run(
        [sys.executable, "-c", _RUN_PAYLOAD, name, str(HOSTILE / name)],
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert (tmp_path / SENTINEL).exists()
