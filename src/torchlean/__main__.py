"""``python -m torchlean``: the ``torchlean`` command."""

import sys

from torchlean.cli import main

if __name__ == "__main__":
    sys.exit(main())
