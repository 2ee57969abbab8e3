"""``python -m reidkit`` = the ``reidkit`` command (see ``reidkit.cli``)."""

import sys

from reidkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
