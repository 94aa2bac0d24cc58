"""``python -m bench`` from the repository root: the benchmark (``make bench``)."""

import sys

from .runner import main

sys.exit(main())
