"""``ebmcompose bench speed|composition``: run the benchmark scripts of a source checkout.

The benchmarks are scripts in the repository's ``benchmarks/`` folder (``python -m
benchmarks.sampler_speed``, ``python -m benchmarks.composition_2d``), not part of the installed
package; this command loads them from the checkout that this ``ebmcompose`` comes from (an
editable install or a run from the repository root) and says so clearly elsewhere. Their files
are staged and moved into ``--out`` (a new folder by default) when the run succeeded; the
committed ``benchmarks/results/`` is written only when given explicitly, and never by ``--quick``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import List, Optional

from .errors import OutputError, UsageError
from .options import Formatter, Parser, common_options, device, positive_int, timestamped
from .outputs import staged_output, writable_base

__all__ = ["add_parser", "checkout_root", "benchmark_module"]

#: Where a source checkout would hold ``benchmarks/`` (the folder above the ``ebmcompose`` package).
SOURCE_ROOT = Path(__file__).resolve().parents[2]

DESCRIPTION = """\
Run a benchmark script of the source checkout (benchmarks/ beside the ebmcompose package).

  speed        chain-steps per second of ULA, MALA and HMC against hand-written torch loops
               (benchmarks/sampler_speed.py); writes sampler_speed.json and .md.
  composition  sampler accuracy at matched NFE on the 2-D composition tasks
               (benchmarks/composition_2d.py); writes composition_2d.json, composition_2d.md
               and composition_2d_<task>.png.

Each writes into --out (default: a new folder speed-<date>-<time> / composition-<date>-<time>);
other files there are kept. The committed benchmarks/results/ is replaced only when given as
--out explicitly, and a --quick run never writes there.
"""


class BenchmarkFailed(Exception):
    """The benchmark script returned a non-zero status (its own message is already printed)."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


def add_parser(subparsers) -> None:
    """Register ``bench`` with its ``speed`` and ``composition`` subcommands (sets ``func``)."""
    common = common_options()
    b = subparsers.add_parser(
        "bench", parents=[common], formatter_class=Formatter, description=DESCRIPTION,
        help="run a benchmark: speed or composition",
        epilog="examples:\n  ebmcompose bench speed --quick --out speed-quick\n  ebmcompose bench composition --quick",
    )
    b.set_defaults(func=_no_benchmark)
    bsub = b.add_subparsers(dest="benchmark", metavar="BENCHMARK", parser_class=Parser)
    bs = bsub.add_parser(
        "speed", parents=[common], formatter_class=Formatter,
        help="sampler speed against hand-written loops (benchmarks/sampler_speed.py)",
        description=(
            "Chain-steps per second of ULA, MALA and HMC against minimal hand-written torch loops on\n"
            "the 8-Gaussian ring (benchmarks/sampler_speed.py of the source checkout). Writes\n"
            "OUT/sampler_speed.json and OUT/sampler_speed.md (sampler_speed_cuda.* with --device cuda)\n"
            "and prints the table. The default OUT is a new folder speed-<date>-<time>; the committed\n"
            "results are replaced only with an explicit --out benchmarks/results (never with --quick).\n"
            "A full run takes about 12 minutes on a 2-core CPU; --quick about two."
        ),
        epilog="example:\n  ebmcompose bench speed --quick --no-compile --out speed-quick",
    )
    bs.add_argument("--quick", action="store_true", help="short run (N up to 1e4, fewer steps)")
    bs.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    bs.add_argument(
        "--repeats", type=positive_int, default=None,
        help="timed pairs per row, median reported (default: the script's, 9; 41 short ones at N = 100; 3 with --quick)",
    )
    bs.add_argument(
        "--processes", type=positive_int, default=None,
        help="fresh processes the eager CPU rows at N >= 1e4 pool their pairs from (default: the script's, 6; 2 with --quick)",
    )
    bs.add_argument(
        "--thread-counts", type=_thread_list, default="1,0",
        help="comma-separated torch thread counts, one table each; 0 = all CPUs (default: %(default)s)",
    )
    bs.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile rows")
    bs.add_argument("--out", help="output folder (default: a new folder speed-<date>-<time>)")
    bs.add_argument("--no-write", dest="write", action="store_false", help="print only; write no files")
    bs.set_defaults(func=_speed)
    bc = bsub.add_parser(
        "composition", parents=[common], formatter_class=Formatter,
        help="sampler accuracy on the 2-D composition tasks (benchmarks/composition_2d.py)",
        description=(
            "Sampler accuracy at matched NFE on the 2-D composition tasks (benchmarks/composition_2d.py\n"
            "of the source checkout): DDPM, DDIM, annealed Langevin and PC + ULA/MALA/HMC on exact and\n"
            "learned models, against exact answers. Writes OUT/composition_2d.json, composition_2d.md and\n"
            "composition_2d_<task>.png. The default OUT is a new folder composition-<date>-<time>; the\n"
            "committed results are replaced only with an explicit --out benchmarks/results (never with\n"
            "--quick). Arguments after `--` are passed to the script unchanged (its options but --out)."
        ),
        epilog=(
            "examples:\n  ebmcompose bench composition --quick\n"
            "  ebmcompose bench composition --quick --out results/c2d -- --tasks product\n"
            "  ebmcompose bench composition -- --help"
        ),
    )
    bc.add_argument("--quick", action="store_true", help="a short run")
    bc.add_argument("--device", default=None, help="cpu or cuda (default: the benchmark's own)")
    bc.add_argument("--out", help="output folder (default: a new folder composition-<date>-<time>)")
    bc.add_argument("extra", nargs="*", help="more arguments for benchmarks/composition_2d.py (after --)")
    bc.set_defaults(func=_composition)


