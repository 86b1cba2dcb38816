"""Write the hostile files of tests/io/hostile/, deterministically.

Run from the repository root: ``python tests/io/hostile/make_hostile.py``. Every file
is small on disk (the zip bombs included); ``tests/io/test_hostile.py`` pins the error
each one must give. Running it again rewrites the same bytes.

Reading map:
- :func:`safetensors_files`, :func:`json_files`, :func:`npz_files`, :func:`pt_files` --
  one function per format, each returns ``{file name: bytes}``; :func:`bomb_files` --
  the .npz zip bombs (the slow ones to make).
- :data:`SENTINEL` -- the file (relative to the working directory) that the hostile
  pickles would create if they were ever run.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import struct
import sys
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).parent
SENTINEL = "hostile_sentinel"
_DATE = (2020, 1, 1, 0, 0, 0)


# ---------------------------------------------------------------------- safetensors


def _st(header: Any, data: bytes = b"", length: int | None = None) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(text) if length is None else length
    return struct.pack("<Q", n) + text + data


def _layout(**fields: Any) -> str:
    base: dict[str, Any] = {
        "version": 1,
        "next_id": 1,
        "dtype": None,
        "variables": [["w", "w"]],
        "gradients": [],
    }
    base.update(fields)
    return json.dumps(base)


def safetensors_files() -> dict[str, bytes]:
    f32x4 = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}
    data = np.arange(4, dtype="<f4").tobytes()
    deep = "[" * 100_000 + "]" * 100_000
    return {
        # the header claims 4000 bytes of data, the file has 16
        "st_claims_more.safetensors": _st(
            {"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}, data
        ),
        "st_overlap.safetensors": _st(
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            data,
        ),
        "st_out_of_range.safetensors": _st(
            {"w": {"dtype": "F32", "shape": [4], "data_offsets": [2**40, 2**40 + 16]}}, data
        ),
        "st_offsets_disagree.safetensors": _st(
            {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, data
        ),
        "st_len_2_63.safetensors": _st({"w": f32x4}, data, length=2**63),
        "st_len_max.safetensors": _st({"w": f32x4}, data, length=2**64 - 1),
        "st_len_past_end.safetensors": _st({"w": f32x4}, data, length=100_000),
        "st_len_zero.safetensors": _st({"w": f32x4}, data, length=0),
        "st_unknown_dtype.safetensors": _st(
            {"w": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}, data
        ),
        "st_not_json.safetensors": _st(b"\x00\x01 not json at all \xff\xfe", data),
        "st_header_list.safetensors": _st([1, 2, 3], data),
        "st_deep_header.safetensors": _st(('{"w": ' + deep + "}").encode(), data),
        "st_big_number.safetensors": _st(
            b'{"w": {"dtype": "F32", "shape": [1e400], "data_offsets": [0, 16]}}', data
        ),
        "st_nan_token.safetensors": _st(
            b'{"w": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 16]}}', data
        ),
        "st_shape_string.safetensors": _st(
            {"w": {"dtype": "F32", "shape": ["4"], "data_offsets": [0, 16]}}, data
        ),
        "st_shape_negative.safetensors": _st(
            {"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, data
        ),
        "st_shape_overflow.safetensors": _st(
            {"w": {"dtype": "F32", "shape": [2**62, 2**62, 4], "data_offsets": [0, 16]}}, data
        ),
        "st_duplicate_key.safetensors": _st(
            b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},'
            b' "w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}',
            data,
        ),
        "st_meta_not_string.safetensors": _st({"__metadata__": {"torchlean": 5}, "w": f32x4}, data),
        "st_layout_deep.safetensors": _st({"__metadata__": {"torchlean": deep}, "w": f32x4}, data),
        "st_layout_nan.safetensors": _st(
            {
                "__metadata__": {"torchlean": _layout().replace('"next_id": 1', '"next_id": NaN')},
                "w": f32x4,
            },
            data,
        ),
        "st_layout_1e400.safetensors": _st(
            {
                "__metadata__": {
                    "torchlean": _layout().replace('"next_id": 1', '"next_id": 1e400')
                },
                "w": f32x4,
            },
            data,
        ),
        "st_layout_pair.safetensors": _st(
            {"__metadata__": {"torchlean": _layout(variables=[["w", 3]])}, "w": f32x4}, data
        ),
        "st_layout_stray.safetensors": _st(
            {
                "__metadata__": {"torchlean": _layout()},
                "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "x": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
            },
            data,
        ),
        "st_layout_pin.safetensors": _st(
            {"__metadata__": {"torchlean": _layout(dtype="float16")}, "w": f32x4}, data
        ),
        "st_layout_pin_bogus.safetensors": _st(
            {"__metadata__": {"torchlean": _layout(dtype="quaternion")}, "w": f32x4}, data
        ),
        "st_no_numpy_dtype.safetensors": _st(
            {"w": {"dtype": "F8_E8M0", "shape": [16], "data_offsets": [0, 16]}}, data
        ),
        "st_empty.safetensors": b"",
        "st_seven_bytes.safetensors": b"\x10\x00\x00\x00\x00\x00\x00",
    }


# ---------------------------------------------------------------------- JSON


def json_files() -> dict[str, bytes]:
    deep = "[" * 100_000 + "1" + "]" * 100_000
    # deeper than Python's recursion limit, shallower than orjson's (1024)
    ragged_1020 = "[" * 1020 + "[1], 2" + "]" * 1020
    regular_100 = "[" * 100 + "1" + "]" * 100
    return {
        "json_deep_100000.json": ('{"params": {"w": ' + deep + "}}").encode(),
        "json_deep_meta.json": ('{"params": {"w": [1]}, "meta": ' + deep + "}").encode(),
        "json_deep_ragged_1020.json": ('{"w": ' + ragged_1020 + "}").encode(),
        # found by the fuzzer: an object deep in a list made json's recursive duplicate
        # check fail or not depending on the caller's stack depth
        "json_deep_object_leaf.json": (
            '{"w": ' + "[" * 990 + '{"a": 1}' + "]" * 990 + "}"
        ).encode(),
        "json_deep_regular_100.json": ('{"w": ' + regular_100 + "}").encode(),
        "json_1e400.json": b'{"w": [1.0, 1e400]}',
        "json_big_int.json": (
            '{"params": {"w": [1, ' + "9" * 400 + ']}, "meta": {"w": {"dtype": "torch.int64"}}}'
        ).encode(),
        "json_float32_overflow.json": b'{"w": [1.0, 1e300]}',
        "json_infinity.json": b'{"w": [1.0, Infinity]}',
        "json_neg_infinity.json": b'{"w": [-Infinity]}',
        "json_nan_meta.json": b'{"params": {"w": [1]}, "meta": {"w": {"shape": [NaN]}}}',
        "json_string_number.json": b'{"w": [1.0, "1.5"]}',
        "json_string_shape.json": b'{"params": {"w": [1, 2]}, "meta": {"w": {"shape": ["2"]}}}',
        "json_ragged_2d.json": b'{"w": [[1, 2], [3]]}',
        "json_meta_disagrees.json": (
            b'{"params": {"w": [[1, 2], [3, 4]]}, "meta": {"w": {"shape": [4]}}}'
        ),
        "json_meta_bool.json": (
            b'{"params": {"w": [0, 2]}, "meta": {"w": {"dtype": "torch.bool"}}}'
        ),
        "json_meta_huge_shape.json": (
            b'{"params": {"w": []}, "meta": {"w": {"shape": [0, 4611686018427387904,'
            b" 4611686018427387904]}}}"
        ),
        "json_meta_65_dims.json": (
            '{"params": {"w": []}, "meta": {"w": {"shape": [' + ", ".join(["0"] * 65) + "]}}}"
        ).encode(),
        "json_duplicate_meta.json": (
            b'{"params": {"w": [1]}, "meta": {"w": {"shape": [1]}, "w": {"shape": [2]}}}'
        ),
        "json_duplicate_params.json": b'{"params": {"w": [1], "w": [2]}}',
        "json_null.json": b'{"w": null}',
        # found by the fuzzer: numpy reads a comma in a dtype as a structured dtype
        "json_meta_dtype_comma.json": b'{"params": {"w": [1]}, "meta": {"dtype": "floa},2"}}',
        "json_meta_dtype_syntax.json": (
            b'{"params": {"w": [0, 2]}, "meta": {"w": {"dtype": ",orch.bool"}}}'
        ),
        "json_meta_dtype_struct.json": (
            b'{"params": {"w": [1]}, "meta": {"w": {"dtype": "f4,i4"}}}'
        ),
        "json_bad_utf8.json": b'{"w\xff\xfe": [1]}',
        "json_trailing.json": b'{"w": [1]} {"w": [2]}',
    }


# ---------------------------------------------------------------------- npz


def _npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    """A version 1.0 .npy header (magic, length, padded dict)."""
    d = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape!r}, }}"
    body = d.encode("latin1")
    pad = 64 - (10 + len(body) + 1) % 64
    body += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body


def _zip(members: list[tuple[str, bytes, int]]) -> bytes:
    """A zip of ``(name, data, compress_type)`` members with a fixed timestamp."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w") as zf:
        warnings.simplefilter("ignore")  # a duplicate name is what some cases want
        for name, payload, method in members:
            info = zipfile.ZipInfo(name, date_time=_DATE)
            info.compress_type = method
            zf.writestr(info, payload)
    return buf.getvalue()


