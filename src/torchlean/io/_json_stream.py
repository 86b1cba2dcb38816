"""TorchLean JSON read and written a tensor at a time, in bounded memory.

A big weight file is mostly the nested lists of its tensors; everything else (names,
``meta``) is small. Reading: one pass over the file finds every string (memchr speed,
through one reused buffer: :class:`_Window`); the text between two strings that holds a
big list after a key is a *region*, cut out and replaced by a placeholder string, so
that what remains (the *skeleton*) is a small JSON document that the ordinary, exact
parser reads with all its checks. A region is read later, straight into the tensor's
array, its numbers through simdjson (correctly rounded float64, or exact integers
through orjson). A float tensor is read in chunks of about :data:`CHUNK` bytes, each a
run of whole elements of its outer list parsed as one small document whose nesting is
checked on the parsed lists (:func:`_read_elements`, :func:`~._json_fast.array_dims`):
the text, simdjson's tape and the numbers stay in the processor's cache. A tensor that
is not read so (elements longer than :data:`CHUNK_MAX`, many small lists, anything
irregular) is parsed in one piece when its text is at most :data:`WHOLE` blocks and
has few numbers per byte, else (and integers always) in blocks of :data:`BLOCK` bytes
with its nesting checked from its brackets and commas
(:func:`~._json_fast.skeleton_dims`): each block goes to simdjson as it is, with the
``[`` of the lists open at its start put before it and the ``]`` that close them after
it. Every way gives the same array, or declines and leaves the next way to read it or
say what is wrong. Peak memory: the output arrays, the tensor being read twice, a few
blocks. Anything wrong in a big region is located by :func:`locate_problem`, which
walks the brackets with O(depth) memory and names the index.

Writing: :func:`tensor_pieces` yields a tensor's JSON text in pieces of at most
:data:`PIECE` elements (rows of the leading dimensions), so the writer never holds more
than one piece's text.

Reading map:
- :func:`scan` -- the skeleton of a file and its regions (:class:`Region`);
  :func:`place` -- where a parser's error in the skeleton is in the file.
- :func:`read_region` -- one region's numbers as an array of a dtype (in chunks,
  whole, or in blocks); :class:`Scratch`, what it reuses from one region to the next.
- :func:`locate_problem` -- the first problem in a tensor's text, with its index.
- :class:`Streamed`, :func:`describe` -- a region in a parsed skeleton, and how a
  message shows it (never the placeholder); :func:`small_value` -- a region that is a
  small list among long blanks, read as JSON.
- :func:`tensor_pieces` -- a tensor's JSON text, piece by piece.
"""

from __future__ import annotations

import bisect
import math
import os
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, Final

import numpy as np

from torchlean.errors import FormatError
from torchlean.io import _json_fast
from torchlean.io._json_fast import MAX_DIMS, array_dims, count_bytes, skeleton_dims

__all__ = [
    "BLOCK",
    "PIECE",
    "Region",
    "Scratch",
    "Streamed",
    "describe",
    "locate_problem",
    "read_region",
    "scan",
    "small_value",
    "tensor_pieces",
]

#: Bytes read at a time.
BLOCK: Final = 8 << 20
#: A float tensor's text up to this many blocks is parsed in one piece (when it holds
#: at most one number per :data:`WHOLE_BYTES_PER_NUMBER` bytes: simdjson takes 16 bytes
#: per number, so memory stays a few blocks).
WHOLE: Final = 4
WHOLE_BYTES_PER_NUMBER: Final = 8
#: A list longer than this (in bytes of text) after a key is read as a region.
REGION_MIN: Final = 64 << 10
#: Elements per piece of text written.
PIECE: Final = 1 << 18
#: A float tensor's text is parsed this many bytes at a time (whole elements of its
#: outer list, :func:`_read_elements`), so that the text, simdjson's tape (16 bytes a
#: number) and the numbers stay in the processor's cache; a window widens up to
#: :data:`CHUNK_MAX` bytes to hold one element.
CHUNK: Final = 1 << 20
CHUNK_MAX: Final = 4 << 20

_BLANK: Final = b" \t\n\r"
_NUMBER_AND_BLANK: Final = b"0123456789.eE+- \t\n\r"
_BRACKETS_TO_BLANK: Final = bytes.maketrans(b"[]", b"  ")
_OPENING: Final = re.compile(rb"[\[\s]*")
_BLANKS: Final = re.compile(rb"[ \t\n\r]+")


