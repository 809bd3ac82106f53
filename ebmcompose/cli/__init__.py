"""The ``ebmcompose`` command line (console script ``ebmcompose``, or ``python -m ebmcompose``).

Commands::

    ebmcompose demo   --out demo-output                         # the main job (demo.py)
    ebmcompose sample --task product --sampler pc-mala --out s   # one composition, one sampler
    ebmcompose sample --expr "ring AND NOT 0.5*bar" --sampler mala
    ebmcompose train  --tasks product --quick --out ckpt         # toy checkpoints (train.py)
    ebmcompose bench  speed --quick --out speed-quick            # benchmarks/ of a source checkout
    ebmcompose bench  composition --quick

This is the only part of ``ebmcompose`` that uses ``samplers`` and ``toy``, and it imports them
inside functions only, so ``import ebmcompose`` (and ``import ebmcompose.cli``) never does.
Modules: ``app`` (parser, :func:`main`, error reporting), one module per command, ``experiments``
(targets, samplers, metrics shared with the benchmark scripts), ``outputs`` (output folders that
never lose a user's files), ``options`` and ``errors``.
"""

from .app import build_parser, main
from .errors import OutputError, UsageError

__all__ = ["main", "build_parser", "UsageError", "OutputError"]
