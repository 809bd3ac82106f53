"""The ``ebmcompose`` parser and :func:`main`: commands, error reporting, exit statuses.

A command is a module with ``add_parser(subparsers)`` that registers its subparser and sets
``func`` (``func(args) -> int``); :data:`COMMANDS` lists them in help order.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import List, Optional

from . import bench, demo, sample, scenes, t2i, train
from .errors import ParserError, UsageError
from .options import Formatter, Parser, positive_int

__all__ = ["COMMANDS", "build_parser", "main"]

#: ``add_parser`` of every command, in help order.
COMMANDS = (
    demo.add_parser,
    sample.add_parser,
    train.add_parser,
    bench.add_parser,
    scenes.add_parser,
    t2i.add_parser,
    # A new command adds its module to the `from . import ...` line above and one line here.
)


def build_parser() -> argparse.ArgumentParser:
    """The ``ebmcompose`` parser with every command of :data:`COMMANDS`."""
    p = Parser(
        prog="ebmcompose",
        formatter_class=Formatter,
        description=(
            "Compositional generation with energy-based models. Energies (analytic densities, "
            "learned diffusion models) compose with AND / NOT / OR, and interchangeable samplers "
            "(reverse diffusion, annealed Langevin, ULA, MALA, HMC, predictor-corrector) draw from "
            "the composition. Start with `ebmcompose demo`."
        ),
        epilog=(
            "examples:\n"
            "  ebmcompose demo --out demo-output\n"
            "  ebmcompose sample --task product --sampler pc-mala --out product-pc\n"
            "  ebmcompose train --tasks product --quick --out my-checkpoints\n"
            "  ebmcompose bench speed --quick --out speed-quick\n"
            "  ebmcompose t2i --pipeline SD_FOLDER --prompt \"a red cube AND NOT a table\" --out cubes\n"
            "Run `ebmcompose COMMAND --help` for what each command writes."
        ),
    )
    p.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    p.add_argument(
        "--threads", type=positive_int, default=1,
        help="torch CPU threads (default: %(default)s; the toy tasks are small tensors, where "
        "extra threads only contend and run several times slower on a busy machine)",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for add in COMMANDS:
        add(sub)
    return p


def _user_errors() -> tuple:
    """The exception classes that are the user's to fix: reported in one paragraph, exit status 2."""
    import ebmcompose as ec

    return (UsageError, ec.InputError)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``ebmcompose`` console script and ``python -m ebmcompose``.

    Returns
    -------
    int
        0 on success; 2 for a user error (one paragraph on stderr: a bad option or value, an
        :class:`ebmcompose.InputError`, a missing input file, an unusable ``--out``); 130 on
        Ctrl-C; 1 for anything else, which is a bug and prints its traceback. ``--debug``
        raises every error with its traceback instead.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except ParserError as exc:
        print(f"{exc.prog}: error: {exc}\nRun `{exc.prog} --help` for the options and examples.", file=sys.stderr)
        return 2
    if args.command is None:
        parser.print_help()
        return 2
    import torch

    torch.set_num_threads(args.threads)
    command = "ebmcompose " + args.command + (f" {args.benchmark}" if getattr(args, "benchmark", None) else "")
    debug = bool(getattr(args, "debug", False))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{command}: interrupted; nothing was written", file=sys.stderr)
        return 130
    except _user_errors() as exc:
        if debug:
            raise
        print(f"{command}: error: {exc}".rstrip(), file=sys.stderr)
        return 2
    except Exception:
        if debug:
            raise
        traceback.print_exc()
        print(f"{command}: internal error (a bug in ebmcompose, not in your input): please report it with "
              "the traceback above.", file=sys.stderr)
        return 1
