"""``python -m ebmcompose``: the ``ebmcompose`` command line."""

import sys

from ebmcompose.cli import main

sys.exit(main())