class Unclean(Exception):
    """The file is not one the streaming reader takes: a big stretch that is not a list
    after a key (``region`` is ``None``), or a big list after a key with a problem in it
    or more than :data:`REGION_MIN` bytes of text after it (``region``: where its text
    starts)."""

    def __init__(self, region: Region | None = None) -> None:
        super().__init__(region)
        self.region = region


@dataclass(frozen=True)
class Region:
    """A tensor's text in the file: bytes ``start`` (its ``[``) to ``end`` (after ``]``),
    and the key it follows."""

    start: int
    end: int
    key: str


class _Window:
    """Reads of a file through one reused buffer holding :data:`BLOCK` bytes of it: a
    search or a read inside the bytes it holds copies nothing more from the file, so
    finding each of many small strings costs what they span, not a block each."""

    def __init__(self, f: IO[bytes], size: int) -> None:
        self.fd = f.fileno()
        self.size = size
        self.buffer = bytearray(max(1, min(BLOCK, size)))
        self.lo = self.hi = 0  # the file's bytes lo..hi are in the buffer

    def _fill(self, at: int) -> None:
        n = _pread_into(self.fd, memoryview(self.buffer), at)
        self.lo, self.hi = at, at + n

    def find(self, needle: bytes, at: int) -> int:
        """The offset of the first ``needle`` (one byte) at or after ``at``, or the
        file's size."""
        while at < self.size:
            if not self.lo <= at < self.hi:
                self._fill(at)
                if self.hi == self.lo:
                    break  # the file is shorter than it was
            i = self.buffer.find(needle, at - self.lo, self.hi - self.lo)
            if i >= 0:
                return self.lo + i
            at = self.hi
        return self.size

    def read(self, start: int, end: int) -> bytes:
        """Bytes ``start`` to ``end`` (fewer at the end of the file)."""
        start = max(start, 0)
        if self.lo <= start and end <= self.hi:
            return bytes(self.buffer[start - self.lo : end - self.lo])
        out = bytearray(max(0, min(end, self.size) - start))
        return bytes(out[: _pread_into(self.fd, memoryview(out), start)])

    def byte(self, at: int) -> bytes:
        """The byte at ``at`` (``b""`` past the end of the file)."""
        if self.lo <= at < self.hi:
            return bytes(self.buffer[at - self.lo : at - self.lo + 1])
        return self.read(at, at + 1)

    def skip(self, at: int, end: int, chars: bytes, counted: bytes = b"") -> tuple[int, int]:
        """The offset of the first byte not in ``chars`` from ``at`` on (or ``end``),
        and how many ``counted`` bytes (one byte) were skipped. Reads 64 bytes, then
        twice as many each time, up to 64 KiB."""
        step = 64
        n = 0
        while at < end:
            piece = self.read(at, min(at + step, end))
            kept = piece.lstrip(chars)
            skipped = len(piece) - len(kept)
            if counted:
                n += piece.count(counted, 0, skipped)
            if kept:
                return at + skipped, n
            if not piece:
                break  # the file is shorter than it was
            at += len(piece)
            step = min(2 * step, 1 << 16)
        return end, n

    def skip_back(self, end: int, lo: int, chars: bytes, counted: bytes = b"") -> tuple[int, int]:
        """The offset of the last byte not in ``chars`` before ``end`` (or ``lo``), and
        how many ``counted`` bytes were skipped. Reads as :meth:`skip` does, backwards."""
        step = 64
        n = 0
        while end > lo:
            piece = self.read(max(lo, end - step), end)
            kept = piece.rstrip(chars)
            if counted:
                n += piece.count(counted, len(kept))
            if kept:
                return end - len(piece) + len(kept) - 1, n
            if not piece:
                break
            end -= len(piece)
            step = min(2 * step, 1 << 16)
        return lo, n

    def strip(self, start: int, end: int) -> list[tuple[bytes, int]] | None:
        """Bytes ``start`` to ``end`` with each run of blanks made one space, as pieces
        of text and the offset in the file of each, or ``None`` when that text is more
        than :data:`REGION_MIN` bytes. Reads :data:`REGION_MIN` bytes at a time."""
        out: list[tuple[bytes, int]] = []
        n = 0
        for at in range(start, end, REGION_MIN):
            piece = self.read(at, min(at + REGION_MIN, end))
            i = 0
            for m in _BLANKS.finditer(piece):
                if m.start() > i:
                    out.append((piece[i : m.start()], at + i))
                    n += m.start() - i
                if m.start() == 0 and len(out) >= 2 and out[-2][0] == b" " and not out[-1][0]:
                    out.pop()  # the run goes on from the piece before
                else:
                    out.append((b" ", at + m.start()))
                    n += 1
                out.append((b"", at + m.end()))  # what follows the run is where it is
                i = m.end()
            if i < len(piece):
                out.append((piece[i:], at + i))
                n += len(piece) - i
            if n > REGION_MIN:
                return None
        return out


