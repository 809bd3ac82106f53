"""The top floor: the command line, the demo, experiments and speed benchmarks.

May import everything (``ebmcompose``, ``samplers``, ``toy``); nothing imports it.
"""