def _thread_list(text: str) -> str:
    """Validate ``--thread-counts`` (``"1,0"``) here, so a typo is a usage error before anything runs."""
    parts = [p.strip() for p in text.split(",")]
    if not parts or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated thread counts such as 1,2 (0 = all CPUs), got {text!r}")
    return ",".join(parts)


def checkout_root() -> Path:
    """The source checkout holding ``benchmarks/``, or a :class:`UsageError` that says where to get one."""
    if (SOURCE_ROOT / "benchmarks" / "__init__.py").is_file():
        return SOURCE_ROOT
    raise UsageError(
        f"`ebmcompose bench` runs the benchmark scripts in the benchmarks/ folder of a source checkout, but "
        f"this ebmcompose is installed from {SOURCE_ROOT / 'ebmcompose'} with no benchmarks/ beside it. Clone "
        "the repository and run it there (`bash .ci/env.sh ebmcompose bench ...` installs it editable), or run "
        "`python -m benchmarks.sampler_speed` / `python -m benchmarks.composition_2d` from the clone's root."
    )


def benchmark_module(name: str):
    """Import ``benchmarks.<name>`` from the source checkout (never a same-named installed package)."""
    root = checkout_root() / "benchmarks"
    pkg = sys.modules.get("benchmarks")
    if pkg is None:
        spec = importlib.util.spec_from_file_location(
            "benchmarks", root / "__init__.py", submodule_search_locations=[str(root)]
        )
        pkg = importlib.util.module_from_spec(spec)
        sys.modules["benchmarks"] = pkg
        spec.loader.exec_module(pkg)
    elif Path(getattr(pkg, "__file__", "") or "").resolve().parent != root.resolve():
        raise UsageError(
            f"a different module named `benchmarks` is already imported ({getattr(pkg, '__file__', pkg)}); "
            f"run `ebmcompose bench` in a fresh process, or `python -m benchmarks.{name}` from {root.parent}"
        )
    try:
        return importlib.import_module(f"benchmarks.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"benchmarks.{name}":
            raise
        raise UsageError(
            f"the benchmark benchmarks/{name}.py is not in this checkout ({root}). Update your checkout, or run "
            "the samplers on the tasks yourself with `ebmcompose demo` or `ebmcompose sample --task product`."
        ) from None


def _out_folder(args, prefix: str) -> Path:
    """``--out`` or a new timestamped folder; a ``--quick`` run may not target the committed results."""
    out = Path(args.out) if args.out else Path(timestamped(prefix))
    committed = SOURCE_ROOT / "benchmarks" / "results"
    if args.quick and out.expanduser().resolve() == committed.resolve():
        raise OutputError(
            f"--out {args.out}: a --quick run is a smoke test and never replaces the committed results in "
            f"{committed}; give another --out (or drop --quick for a full run)"
        )
    return out


def _run_script(module, argv: List[str], name: str) -> int:
    """``module.main(argv)`` as an exit status (an argparse error or ``sys.exit`` inside included)."""
    try:
        rc = module.main(argv)
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(f"ebmcompose bench {name}: {code}", file=sys.stderr)
        return 1
    return int(rc or 0)


def _staged_run(module, argv: List[str], out: Optional[Path], name: str) -> int:
    """Run the script with ``--out <staging>``; its files move into ``out`` only on success."""
    if out is None:
        return _run_script(module, argv, name)
    try:
        with staged_output(out, f"bench-{name}") as staging:
            rc = _run_script(module, argv + ["--out", str(staging)], name)
            if rc != 0:
                raise BenchmarkFailed(rc)
            files = sorted(p.name for p in staging.iterdir())
    except BenchmarkFailed as exc:
        return exc.status
    print(f"[bench {name}] wrote {out}/ ({', '.join(files) or 'no files'})")
    return 0


def _speed(args) -> int:
    dev = device(args.device)
    out = None
    if args.write:
        out = _out_folder(args, "speed")
        writable_base(out)  # fail before loading the benchmark
    module = benchmark_module("sampler_speed")
    argv = ["--device", dev, "--threads", args.thread_counts]
    for flag, value in (("--repeats", args.repeats), ("--processes", args.processes)):
        if value is not None:
            argv += [flag, str(value)]
    if args.quick:
        argv.append("--quick")
    if not args.compile:
        argv.append("--no-compile")
    if not args.write:
        argv.append("--no-write")
    return _staged_run(module, argv, out, "speed")


def _composition(args) -> int:
    if any(a == "--out" or a.startswith("--out=") for a in args.extra):
        raise UsageError("give --out before `--` (ebmcompose bench composition --out DIR -- ...), not after it")
    argv = list(args.extra)
    if args.quick:
        argv.insert(0, "--quick")
    if args.device is not None:
        argv[:0] = ["--device", device(args.device)]
    if any(a in ("-h", "--help") for a in argv):
        return _run_script(benchmark_module("composition_2d"), argv, "composition")
    out = _out_folder(args, "composition")
    writable_base(out)
    return _staged_run(benchmark_module("composition_2d"), argv, out, "composition")


def _no_benchmark(args) -> int:
    raise UsageError("choose a benchmark: `ebmcompose bench speed` or `ebmcompose bench composition` (see --help)")
