"""``python -m ambit``: the ``ambit`` command (:mod:`ambit.cli`) where its entry point is
not installed, as in a checkout run with ``PYTHONPATH``."""

from __future__ import annotations

import sys

from ambit.cli import main

if __name__ == "__main__":
    sys.exit(main())