class _Skeleton:
    """The skeleton's text put together, and where each of its bytes is in the file:
    ``anchors`` holds ``(skeleton offset, file offset)`` wherever the difference of the
    two changes (at each region and each long blank run), so a place in the skeleton
    can be told as a place in the file (:func:`file_offset`)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.anchors: list[tuple[int, int]] = []
        self.shift: int | None = None

    def add(self, text: bytes, at: int) -> None:
        """Append ``text``, which stands for the file's bytes from ``at``."""
        if self.size - at != self.shift:
            self.shift = self.size - at
            self.anchors.append((self.size, at))
        self.parts.append(text)
        self.size += len(text)


def file_offset(anchors: list[tuple[int, int]], at: int) -> int:
    """The offset in the file of the skeleton's byte ``at`` (:class:`_Skeleton`)."""
    i = bisect.bisect_right(anchors, (at, math.inf)) - 1
    if i < 0:
        return at
    skeleton_at, file_at = anchors[i]
    return file_at + at - skeleton_at


def place(f: IO[bytes], anchors: list[tuple[int, int]], skeleton: bytes, pos: int) -> str:
    """Where the skeleton's character ``pos`` (a JSON parser's error position) is in the
    file, as the parser says it of the whole file: ``line L column C (char N)``, counted
    in characters. Reads the file up to there: O(that offset) time, a block of memory."""
    text = skeleton.decode("utf-8", "surrogateescape")[:pos]
    at = file_offset(anchors, len(text.encode("utf-8", "surrogateescape")))
    newlines = chars = since_newline = 0
    offset = 0
    while offset < at:
        block = _read(f, offset, min(offset + BLOCK, at))
        if not block:
            break
        lead = np.frombuffer(block, np.uint8) & 0xC0 != 0x80  # a character starts here
        n = block.count(b"\n")
        if n:
            newlines += n
            since_newline = int(np.count_nonzero(lead[block.rfind(b"\n") + 1 :]))
        else:
            since_newline += int(np.count_nonzero(lead))
        chars += int(np.count_nonzero(lead))
        offset += len(block)
    return f"line {newlines + 1} column {since_newline + 1} (char {chars})"


def _pread_into(fd: int, view: memoryview, at: int) -> int:
    """Fill ``view`` with the file's bytes from ``at``; how many there were."""
    got = 0
    n = len(view)
    while got < n:
        k = os.preadv(fd, [view[got:]], at + got)
        if not k:
            break
        got += k
    return got


def _read(f: IO[bytes], start: int, end: int) -> bytes:
    f.seek(start)
    return f.read(end - start)


def scan(
    f: IO[bytes], size: int, where: str
) -> tuple[bytes, dict[str, Region], list[tuple[int, int]]]:
    """The skeleton of the file ``f`` (``size`` bytes): its text with every big list that
    follows a key replaced by a placeholder string, the placeholders' regions, and the
    anchors that tell a place in the skeleton as a place in the file (:func:`place`).

    Blank space between tokens may be of any length: a run of blanks longer than
    :data:`REGION_MIN` outside a region is written to the skeleton as one space (JSON
    reads both the same), and the ``:`` before a region and the ``]``, ``,`` and ``}``
    after it are found across any number of blanks.

    Raises :class:`Unclean` when a big stretch is not a list followed by ``,`` or ``}``
    (the caller then locates the problem). Cost: O(size) at memchr speed, memory O(the
    skeleton).
    """
    nonce = secrets.token_hex(8)
    w = _Window(f, size)
    out = _Skeleton()
    regions: dict[str, Region] = {}
    pos = 0
    last_key = ""
    while True:
        q = w.find(b'"', pos)
        if q - pos <= REGION_MIN:
            out.add(w.read(pos, q), pos)
        else:
            for text, at in _stretch(f, w, pos, q, last_key, nonce, regions):
                out.add(text, at)
        if q >= size:
            break
        # the string starting at q: find its closing quote (not escaped)
        e = q + 1
        while True:
            e = w.find(b'"', e)
            if e >= size:
                raise Unclean()  # unterminated: the exact parser says so
            back = 0
            while w.read(e - back - 1, e - back) == b"\\":
                back += 1
            if back % 2 == 0:
                break
            e += 1
        text = w.read(q, e + 1)
        out.add(text, q)
        if b"\\" not in text:
            try:
                last_key = text[1:-1].decode("utf-8")
            except UnicodeDecodeError:
                last_key = ""
        pos = e + 1
    return b"".join(out.parts), regions, out.anchors