def _zip_stream(name: str, header: bytes, zeros: int, method: int) -> bytes:
    """A one-member zip whose member is ``header`` and ``zeros`` zero bytes, written
    in chunks (never held whole in memory)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo(name, date_time=_DATE)
        info.compress_type = method
        with zf.open(info, "w", force_zip64=True) as f:
            f.write(header)
            chunk = bytes(1 << 24)
            left = zeros
            while left:
                f.write(chunk[: min(left, len(chunk))])
                left -= min(left, len(chunk))
    return buf.getvalue()


def _npy(a: np.ndarray[Any, Any], allow_pickle: bool = False) -> bytes:
    f = io.BytesIO()
    np.lib.format.write_array(f, a, allow_pickle=allow_pickle)
    return f.getvalue()


class _Evil:
    """Unpickling this creates :data:`SENTINEL` in the working directory."""

    def __reduce__(self) -> Any:
        return (open, (SENTINEL, "w"))


def _patch_sizes(data: bytes, file_size: int, crc: int | None = None) -> bytes:
    """``data`` (a one-member zip without zip64) with the member's uncompressed size
    (and CRC) rewritten in both the local header and the central directory."""
    b = bytearray(data)
    local = b.find(b"PK\x03\x04")
    central = b.find(b"PK\x01\x02")
    struct.pack_into("<I", b, local + 22, file_size)
    struct.pack_into("<I", b, central + 24, file_size)
    if crc is not None:
        struct.pack_into("<I", b, local + 14, crc)
        struct.pack_into("<I", b, central + 16, crc)
    return bytes(b)


def npz_files() -> dict[str, bytes]:
    st = zipfile.ZIP_STORED
    good = _npy(np.arange(4, dtype="<f4"))
    evil = _npy(np.array([_Evil()], dtype=object), allow_pickle=True)
    overlap = bytearray(_zip([("a.npy", good, st), ("b.npy", good, st)]))
    # point the second central-directory entry at the first member's local header
    second = overlap.find(b"PK\x01\x02", overlap.find(b"PK\x01\x02") + 4)
    struct.pack_into("<I", overlap, second + 42, 0)
    bad_crc = bytearray(_zip([("w.npy", good, st)]))
    bad_crc[30 + len("w.npy") + len(good) - 1] ^= 0xFF
    return {
        "npz_object.npz": _zip([("w.npy", evil, st)]),
        "npz_huge_shape.npz": _zip([("w.npy", _npy_header("<f8", (2**40,)), st)]),
        "npz_shape_lies.npz": _zip([("w.npy", _npy_header("<f4", (100,)) + bytes(8), st)]),
        "npz_overlap.npz": bytes(overlap),
        "npz_bad_crc.npz": bytes(bad_crc),
        "npz_truncated.npz": _zip([("a.npy", good, st), ("b.npy", good, st)])[:150],
        "npz_not_npy.npz": _zip([("readme.txt", b"hello", st)]),
        "npz_not_npy_magic.npz": _zip([("w.npy", b"hello, not an array", st)]),
        "npz_duplicate_member.npz": _zip([("w.npy", good, st), ("w.npy", good, st)]),
        "npz_structured.npz": _zip([("w.npy", _npy(np.zeros(2, dtype=[("a", "<f4")])), st)]),
        "npz_unicode.npz": _zip([("w.npy", _npy(np.array(["abc"])), st)]),
        "npz_header_too_long.npz": _zip(
            [("w.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", 60000) + b" " * 60000, st)]
        ),
        "npz_layout_deep.npz": _zip(
            [
                ("w.npy", good, st),
                (
                    "__torchlean__/layout.npy",
                    _npy(np.frombuffer(b"[" * 100_000 + b"]" * 100_000, dtype=np.uint8)),
                    st,
                ),
            ]
        ),
        "npz_empty.npz": b"",
    }


def bomb_files() -> dict[str, bytes]:
    """The zip bombs: small on disk, slow to make (about 20 s, the bzip2 one most)."""
    df = zipfile.ZIP_DEFLATED
    small_header = _npy_header("<f4", (4,))
    # 128 MiB of zeros behind a header that says 16 bytes: deflated to ~128 KiB
    bomb = _zip_stream("w.npy", small_header, 128 << 20, df)
    # the same stream, but the zip directory claims the 16 bytes the header implies
    lying = _patch_sizes(
        _zip([("w.npy", small_header + bytes(128 << 20), df)]),
        len(small_header) + 16,
        zlib.crc32(small_header + bytes(16)),
    )
    return {
        "npz_bomb_deflate.npz": bomb,
        "npz_bomb_lying_directory.npz": lying,
        # 1 GiB of zeros in about 1 KiB, behind an honest header
        "npz_bomb_bzip2.npz": _zip_stream(
            "w.npy", _npy_header("<f4", (256 << 20,)), 1 << 30, zipfile.ZIP_BZIP2
        ),
    }


# ---------------------------------------------------------------------- torch


def _pickle(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=2)


def _torch_zip(data_pkl: bytes) -> bytes:
    """A file in torch.save's zip layout whose ``data.pkl`` is ``data_pkl``."""
    return _zip(
        [
            ("hostile/data.pkl", data_pkl, zipfile.ZIP_STORED),
            ("hostile/byteorder", b"little", zipfile.ZIP_STORED),
            ("hostile/version", b"3\n", zipfile.ZIP_STORED),
        ]
    )


