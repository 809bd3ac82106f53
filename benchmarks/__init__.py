"""Benchmark scripts of the source checkout (not installed): ``python -m benchmarks.X`` from the root.

``sampler_speed`` (speed against hand-written loops), ``composition_2d`` with
``composition_tasks`` and ``composition_report`` (sampler accuracy at matched NFE), ``train_toy``
(the shipped checkpoints) and ``cli`` (kept as ``python -m benchmarks.cli``; the command line is
:mod:`ebmcompose.cli`). They may import everything; the shared experiment logic is
:mod:`ebmcompose.cli.experiments`. Results live in ``benchmarks/results/``.
"""