def _stretch(
    f: IO[bytes],
    w: _Window,
    pos: int,
    q: int,
    key: str,
    nonce: str,
    regions: dict[str, Region],
) -> list[tuple[bytes, int]]:
    """The skeleton's text for the file's bytes ``pos`` to ``q`` (more than
    :data:`REGION_MIN` of them, no string inside), as pieces and the offset in the file
    each stands for: ``:`` and a placeholder for a big list after a key (its region
    added to ``regions``) and what follows it, else the text; blank runs made one space.

    A list's end is its last ``]`` before only blanks, ``,`` and ``}`` when as many
    ``]`` end it as ``[`` begin it (as in every tensor; memory and time: those runs);
    otherwise it is found by walking the list's brackets (:func:`_walk`: a list inside
    a list, text after it), so that the skeleton holds exactly what the file holds
    around it. Raises :class:`Unclean` for a list with a problem in it (the caller
    locates it) and for anything else big."""
    colon, _ = w.skip(pos, q, _BLANK)
    start = w.skip(colon + 1, q, _BLANK)[0] if w.byte(colon) == b":" else q
    if w.byte(start) != b"[":
        text = w.strip(pos, q)
        if text is None:
            raise Unclean()
        return text
    _, opened = w.skip(start, q, _BLANK + b"[", b"[")
    last, _ = w.skip_back(q, start, _BLANK + b",}")
    _, closed = w.skip_back(last + 1, start, _BLANK + b"]", b"]")
    if w.byte(last) == b"]" and closed == opened:
        end = last + 1
    else:  # walk the list to its end
        found = _walk(f, Region(start, q, key), key, "")
        if isinstance(found, FormatError):
            raise Unclean(Region(start, q, key))
        end = found[1]
    trailer = w.strip(end, q)
    if trailer is None:
        raise Unclean(Region(start, q, key))
    if end - start <= REGION_MIN:  # a small list among long blanks
        return [(b":", colon), (w.read(start, end), start), *trailer]
    placeholder = f"\\u0000tl{nonce}:{len(regions)}"
    regions[f"\0tl{nonce}:{len(regions)}"] = Region(start, end, key)
    return [(b":", colon), (f'"{placeholder}"'.encode(), start), *trailer]


def read_region(
    f: IO[bytes],
    region: Region,
    dtype: np.dtype[Any],
    name: str,
    where: str,
    narrow: Callable[[np.ndarray[Any, Any], np.dtype[Any], str, str, int], np.ndarray[Any, Any]],
    ints: Callable[[list[Any], np.dtype[Any], str, str, int], np.ndarray[Any, Any]],
    scratch: Scratch | None = None,
) -> np.ndarray[Any, Any]:
    """The tensor in ``region`` as a read-only array of ``dtype`` over a ``bytes`` object
    of its own (a context adopts it without a copy).

    A float tensor is read in chunks of whole elements of its outer list
    (:func:`_read_elements`); one that is not (its elements are longer than
    :data:`CHUNK_MAX`, its lists many beside its numbers, or it is irregular) in one
    piece when it is at most :data:`WHOLE` blocks, else, like integers, a block at a time.
    ``narrow(float64 values, dtype, name, where, offset)`` rounds a block of numbers;
    ``ints(python ints, dtype, ...)`` makes integers exactly. ``scratch``: the
    parser and buffer to reuse (one per file: once grown, they serve every tensor,
    with no new pages to fault in). Anything irregular raises the FormatError
    :func:`locate_problem` gives. Cost: O(region) time; memory: the output twice while
    it is put together, a few blocks, and (a block at a time) one byte per element.
    """
    import orjson

    if scratch is None:
        scratch = Scratch()
    parser = scratch.parser
    if dtype.kind not in "iub":
        found = _read_elements(f, region, dtype, name, where, narrow, scratch)
        if found is None and region.end - region.start <= WHOLE * BLOCK:
            found = _read_whole(f, region, dtype, name, where, narrow, scratch)
        if found is not None:
            return found
    skeleton = bytearray()
    blocks: list[np.ndarray[Any, Any]] = []
    count = 0
    depth = 0  # lists open at the start of the block
    carry = b""
    at = region.start
    while at < region.end or carry:
        chunk = _read(f, at, min(at + BLOCK, region.end))
        at += len(chunk)
        text = carry + chunk
        last = at >= region.end
        if not last:
            cut = text.rfind(b",")
            if cut < 0:
                carry = text
                continue
            carry, text = text[cut + 1 :], text[:cut]
        else:
            carry = b""
        shape = text.translate(None, _NUMBER_AND_BLANK)
        skeleton += shape
        if not last:
            skeleton += b","
        opened, closed = shape.count(b"["), shape.count(b"]")
        try:
            if dtype.kind in "iub":
                values = orjson.loads(b"[" + text.translate(_BRACKETS_TO_BLANK) + b"]")
                if any(type(x) is not int for x in values):
                    raise ValueError
                block = ints(values, dtype, name, where, count)
            else:
                wide = _block_numbers(parser, text, depth, depth + opened - closed, b"[]" in shape)
                block = narrow(wide, dtype, name, where, count)
        except FormatError as e:  # a value out of range: after any problem of nesting,
            walked = _walk(f, region, name, where)  # as the whole-document reader says
            raise (walked if isinstance(walked, FormatError) else e) from None
        except Exception:
            raise locate_problem(f, region, name, where) from None
        depth += opened - closed
        blocks.append(block)
        count += block.size
    dims = skeleton_dims(bytes(skeleton), count)
    if dims is None:
        raise locate_problem(f, region, name, where)
    return _over_bytes(blocks, dims, dtype, name, where)