# torch.save({"w": torch.ones(4)})'s data.pkl: a float storage "0" of 4 elements
_ONES_PKL = base64.b64decode(
    "gAJ9cQBYAQAAAHdxAWN0b3JjaC5fdXRpbHMKX3JlYnVpbGRfdGVuc29yX3YyCnECKChYBwAAAHN0b3JhZ2Vx"
    "A2N0b3JjaApGbG9hdFN0b3JhZ2UKcQRYAQAAADBxBVgDAAAAY3B1cQZLBHRxB1FLAEsEhXEISwGFcQmJY2Nv"
    "bGxlY3Rpb25zCk9yZGVyZWREaWN0CnEKKVJxC3RxDFJxDXMu"
)


def _patch_member_size(data: bytes, name: bytes, size: int) -> bytes:
    """``data`` (a zip) with member ``name``'s uncompressed size set to ``size`` in its
    local header and in the central directory."""
    b = bytearray(data)
    for magic, length_at, name_at, size_at in (
        (b"PK\x03\x04", 26, 30, 22),  # local header
        (b"PK\x01\x02", 28, 46, 24),  # central directory
    ):
        at = b.find(magic)
        while at >= 0:
            length = struct.unpack_from("<H", b, at + length_at)[0]
            if bytes(b[at + name_at : at + name_at + length]) == name:
                struct.pack_into("<I", b, at + size_at, size)
            at = b.find(magic, at + 4)
    return bytes(b)


