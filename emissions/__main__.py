"""``python -m emissions``: the ``emissions`` command, without the console script."""

import sys

from emissions.cli import main

if __name__ == "__main__":
    sys.exit(main())