def _over_bytes(
    parts: list[np.ndarray[Any, Any]],
    dims: tuple[int, ...],
    dtype: np.dtype[Any],
    name: str,
    where: str,
) -> np.ndarray[Any, Any]:
    """The values of ``parts`` (flat arrays of ``dtype``, in order) as one read-only
    array of shape ``dims`` over a ``bytes`` object of its own, made with one copy: a
    context adopts such an array as it is (``Backend.adopt`` copies any other), so a
    big file's tensors are held once while the context is built, not twice. A 1-byte
    array gets a 2-byte buffer (CPython shares every 1-byte ``bytes``). More dims than
    numpy holds is a FormatError (the whole-document reader's)."""
    if len(dims) > MAX_DIMS:
        raise FormatError(
            f"{where}: tensor `{name}` is nested {len(dims)} lists deep; a tensor has at"
            f" most {MAX_DIMS} dimensions"
        )
    data = b"".join([p.data for p in parts])
    if len(data) == 1:
        data += b"\0"
    return np.ndarray(dims, dtype, data)


def _block_numbers(
    parser: Any, text: bytes, opened: int, open_after: int, has_empty: bool
) -> np.ndarray[Any, Any]:
    """The numbers of a block of a tensor's text as float64: ``opened`` lists open at
    its start, ``open_after`` at its end.

    The block goes to simdjson with its lists balanced; a block whose lists cannot be
    balanced so (a ``]`` too many, nesting deeper than simdjson takes, an empty list)
    goes with its brackets blanked, as one flat list: what that parses to is what the
    balanced text parses to whenever that one parses (blanking the brackets of JSON
    lists with no empty one leaves numbers separated by single commas)."""
    if open_after >= 0 and max(opened, open_after) <= 64 and not has_empty:
        try:
            parsed: Any = parser.parse(b"[" * opened + text + b"]" * open_after)
            wide = np.frombuffer(parsed.as_buffer(of_type="d"), np.float64)
            del parsed  # the parser is reused for the next block
            return wide
        except (ValueError, TypeError, RuntimeError, AttributeError):
            pass
    parsed = parser.parse(b"[" + text.translate(_BRACKETS_TO_BLANK) + b"]")
    wide = np.frombuffer(parsed.as_buffer(of_type="d"), np.float64)
    del parsed
    return wide


class Scratch:
    """What reading a file's tensors reuses from one tensor to the next: a simdjson
    parser, a buffer for a tensor's text (both grow to the biggest tensor read in one
    piece, at most :data:`WHOLE` blocks) and one for a chunk of it."""

    def __init__(self) -> None:
        import simdjson

        self.parser = simdjson.Parser()
        self.buffer = bytearray()
        self.chunk = bytearray()

    def window(self, n: int) -> memoryview:
        """The chunk buffer, at least ``n`` bytes, as a memoryview."""
        if len(self.chunk) < n:
            self.chunk = bytearray(n)
        return memoryview(self.chunk)

    def read(self, f: IO[bytes], start: int, end: int) -> memoryview:
        """Bytes ``start`` to ``end`` of ``f``, in the buffer (valid until the next read);
        shorter if the file is."""
        n = end - start
        if len(self.buffer) < n:
            self.buffer = bytearray(n)
        view = memoryview(self.buffer)[:n]
        got = 0
        while got < n:
            k = os.preadv(f.fileno(), [view[got:]], start + got)
            if not k:
                break
            got += k
        return view[:got]


