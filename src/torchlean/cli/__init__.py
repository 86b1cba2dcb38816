"""The ``torchlean`` command (``torchlean show|convert|check|diff|demo``).

Reading map:
- :func:`main` -- ``main(argv) -> int`` (:mod:`torchlean.cli._main`).
- The subcommands: :mod:`torchlean.cli._commands`; file access: :mod:`torchlean.cli._files`.
"""

from torchlean.cli._main import main as main

__all__ = ["main"]
