"""Argument-parsing pieces shared by the commands: parser class, value types, device, threads."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any, Callable, Optional

from .errors import ParserError, UsageError

__all__ = [
    "Parser", "Formatter", "positive_int", "nonnegative_int", "positive_float", "nonnegative_float",
    "diffusion_time", "device", "progress", "common_options", "timestamped",
]


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors return to :func:`ebmcompose.cli.main` instead of exiting."""

    def error(self, message):  # noqa: D401 (argparse API)
        raise ParserError(self.prog, message)


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the descriptions' and examples' line breaks."""


def _checked(cast: Callable, ok: Callable[[float], bool], expected: str) -> Callable[[str], Any]:
    """An argparse ``type``: ``cast(text)``, then ``ok(value)``, else "expected ``expected``"."""

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not (math.isfinite(value) and ok(value)):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value

    parse.__name__ = expected  # argparse names the type in its messages
    return parse


positive_int = _checked(int, lambda v: v > 0, "a positive integer")
nonnegative_int = _checked(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _checked(float, lambda v: v > 0, "a positive, finite number")
nonnegative_float = _checked(float, lambda v: v >= 0, "a finite number >= 0")
diffusion_time = _checked(float, lambda v: 0.0 < v <= 1.0, "a diffusion time in (0, 1]")


def device(name: str) -> str:
    """Check a ``--device`` value against this machine; returns it unchanged."""
    import torch

    if name == "cpu":
        return name
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(
                f"--device {name} was requested but this machine has no CUDA GPU that torch can use "
                f"(torch {torch.__version__}). Run with --device cpu, or install a CUDA build of torch "
                "on a machine with an NVIDIA GPU."
            )
        if ":" in name:
            try:
                index = int(name.split(":", 1)[1])
            except ValueError:
                raise UsageError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
            count = torch.cuda.device_count()
            if not 0 <= index < count:
                raise UsageError(
                    f"--device {name}: this machine has {count} CUDA device(s) (cuda:0 to "
                    f"cuda:{count - 1}); pick one of those or --device cuda"
                )
        return name
    raise UsageError(f"unknown device {name!r}; use cpu or cuda (cuda:N for a specific GPU)")


def progress(flag: Optional[bool]) -> bool:
    """``--progress`` / ``--no-progress``; by default a bar only on an interactive terminal."""
    if flag is not None:
        return flag
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def common_options() -> argparse.ArgumentParser:
    """Options every subcommand accepts after its name too (``ebmcompose sample ... --debug``)."""
    c = Parser(add_help=False)
    c.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show Python tracebacks for errors")
    return c


def timestamped(prefix: str) -> str:
    """A new folder name ``<prefix>-<date>-<time>`` (the default ``--out`` of long runs)."""
    import time

    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