def _read_whole(
    f: IO[bytes],
    region: Region,
    dtype: np.dtype[Any],
    name: str,
    where: str,
    narrow: Callable[[np.ndarray[Any, Any], np.dtype[Any], str, str, int], np.ndarray[Any, Any]],
    scratch: Scratch,
) -> np.ndarray[Any, Any] | None:
    """The float tensor in ``region`` parsed in one piece, or ``None`` when that is not
    the way to read it: too many numbers for its size (simdjson's memory), not a clean
    regular array (the block reader then reads it, or says what is wrong, as always).
    A FormatError from ``narrow`` (a value out of range) is raised: the block reader
    would raise the same one, with the same index."""
    text = scratch.read(f, region.start, region.end)
    commas, opens = count_bytes(text, b",[")
    if commas * WHOLE_BYTES_PER_NUMBER > len(text):
        return None
    parsed: Any = None
    try:
        parsed = scratch.parser.parse(text)
        wide = np.frombuffer(parsed.as_buffer(of_type="d"), np.float64)
        dims = array_dims(parsed, wide.size, opens, len(text))
    except (ValueError, TypeError, RuntimeError, AttributeError):
        return None
    finally:
        parsed = None  # the parser is reused
    if dims is None:
        dims = skeleton_dims(bytes(text).translate(None, _NUMBER_AND_BLANK), wide.size)
        if dims is None:
            return None
    return _over_bytes([narrow(wide, dtype, name, where, 0)], dims, dtype, name, where)


def _read_elements(
    f: IO[bytes],
    region: Region,
    dtype: np.dtype[Any],
    name: str,
    where: str,
    narrow: Callable[[np.ndarray[Any, Any], np.dtype[Any], str, str, int], np.ndarray[Any, Any]],
    scratch: Scratch,
) -> np.ndarray[Any, Any] | None:
    """The float tensor in ``region`` parsed a chunk of about :data:`CHUNK` bytes at a
    time, or ``None`` when it is not read this way (the other readers then read it, and
    say what is wrong: this one never raises).

    A chunk is a run of whole elements of the outer list, cut at the comma after an
    element: the text that ends one (``]`` once less than the lists nest, then ``,``)
    is learned from the first and found from the end of the chunk's window. The chunk
    goes to simdjson as ``[`` + chunk + ``]`` (the two bytes written around it in the
    buffer, no copy) and must parse to a regular array of numbers ``(n, *rest)``
    (:func:`~._json_fast.array_dims`, its ``[`` counted) with the same ``rest`` for
    every chunk. The tensor's text is those chunks joined by commas inside its
    brackets, so it is then the regular array ``(sum of n, *rest)`` of their numbers,
    wherever the cuts fell. The text, simdjson's tape and the numbers of a chunk stay
    in the processor's cache; memory: the output, twice while it is joined."""
    view = scratch.window(CHUNK_MAX + 2)
    buffer = scratch.chunk
    fd = f.fileno()
    at, stop = region.start + 1, region.end - 1  # inside the outer brackets
    closer = b""  # learned from the first element that ends in a window
    window = CHUNK
    parts: list[np.ndarray[Any, Any]] = []
    rows = 0
    rest: tuple[int, ...] | None = None
    while at < stop:
        want = min(window, stop - at)
        if _pread_into(fd, view[1 : 1 + want], at) != want:
            return None  # the file changed under us
        cut = 1 + want
        if at + want < stop:
            if not closer:
                closer = _learn_closer(buffer, cut)
            found = buffer.rfind(closer, 1, cut) if closer else -1
            if found < 0:  # no element ends in the window: widen it
                if window >= CHUNK_MAX:
                    return None
                window = min(2 * window, CHUNK_MAX)
                continue
            cut = found + len(closer) - 1  # the comma
        buffer[0], buffer[cut] = 0x5B, 0x5D  # "[" chunk "]"
        text = view[: cut + 1]
        opens = _count_opens(buffer, cut + 1)
        if opens * _json_fast.BYTES_PER_LIST > max(cut, CHUNK):
            return None  # lists too many to walk in Python: the skeleton decides
        parsed: Any = None
        try:
            parsed = scratch.parser.parse(text)
            wide = np.frombuffer(parsed.as_buffer(of_type="d"), np.float64)
            dims = array_dims(parsed, wide.size, opens, None)
        except (ValueError, TypeError, RuntimeError, AttributeError):
            return None
        finally:
            parsed = None  # the parser is reused
        if dims is None or (rest is not None and dims[1:] != rest):
            return None
        rest = dims[1:]
        try:
            parts.append(narrow(wide, dtype, name, where, rows * math.prod(rest)))
        except FormatError:
            return None  # out of range: the other readers say where, as always
        rows += dims[0]
        at += cut  # past the comma
        window = CHUNK
    if rest is None or 1 + len(rest) > MAX_DIMS:
        return None
    return _over_bytes(parts, (rows, *rest), dtype, name, where)