def _pt_bomb(method: int, member: bytes) -> bytes:
    """A torch zip of ``torch.ones(4)`` whose ``member`` claims 3.75 GiB in the zip
    directory: torch's reader allocates what the directory declares."""
    data = _zip(
        [
            ("bomb/data.pkl", _ONES_PKL, zipfile.ZIP_STORED),
            ("bomb/byteorder", b"little", zipfile.ZIP_STORED),
            ("bomb/data/0", np.ones(4, "<f4").tobytes(), method),
            ("bomb/version", b"3\n", zipfile.ZIP_STORED),
        ]
    )
    return _patch_member_size(data, member, 0xF0000000)


def _zip64_disks(data: bytes) -> bytes:
    """``data`` (a zip) with a zip64 end-of-directory locator before its end record
    that says the archive spans 2 disks."""
    end = data.rfind(b"PK\x05\x06")
    locator = b"PK\x06\x07" + struct.pack("<IQI", 0, 0, 2)
    return data[:end] + locator + data[end:]


def _zip_version(data: bytes) -> bytes:
    """``data`` (a zip) whose first central-directory entry needs zip version 18.6."""
    b = bytearray(data)
    at = b.find(b"PK\x01\x02")
    struct.pack_into("<B", b, at + 6, 186)  # "version needed to extract"
    return bytes(b)


