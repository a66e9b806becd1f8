"""``python -m loadtest`` (the same as ``seats loadtest``)."""

import sys

from loadtest.cli import main

sys.exit(main())