def _count_opens(buffer: bytearray, end: int) -> int:
    """How many ``[`` ``buffer[:end]`` holds: found one by one while they are few (a
    matrix's rows: memchr speed, three times numpy's count), else counted by numpy."""
    n = 0
    i = buffer.find(b"[", 0, end)
    while i >= 0:
        n += 1
        if n > 64:
            return int(np.count_nonzero(np.frombuffer(buffer, np.uint8, end) == 0x5B))
        i = buffer.find(b"[", i + 1, end)
    return n


def _learn_closer(buffer: bytearray, end: int) -> bytes:
    """The text that closes the first element of the outer list whose text starts at
    ``buffer[1]`` and is followed by a comma (``b","`` when its elements are numbers),
    or ``b""`` when ``buffer[1:end]`` holds none."""
    opening = _OPENING.match(buffer, 1, end)
    depth = opening.group().count(b"[") if opening else 0
    if depth == 0:
        return b","
    found = re.compile(rb"\]" + rb"\s*\]" * (depth - 1) + rb"\s*,").search(buffer, 1, end)
    return found.group() if found else b""


_STRUCTURE: Final = re.compile(rb"[\[\]]|[^\[\],0-9.eE+\-\s]")


def _index(path: list[int] | tuple[int, ...]) -> str:
    if len(path) > 12:
        return f"{_index(path[:4])}...({len(path) - 8} more)...{_index(path[-4:])}"
    return "".join(f"[{i}]" for i in path)


def locate_problem(f: IO[bytes], region: Region, name: str, where: str) -> FormatError:
    """The first problem in the tensor whose text starts at ``region.start``: a
    non-numeric leaf or ragged nesting, with its index. Walks only brackets and
    non-numeric characters (commas are counted in C), so memory is O(nesting depth)
    whatever the tensor's size."""
    found = _walk(f, region, name, where)
    if isinstance(found, FormatError):
        return found
    return FormatError(
        f"{where}: tensor `{name}` is not a regular array of numbers"
        f" (a malformed number, or text after it at byte {found[1]})"
    )


def describe(f: IO[bytes], region: Region) -> str:
    """A short description of the list in ``region`` for a message, where the
    whole-document reader shows the value: ``<list of shape (1100, 1024)>``, or its size
    in bytes when it is not a regular array. Walks the list as :func:`locate_problem`
    does: O(region) time, O(nesting depth) memory."""
    found = _walk(f, region, "", "")
    if isinstance(found, FormatError) or found[1] != region.end:
        return f"<list of {region.end - region.start} bytes, not a regular array of numbers>"
    return f"<list of shape {found[0]}>"


def small_value(f: IO[bytes], region: Region) -> Any:
    """The JSON value in ``region`` when its text, each run of blanks made one space,
    is at most :data:`REGION_MIN` bytes and parses, else ``None``. Memory: that text."""
    import orjson

    out: list[bytes] = []
    n = 0
    for at in range(region.start, region.end, REGION_MIN):
        piece = _BLANKS.sub(b" ", _read(f, at, min(at + REGION_MIN, region.end)))
        n += len(piece)
        if n > REGION_MIN:
            return None
        out.append(piece)
    try:
        return orjson.loads(b"".join(out))
    except orjson.JSONDecodeError:
        return None


class Streamed:
    """What a placeholder of the skeleton stands for once the skeleton is parsed: the
    big list in ``region``, read later. Its ``description`` (:func:`describe`, computed
    when first asked for, while the file is open) stands for the value in messages."""

    def __init__(self, f: IO[bytes], region: Region) -> None:
        self.f = f
        self.region = region
        self._description: str | None = None

    @property
    def description(self) -> str:
        if self._description is None:
            self._description = describe(self.f, self.region)
        return self._description

    def __repr__(self) -> str:
        return self.description


