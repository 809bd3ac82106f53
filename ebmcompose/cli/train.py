"""``ebmcompose train``: train the toy component models (epsilon / energy checkpoints).

For every task and parameterisation, trains one conditional :class:`toy.nets.ResMLP` over the
task's components (label ``k`` = ``k``-th component, null label = their union via label dropout;
see :mod:`toy.pretrained`) with :func:`toy.train.train`, and reports the quality check: the
relative L2 error of each learned component score against the exact diffused component score at
``t = 0.1`` and ``t = 0.5`` on noised exact samples (also stored in the checkpoint's JSON under
``"metrics"``). Everything random is seeded; with one torch thread the weights do not depend on
the machine.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Dict

from .errors import UsageError
from .options import Formatter, common_options, positive_int, progress, timestamped
from .outputs import staged_output

__all__ = ["add_parser", "run", "SETTINGS", "QUICK_ITERS", "SUFFIX", "evaluate"]

#: Training settings of the shipped checkpoints (each run ≈ 1.5–2 min on one CPU core).
SETTINGS = {
    "epsilon": dict(n_iters=8000, batch_size=256, lr=2e-3, ema_decay=0.995, label_dropout=0.2),
    "energy": dict(n_iters=6000, batch_size=256, lr=2e-3, ema_decay=0.995, label_dropout=0.2),
}
QUICK_ITERS = 300
EVAL_TIMES = (0.1, 0.5)
EVAL_POINTS = 4000
SUFFIX = {"epsilon": "eps", "energy": "energy"}

DESCRIPTION = """\
Train the toy component models by denoising score matching (toy.train): for each task and
parameterisation one conditional ResMLP whose label k is the task's k-th component and whose null
label is their union. Prints the final loss and the relative score error of each learned component
against its exact diffused score at t = 0.1 and 0.5.

Writes OUT/<task>_eps.safetensors + .json (epsilon) and OUT/<task>_energy.safetensors + .json
(energy): safetensors weights plus a JSON config, never pickles. The files move into OUT only after
all training succeeded; other files in OUT are left alone. The default OUT is a new folder
checkpoints-<date>-<time>: the shipped toy/checkpoints are only replaced with an explicit
--out toy/checkpoints. Use the result with `ebmcompose sample --model epsilon --checkpoint-dir OUT`.
The full settings take about 1.5-2 minutes per model on one CPU core; training runs on the CPU.
"""

EPILOG = """\
examples:
  ebmcompose train --tasks product --parameterisations energy --quick --out my-checkpoints
  ebmcompose train --out toy/checkpoints        # regenerate the shipped checkpoints
"""


def add_parser(subparsers) -> None:
    """Register ``train`` (sets ``func``)."""
    t = subparsers.add_parser(
        "train", parents=[common_options()], formatter_class=Formatter, description=DESCRIPTION, epilog=EPILOG,
        help="train the toy component models (epsilon / energy checkpoints)",
    )
    t.add_argument("--tasks", nargs="+", default=["product", "mixture", "negation"], help="tasks to train (default: all)")
    t.add_argument(
        "--parameterisations", nargs="+", choices=["epsilon", "energy"], default=["epsilon", "energy"],
        help="epsilon (score-only) and/or energy models (default: both)",
    )
    t.add_argument("--out", help="output folder (default: a new folder checkpoints-<date>-<time>)")
    t.add_argument("--quick", action="store_true", help=f"{QUICK_ITERS} iterations per model (smoke test, poor models)")
    t.add_argument("--iters", type=positive_int, help="training iterations per model (overrides --quick)")
    t.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    t.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="tqdm progress bar (default: on a terminal)")
    t.set_defaults(func=run)


def evaluate(trained, task, seed: int = 1234) -> Dict[str, Dict[str, float]]:
    """Relative score error per component and time: ``{component: {"t=0.1": err, ...}}``."""
    import torch

    from toy.train import score_relative_error

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


def run(args) -> int:
    """Run ``ebmcompose train``; returns the exit status."""
    import toy
    from toy import pretrained
    from toy.train import save_trained, train

    unknown = [t for t in args.tasks if t not in toy.tasks.names()]
    if unknown:
        raise UsageError(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(toy.tasks.names())}")
    out = Path(args.out) if args.out else Path(timestamped("checkpoints"))
    shipped = out.resolve() == pretrained.CHECKPOINT_DIR.resolve()
    stems = []
    with staged_output(out, "train") as staging:
        print(f"{'task':<10}{'param':<9}{'iters':>6}{'time_s':>8}{'loss':>9}  score rel. error (component: t=0.1 / t=0.5)")
        for task_name in dict.fromkeys(args.tasks):
            task = toy.tasks.get(task_name)
            for param in dict.fromkeys(args.parameterisations):
                settings = dict(SETTINGS[param])
                if args.quick:
                    settings["n_iters"] = QUICK_ITERS
                if args.iters is not None:
                    settings["n_iters"] = args.iters
                t0 = time.perf_counter()
                trained = train(param, task, seed=args.seed, name=task_name, progress=progress(args.progress), **settings)
                elapsed = time.perf_counter() - t0
                errors = evaluate(trained, task)
                stem = f"{task_name}_{SUFFIX[param]}"
                save_trained(staging / stem, trained, metrics={"score_relative_error": errors})
                stems.append(stem)
                errs = ", ".join(f"{n}: {e['t=0.1']:.3f} / {e['t=0.5']:.3f}" for n, e in errors.items())
                print(f"{task_name:<10}{param:<9}{settings['n_iters']:>6}{elapsed:>8.1f}{trained.final_loss:>9.4f}  {errs}",
                      flush=True)
    names = ", ".join(f"{s}.safetensors" for s in stems)
    print(f"[train] wrote {out}/ ({names})" + (" — replacing shipped checkpoints" if shipped else ""))
    if not shipped:
        print(f"[train] use them with: ebmcompose sample --task {args.tasks[0]} --model "
              f"{args.parameterisations[0]} --checkpoint-dir {out} --sampler pc-ula")
    return 0
