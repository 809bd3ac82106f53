"""One :mod:`benchmarks.sampler_speed` row's timed pairs, measured in fresh processes and pooled.

A process's ratio of library to hand-loop time carries a bias of its own, from where its memory
lands (the same eager row at N = 1e4 ranged over about ±6 % between processes, more than the
spread within one). Spreading a row's pairs over several processes and pooling them measures the
code rather than one process's luck.

:func:`median_se` gives such a pooled median a standard error that resamples the processes, so the
bias they do not share counts in it.

A child runs ``python -m benchmarks.speed_processes SPEC`` (``SPEC``: the row as JSON) in this
process's environment (the steady allocator included) and prints ``{"steps", "pairs"}`` as JSON.
"""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pairs_in_processes(spec: dict, processes: int):
    """``(steps, groups)``: ``processes`` children each time ``spec["repeats"]`` pairs of the row
    ``spec``; ``groups`` holds one list of pairs per child (the pairs of one process share its bias).

    ``spec``: ``name``, ``n``, ``compiled``, ``layout``, ``device``, ``quick``, ``repeats``, ``threads``
    (:func:`benchmarks.sampler_speed.time_pairs`). Raises ``RuntimeError`` with the child's error
    when one fails.
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(v for v in (str(ROOT), os.environ.get("PYTHONPATH")) if v))
    steps, groups = None, []
    for _ in range(processes):
        done = subprocess.run([sys.executable, "-m", "benchmarks.speed_processes", json.dumps(spec)],
                              capture_output=True, text=True, env=env, cwd=ROOT)
        if done.returncode != 0:
            raise RuntimeError(f"timing {spec['name']} at N = {spec['n']} in a child process failed:\n"
                               + done.stderr.strip()[-2000:])
        out = json.loads(done.stdout.strip().splitlines()[-1])
        steps = out["steps"]
        groups.append([tuple(tuple(t) for t in p) for p in out["pairs"]])
    return steps, groups


def median_se(values, groups=None, draws=2000):
    """Standard error of the median of ``values`` (normal approximation from the interquartile range).

    With ``groups`` (the values' group sizes, in order: the pairs timed in one process share that
    process's bias), the standard deviation of the pooled median over ``draws`` resamplings of the
    groups with replacement (a cluster bootstrap with a fixed seed), so a shared bias counts in it.
    """
    if groups is not None and sum(groups) != len(values):
        raise ValueError(f"groups of sizes {list(groups)} do not cover the {len(values)} values")
    if groups and len(groups) > 1:
        starts = [sum(groups[:i]) for i in range(len(groups))]
        blocks = [values[a:a + k] for a, k in zip(starts, groups)]
        rng = random.Random(0)
        return statistics.stdev(statistics.median([v for b in rng.choices(blocks, k=len(blocks)) for v in b])
                                for _ in range(draws))
    if len(values) < 4:
        return float("nan")
    q1, _, q3 = statistics.quantiles(values, n=4)
    return 1.2533 * (q3 - q1) / 1.349 / math.sqrt(len(values))


def main(argv=None) -> int:
    spec = json.loads((sys.argv[1:] if argv is None else argv)[0])
    import torch

    from benchmarks.sampler_speed import time_pairs

    torch.set_num_threads(spec["threads"])
    steps, pairs = time_pairs(spec["name"], spec["n"], spec["compiled"], spec["layout"], spec["device"],
                              spec["quick"], spec["repeats"])
    print(json.dumps(dict(steps=steps, pairs=pairs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