def _walk(
    f: IO[bytes], region: Region, name: str, where: str
) -> FormatError | tuple[tuple[int, ...], int]:
    """The walk of :func:`locate_problem`: its FormatError, or, when the list closes
    with no problem found, its shape and the offset after its ``]``."""
    path: list[int] = []  # the index at each open list
    nonempty: list[bool] = []
    first_len: dict[int, int] = {}
    leaf_depth: int | None = None
    at = region.start
    f.seek(0, 2)
    size = f.tell()

    def ragged(message: str) -> FormatError:
        return FormatError(f"{where}: tensor `{name}` has ragged nesting: {message}")

    def numbers(run: bytes) -> FormatError | None:
        """Count the commas of ``run`` (text between brackets, in the innermost open
        list); a problem when it holds a number where the first element has a list."""
        nonlocal leaf_depth
        if run.translate(None, _BLANK + b","):  # a number
            nonempty[-1] = True
            if leaf_depth is None:
                leaf_depth = len(path)
            elif leaf_depth != len(path):
                first = len(run) - len(run.lstrip(_BLANK + b","))
                here = [*path[:-1], path[-1] + run.count(b",", 0, first)]
                return ragged(
                    f"a number at {_index(here)} where the first element's nesting has a list"
                )
        path[-1] += run.count(b",")
        return None

    while at < size:
        block = _read(f, at, min(at + BLOCK, size))
        prev = 0
        for m in _STRUCTURE.finditer(block):
            p = m.start()
            if path:
                problem = numbers(block[prev:p])
                if problem is not None:
                    return problem
            c = block[p : p + 1]
            if c == b"[":
                if path:
                    nonempty[-1] = True
                    if leaf_depth is not None and len(path) >= leaf_depth:
                        return ragged(
                            f"a list at {_index(path)} where the first element's nesting"
                            " has a number"
                        )
                path.append(0)
                nonempty.append(False)
            elif c == b"]":
                if not path:
                    break
                n = path[-1] + 1 if nonempty[-1] else 0
                depth = len(path) - 1
                want = first_len.setdefault(depth, n)
                if n != want:
                    here = path[:-1]
                    return ragged(
                        f"{_index(here)} has {n} elements but {_index([0] * len(here))} has {want}"
                    )
                path.pop()
                nonempty.pop()
                if not path:
                    deepest = leaf_depth if leaf_depth is not None else len(first_len)
                    return tuple(first_len[d] for d in range(deepest)), at + p + 1
            else:
                leaf = _read(f, at + p, at + p + 40)
                stop = min((i for i in (leaf.find(b","), leaf.find(b"]")) if i >= 0), default=40)
                shown = leaf[:stop].decode("utf-8", "replace").strip()
                return FormatError(
                    f"{where}: tensor `{name}` has a non-numeric leaf at"
                    f" {_index(path) or 'the top'}: {shown}"
                )
            prev = p + 1
        if path:
            problem = numbers(block[prev:])
            if problem is not None:
                return problem
        at += len(block)
    return FormatError(f"{where}: tensor `{name}` is truncated (the file ends inside it)")


# ---------------------------------------------------------------------------- writing


def tensor_pieces(
    a: np.ndarray[Any, Any], text: Callable[[np.ndarray[Any, Any], int], bytes]
) -> Iterator[bytes | memoryview]:
    """The JSON text of ``a`` (ndim >= 1, size > 0) in pieces: ``text(block, offset)``
    writes a block of whole rows (``offset``: its first element's flat index) as a
    nested list; pieces hold at most :data:`PIECE` elements unless one innermost row is
    longer. Cost: O(a.size)."""

    def inner(text: bytes) -> memoryview:
        return memoryview(text)[1:-1]  # a list's items, with no copy

    def walk(sub: np.ndarray[Any, Any], offset: int) -> Iterator[bytes | memoryview]:
        if sub.size <= PIECE or sub.ndim == 1:
            if sub.ndim == 1 and sub.size > PIECE:
                yield b"["
                for i in range(0, sub.size, PIECE):
                    if i:
                        yield b","
                    yield inner(text(sub[i : i + PIECE], offset + i))
                yield b"]"
            else:
                yield text(sub, offset)
            return
        row = math.prod(sub.shape[1:])
        yield b"["
        if row <= PIECE:
            k = max(1, PIECE // row)
            for i in range(0, sub.shape[0], k):
                if i:
                    yield b","
                yield inner(text(sub[i : i + k], offset + i * row))
        else:
            for i in range(sub.shape[0]):
                if i:
                    yield b","
                yield from walk(sub[i], offset + i * row)
        yield b"]"

    yield from walk(a, 0)
