"""``python -m ribnode.ledger.migrations``: see the package docstring."""

import sys

from ribnode.ledger.migrations import _main

sys.exit(_main(sys.argv[1:]))
