"""The process's C allocator, held steady for benchmarks that interleave training loops.

glibc's malloc serves a large block from ``mmap`` until a block of that size is freed, then
raises its threshold and serves such blocks from the heap, whose top it gives back to the
system once more than twice that threshold is free. Which loop pays for the page faults of
the memory given back and touched again then depends on what ran before it in the process:
in ``bench/train_step.py --models`` on a 2-core CPU, whichever loop follows the other two
takes 200-1500 minor page faults a step (+5-15% on the BatchNorm CNN) and, run alone in
its own process, the ``nn.Module`` loop takes 2500-3500 a step. ``steady_malloc`` fixes
both thresholds (``mallopt``) so that no loop's time includes faults another loop caused;
``page_faults`` counts them, so a table can show that none were taken.

- ``steady_malloc()``: fix glibc's mmap and trim thresholds; returns what it did, for the
  table's header (nothing is changed where the C library is not glibc).
- ``page_faults()``: the process's minor page faults so far.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def steady_malloc() -> str:
    """Blocks up to 1 GiB from the heap, whose top is not given back (glibc's ``mallopt``)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        gnu = libc.gnu_get_libc_version()
    except (OSError, AttributeError, TypeError):
        return "C allocator left as it is (not glibc)"
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    ok = mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    version = gnu.decode() if gnu else "?"
    return (
        f"glibc {version} malloc held steady (mmap threshold 1 GiB, no trim)"
        if ok
        else f"glibc {version} refused mallopt: allocator left as it is"
    )


def page_faults() -> int:
    """Minor page faults of this process so far (``getrusage``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
