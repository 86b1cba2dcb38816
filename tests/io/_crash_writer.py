"""A writer process for tests/io/test_crash.py (not a test module).

It imports the library once, then reads commands on stdin, one per line:
``save PATH K N`` forks a child that saves the context of value K to PATH N times
(forever when N is 0) and prints the child's pid; ``time PATH`` prints the seconds one
save takes. Children are reaped automatically (SIGCHLD is ignored).
"""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np

import torchlean.io as tio
from torchlean import RuntimeContext, empty_context

TENSORS = 8
SIZE = 1 << 17  # 8 tensors of 128 Ki float32: 4 MiB


def context(k: int) -> RuntimeContext[np.ndarray]:
    ctx = empty_context()
    for i in range(TENSORS):
        ctx = ctx.register_variable(f"layer{i}.weight", np.full(SIZE, k + i, np.float32))
    return ctx


def main() -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "time":
            ctx = context(0)
            start = time.perf_counter()
            tio.save(ctx, args[0])
            print(time.perf_counter() - start, flush=True)
            continue
        path, k, n = args[0], int(args[1]), int(args[2])
        ctx = context(k)
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            i = 0
            while n == 0 or i < n:
                tio.save(ctx, path)
                i += 1
            os._exit(0)
        print(pid, flush=True)


if __name__ == "__main__":
    main()
