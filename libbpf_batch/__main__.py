"""`python -m libbpf_batch`: the libbpf-batch command."""

import sys

from .cli import main

sys.exit(main())
