"""The zip-directory guard shared by the ``.npz`` and PyTorch ``.pt`` readers (private).

Both formats are zip archives, and both readers (numpy's, torch's) allocate what the
zip directory declares. The directory is therefore checked before anything is inflated:
a zip bomb, encryption, exotic compression, sizes no member can have, members past the
archive's end or overlapping ones are refused with a
:class:`~torchlean.errors.FormatError`.

Reading map:
- :func:`check_zip_directory` -- the checks, on a list of ``ZipInfo``.
- :func:`check_zip_file` -- the checks on an open file when it is a zip archive (torch's).
"""

from __future__ import annotations

import itertools
import os
import zipfile
from typing import BinaryIO, Final

from torchlean.errors import FormatError

__all__ = ["check_zip_directory", "check_zip_file"]

# Deflate cannot inflate one byte to more than 1032; a member that claims more (or a
# compressed size no deflate stream of its size needs) has a directory that lies.
_DEFLATE_MAX_RATIO: Final = 1032
_METHODS: Final = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}
_METHOD_NAMES: Final = {
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}


def check_zip_directory(
    infos: list[zipfile.ZipInfo], size: int, where: str, *, npy: bool = True
) -> None:
    """Refuse what numpy and torch never write and what a zip bomb needs, from the zip
    directory alone (before anything is inflated): exotic compression, encryption,
    sizes no stored or deflated member can have, members beyond the archive's end,
    overlapping members, repeated names, and (``npy=True``) names that are not
    ``.npy``. Used for ``.npz`` and for torch's zip files. Cost: O(members)."""
    names: set[str] = set()
    spans: list[tuple[int, int, str]] = []
    for info in infos:
        name = info.filename
        what = f"member `{name}`"
        if npy and not name.endswith(".npy"):
            raise FormatError(f"{where}: {what} is not a .npy array (an .npz holds only those)")
        if name in names:
            raise FormatError(f"{where}: two members are named `{name}`")
        names.add(name)
        if info.flag_bits & 0x1:
            raise FormatError(f"{where}: {what} is encrypted")
        method = _METHODS.get(info.compress_type)
        if method is None:
            shown = _METHOD_NAMES.get(info.compress_type, f"method {info.compress_type}")
            raise FormatError(
                f"{where}: {what} is compressed with {shown}; only stored or deflated"
                " members are read (what numpy and torch write)"
            )
        packed, full = info.compress_size, info.file_size
        if method == "stored" and packed != full:
            raise FormatError(
                f"{where}: {what} is stored (not compressed) but the zip directory gives it"
                f" {packed} bytes in the archive and {full} bytes unpacked"
            )
        if method == "deflated" and (
            full > _DEFLATE_MAX_RATIO * packed + 1024 or packed > full + full // 1000 + 1024
        ):
            raise FormatError(
                f"{where}: {what} claims {packed} compressed bytes inflate to {full} bytes,"
                f" which deflate cannot do (at most {_DEFLATE_MAX_RATIO}:1); the zip"
                " directory lies (a zip bomb?)"
            )
        end = info.header_offset + 30 + len(name.encode()) + packed
        if end > size:
            raise FormatError(
                f"{where}: {what} claims {packed} bytes at offset {info.header_offset},"
                f" past the end of the {size}-byte archive (truncated?)"
            )
        spans.append((info.header_offset, end, name))
    spans.sort()
    for (_, end, first), (start, _, second) in itertools.pairwise(spans):
        if start < end:
            raise FormatError(
                f"{where}: members `{first}` and `{second}` overlap in the archive (a zip bomb?)"
            )


def check_zip_file(file: BinaryIO, where: str, *, what: str) -> bool:
    """When the open ``file`` is a zip archive, check its directory (``npy=False``) and
    return True; a file that is not a zip archive passes (False). A damaged directory
    is a FormatError saying the file is not a valid ``what``. The reader then reads the
    same open file, so the file checked is the file read. Leaves the position at 0.
    Cost: O(members)."""
    try:
        size = os.fstat(file.fileno()).st_size
        file.seek(0)
        if not zipfile.is_zipfile(file):  # (it can raise BadZipFile itself)
            return False
        file.seek(0)
        with zipfile.ZipFile(file) as zf:
            infos = zf.infolist()
    except Exception as e:  # BadZipFile, NotImplementedError (a zip version), ...
        raise FormatError(f"{where}: not a valid {what} ({e})") from None
    finally:
        file.seek(0)
    check_zip_directory(infos, size, where, npy=False)
    return True
