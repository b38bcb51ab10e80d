import sys

from ribnode.cli import main

sys.exit(main())
