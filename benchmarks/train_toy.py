"""Regenerate the shipped toy checkpoints (``toy/checkpoints/``) deterministically.

    python -m benchmarks.train_toy --out toy/checkpoints [--tasks product mixture] [--quick]

The same as ``ebmcompose --threads 1 train --out toy/checkpoints`` (:mod:`ebmcompose.cli.train`:
settings, the quality check, the files), with the shipped folder as the default ``--out``.
torch runs single-threaded (``--threads 1``) so that the weights do not depend on the machine.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from ebmcompose.cli import main as cli_main
from ebmcompose.cli.train import QUICK_ITERS


def main(argv: Optional[List[str]] = None) -> int:
    """Parse the script's options and run ``ebmcompose train``; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="toy/checkpoints", help="output folder (default toy/checkpoints)")
    p.add_argument("--tasks", nargs="+", default=None, help="tasks to train (default: all)")
    p.add_argument("--parameterisations", nargs="+", default=["epsilon", "energy"], choices=["epsilon", "energy"])
    p.add_argument("--quick", action="store_true", help=f"{QUICK_ITERS} iterations (smoke test, poor models)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: machine-independent weights)")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    args = p.parse_args(argv)
    cmd = ["--threads", str(args.threads), "train", "--out", args.out, "--seed", str(args.seed),
           "--parameterisations", *args.parameterisations, "--progress" if args.progress else "--no-progress"]
    if args.tasks:
        cmd += ["--tasks", *args.tasks]
    if args.quick:
        cmd.append("--quick")
    return cli_main(cmd)


if __name__ == "__main__":
    sys.exit(main())
