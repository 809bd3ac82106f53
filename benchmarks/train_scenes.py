"""Train the shipped scene models (``toy/checkpoints/scenes_*``), resumably.

    python -m benchmarks.train_scenes --out toy/checkpoints --run-root /work/train-runs \\
        [--models position:epsilon position:energy attribute:epsilon joint:epsilon] [--size quick]

Each model trains in its own run folder ``RUN_ROOT/scenes_<family>_<eps|energy>/`` (resume state
every ``checkpoint_every`` steps; rerunning the same command continues where it stopped, bit for
bit) and, when complete, is exported to ``OUT/scenes_<family>_<eps|energy>.{safetensors,json}``
(EMA weights stored as float16, loaded back as float32 by :func:`toy.pretrained.scene_model`).
``--until N`` stops every run after ``N`` steps (continue later with the same command).

One model per process on one thread is what the defaults were sized for (see
:data:`toy.image_train.DEFAULT_STEPS` and ``FAMILY_DEFAULTS``); to train two at once on two cores, start two processes::

    OMP_NUM_THREADS=1 nohup python -m benchmarks.train_scenes --models position:epsilon \\
        --run-root /work/train-runs --out toy/checkpoints > /work/train-logs/position_eps.log 2>&1 &
    OMP_NUM_THREADS=1 nohup python -m benchmarks.train_scenes --models position:energy \\
        --run-root /work/train-runs --out toy/checkpoints > /work/train-logs/position_energy.log 2>&1 &

``ebmcompose scenes train --family F --model M --out DIR`` trains one model the same way.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

import torch

from toy import image_train as it

#: The models that ship, as ``family:parameterisation``.
SHIPPED = ("position:epsilon", "position:energy", "attribute:epsilon", "joint:epsilon")
SUFFIX = {"epsilon": "eps", "energy": "energy"}


def model_name(family: str, parameterisation: str) -> str:
    """``scenes_<family>_<eps|energy>``: the stem of a shipped checkpoint and of its run folder."""
    return f"scenes_{family}_{SUFFIX[parameterisation]}"


def train_one(family: str, parameterisation: str, *, out, run_root, size: str = "default", until: Optional[int] = None,
              steps: Optional[int] = None, resolution: Optional[int] = None, attribute_labels: Optional[str] = None,
              scale_shift: Optional[bool] = None, progress: bool = True) -> it.TrainResult:
    """Train (or continue) one model in ``run_root/<name>``; export it to ``out/<name>`` when complete."""
    config = it.config_for(family, parameterisation, size, steps=steps, resolution=resolution,
                           attribute_labels=attribute_labels, scale_shift=scale_shift)
    name = model_name(family, parameterisation)
    run_dir = Path(run_root) / name
    t0 = time.perf_counter()
    result = it.train(config, run_dir=run_dir, resume=True, until=until, progress=progress)
    elapsed = time.perf_counter() - t0
    k = max(1, result.step // 10)
    loss = float(result.losses[-k:].mean()) if result.step else float("nan")
    print(f"{name}: step {result.step}/{config.steps}, {elapsed:.0f} s this call, final loss {loss:.4f}", flush=True)
    if result.complete and out is not None:
        it.save_model(Path(out) / name, result.net, config, half=True, extra={"final_loss": round(loss, 5)})
        print(f"{name}: exported to {Path(out) / name}.safetensors", flush=True)
    return result


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="toy/checkpoints", help="where finished models are exported (default toy/checkpoints)")
    p.add_argument("--run-root", default="scene-runs", help="folder of the per-model run folders (resume state)")
    p.add_argument("--models", nargs="+", default=list(SHIPPED), help="family:parameterisation pairs (default: all shipped)")
    p.add_argument("--size", default="default", choices=list(it.SIZES))
    p.add_argument("--steps", type=int, default=None, help="override the number of steps")
    p.add_argument("--resolution", type=int, default=None, help="override the image side (default 32)")
    p.add_argument("--attribute-labels", choices=("one", "multi"), default=None,
                   help="attribute family: one random attribute per image, or each kept with probability 1/2")
    p.add_argument("--scale-shift", action=argparse.BooleanOptionalAction, default=None,
                   help="FiLM conditioning (a scale and shift of the ResNet blocks' features) instead of an added bias "
                        "(default: the family's, see toy.image_train.FAMILY_DEFAULTS)")
    p.add_argument("--until", type=int, default=None, help="stop each run after this many steps (resume later)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    for spec in args.models:
        family, _, param = spec.partition(":")
        train_one(family, param or "epsilon", out=args.out, run_root=args.run_root, size=args.size, until=args.until,
                  steps=args.steps, resolution=args.resolution, attribute_labels=args.attribute_labels,
                  scale_shift=args.scale_shift, progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
