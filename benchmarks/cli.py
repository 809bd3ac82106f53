"""Kept so that ``python -m benchmarks.cli`` still works: the CLI is :mod:`ebmcompose.cli`."""
import sys

from ebmcompose.cli import main

if __name__ == "__main__":
    sys.exit(main())
