"""``python -m ribnode.node.migrations``: see the package docstring."""

import sys

from ribnode.node.migrations import _main

sys.exit(_main(sys.argv[1:]))
