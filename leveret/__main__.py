"""``python -m leveret``: the same as the ``leveret`` command."""

import sys

from leveret.cli import main

if __name__ == "__main__":
    sys.exit(main())
