"""Regenerate the shipped toy checkpoints (``toy/checkpoints/``) deterministically.

    python -m benchmarks.train_toy --out toy/checkpoints [--tasks product mixture] [--quick]

For every task and parameterisation, trains one conditional :class:`toy.nets.ResMLP` over the
task's components (label ``k`` = ``k``-th component, null label = union via label dropout; see
:mod:`toy.pretrained`) with :func:`toy.train.train`, saves ``<task>_eps.*`` / ``<task>_energy.*``
and prints the training time, the final loss and the quality check: the relative L2 error of
each learned component score against the exact diffused component score at ``t = 0.1`` and
``t = 0.5``, on noised exact samples of that component (also stored in the checkpoint's JSON
under ``"metrics"``).

Determinism: everything random is seeded; torch runs single-threaded (``--threads 1``) so that
the weights do not depend on the machine's core count. Timings are not stored in the files.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Dict, List, Optional

import torch

import toy
from toy.train import save_trained, score_relative_error, train

#: Training settings of the shipped checkpoints (each run ≈ 1.5–2 min on one CPU core).
SETTINGS = {
    "epsilon": dict(n_iters=8000, batch_size=256, lr=2e-3, ema_decay=0.995, label_dropout=0.2),
    "energy": dict(n_iters=6000, batch_size=256, lr=2e-3, ema_decay=0.995, label_dropout=0.2),
}
QUICK_ITERS = 300
EVAL_TIMES = (0.1, 0.5)
EVAL_POINTS = 4000
SUFFIX = {"epsilon": "eps", "energy": "energy"}


def evaluate(trained, task, seed: int = 1234) -> Dict[str, Dict[str, float]]:
    """Relative score error per component and time: ``{component: {"t=0.1": err, ...}}``."""
    comps = trained.components()
    schedule = trained.schedule
    out = {}
    for k, (name, exact) in enumerate(task.components.items()):
        g = torch.Generator().manual_seed(seed + k)
        x0 = exact.sample(EVAL_POINTS, generator=g)
        diffused = exact.diffused(schedule)
        out[name] = {
            f"t={t:g}": round(score_relative_error(comps[name], diffused, x0, t, schedule, generator=g), 5)
            for t in EVAL_TIMES
        }
    return out


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="toy/checkpoints", help="output folder (default toy/checkpoints)")
    p.add_argument("--tasks", nargs="+", default=list(toy.tasks.names()), choices=toy.tasks.names())
    p.add_argument(
        "--parameterisations", nargs="+", default=["epsilon", "energy"], choices=["epsilon", "energy"]
    )
    p.add_argument("--quick", action="store_true", help=f"{QUICK_ITERS} iterations (smoke test, poor models)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: machine-independent weights)")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{'task':<10}{'param':<9}{'iters':>6}{'time_s':>8}{'loss':>9}  score rel. error (component: t=0.1 / t=0.5)")
    for task_name in args.tasks:
        task = toy.tasks.get(task_name)
        for param in args.parameterisations:
            settings = dict(SETTINGS[param])
            if args.quick:
                settings["n_iters"] = QUICK_ITERS
            t0 = time.perf_counter()
            trained = train(param, task, seed=args.seed, name=task_name, progress=args.progress, **settings)
            elapsed = time.perf_counter() - t0
            errors = evaluate(trained, task)
            save_trained(f"{args.out}/{task_name}_{SUFFIX[param]}", trained, metrics={"score_relative_error": errors})
            errs = ", ".join(f"{n}: {e['t=0.1']:.3f} / {e['t=0.5']:.3f}" for n, e in errors.items())
            print(
                f"{task_name:<10}{param:<9}{settings['n_iters']:>6}{elapsed:>8.1f}{trained.final_loss:>9.4f}  {errs}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