def pt_files() -> dict[str, bytes]:
    evil = _pickle({"w": _Evil()})
    zipped = _torch_zip(evil)
    deep = b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b"."  # [[[...]]] 100000 deep
    return {
        "pt_evil_pickle.pt": evil,
        "pt_evil_zip.pt": zipped,
        "pt_not_state_dict.pt": _torch_zip(_pickle([1, 2, 3])),
        "pt_deep.pt": _torch_zip(deep),
        "pt_truncated_zip.pt": zipped[: len(zipped) // 2],
        "pt_empty.pt": b"",
        "pt_bomb_lying_directory.pt": _pt_bomb(zipfile.ZIP_DEFLATED, b"bomb/data/0"),
        # found by the fuzzer: a stored record whose size lies made torch allocate 4 GiB
        "pt_bomb_stored_size.pt": _pt_bomb(zipfile.ZIP_STORED, b"bomb/version"),
        # found by the fuzzer: zipfile.is_zipfile raises on a zip64 end record that
        # names several disks
        "pt_zip64_disks.pt": _zip64_disks(_torch_zip(_ONES_PKL)),
        # found by the fuzzer: zipfile raises NotImplementedError for a zip version
        "pt_zip_version.pt": _zip_version(_torch_zip(_ONES_PKL)),
        # found by the fuzzer: torch's restricted unpickler fails with an IndexError
        "pt_stack_underflow.pt": base64.b64decode(
            "gQZ9cQBYAQAAAHdxAAAAAAAAAAAAAAAAAWNpbwpfc2VudGluZWxxA2gB//////////+GcQRScQVzLg=="
        ),
    }


def all_files() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for make in (safetensors_files, json_files, npz_files, bomb_files, pt_files):
        out.update(make())
    return out


def main(argv: list[str]) -> int:
    target = Path(argv[0]) if argv else HERE
    files = all_files()
    for name, data in sorted(files.items()):
        (target / name).write_bytes(data)
    total = sum(len(d) for d in files.values())
    print(f"wrote {len(files)} files, {total / 1024:.0f} KiB, to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
