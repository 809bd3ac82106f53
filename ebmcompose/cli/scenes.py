"""``ebmcompose scenes train|sample``: train the scene models, and compose and sample them.

Registered by :func:`add_parser` (each sub-subcommand sets ``func``). Imports
``samplers`` and ``toy`` lazily (the only part of ``ebmcompose`` that may).

``sample`` writes ``OUT/samples.npy`` (float32 ``(N, 3, H, W)`` in ``[0, 1]``), ``OUT/grid.png``
and ``OUT/metrics.json`` (accuracy from :mod:`toy.scenes`' evaluator, NFE, seconds), staged by
:func:`ebmcompose.cli.outputs.staged_output` and moved in only when the run succeeded; other
files in ``OUT`` are never touched. The images come in blocks of ``--block`` (each seeded from
``--seed`` and its index, :mod:`ebmcompose.distributed`), so under ``torchrun`` the ranks share the
blocks and rank 0 writes the same files as one process does. Bad input (positions, attribute names, a checkpoint of another
resolution or family) raises :class:`ebmcompose.InputError` before anything is written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any, Dict, Tuple

from ..errors import InputError
from .outputs import staged_output, writable_base

__all__ = ["add_parser", "run_train", "run_sample", "parse_position"]

SUFFIX = {"epsilon": "eps", "energy": "energy"}
#: Images per block of ``scenes sample`` (one sampler call, one random stream each).
DEFAULT_BLOCK = 32


# ---------------------------------------------------------------------------- parser
def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``scenes`` (with ``train`` and ``sample``) on an argparse subparsers object."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "scenes",
        help="train scene diffusion models; compose and sample object positions and attributes",
        description=(
            "Procedural RGB scenes (toy.scenes): position concepts (an object at x,y; x = column,\n"
            "y = row, both in [0, 1], top-left origin) and attribute concepts (colour, shape, size),\n"
            "composed with AND / NOT as in Liu et al. 2022 and sampled with any sampler."
        ),
        formatter_class=fmt,
    )
    sub = p.add_subparsers(dest="scenes_command", metavar="{train,sample}")

    t = sub.add_parser(
        "train",
        help="train one scene model (resumable)",
        formatter_class=fmt,
        description=(
            "Train a conditional UNet on the scenes. The run folder OUT gets resume.* (continue with\n"
            "--resume, bit-identically) and model.* (the EMA weights); with --export the finished\n"
            "model is also written as OUT/scenes_<family>_<eps|energy>.* (float16 storage).\n\n"
            "examples:\n"
            "  ebmcompose scenes train --family position --model epsilon --out runs/position_eps\n"
            "  ebmcompose scenes train --family position --model energy --size quick --out /tmp/q"
        ),
    )
    t.add_argument("--family", default="position", choices=["position", "attribute", "joint"])
    t.add_argument("--model", default="epsilon", choices=["epsilon", "energy"], help="parameterisation")
    t.add_argument("--out", required=True, help="run folder (resume state and model)")
    t.add_argument("--size", default="default", choices=["quick", "default"])
    t.add_argument("--steps", type=int, default=None, help="override the number of steps")
    t.add_argument("--until", type=int, default=None, help="stop after this many steps (continue with --resume)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--export", action="store_true", help="also write OUT/scenes_<family>_<eps|energy>.* when complete")
    t.set_defaults(func=run_train)

    s = sub.add_parser(
        "sample",
        help="compose positions or attributes and sample images",
        formatter_class=fmt,
        description=(
            "Compose concepts with AND / NOT and sample N images. Writes OUT/samples.npy (float32,\n"
            "(N, 3, H, W) in [0, 1]), OUT/grid.png and OUT/metrics.json (accuracy, nfe, seconds);\n"
            "other files in OUT are left alone. Same --seed, same images.\n\n"
            "examples:\n"
            "  ebmcompose scenes sample --at 0.25,0.25 --at 0.75,0.75 --n 16 --out two\n"
            "  ebmcompose scenes sample --at 0.3,0.5 --not-at 0.7,0.5 --model energy --sampler pc-mala --out neg\n"
            "  ebmcompose scenes sample --attr red --attr square --not-attr small --out red-square"
        ),
    )
    s.add_argument("--at", action="append", default=[], metavar="X,Y", help="an object at X,Y (repeatable)")
    s.add_argument("--not-at", action="append", default=[], metavar="X,Y", help="no object at X,Y (repeatable)")
    s.add_argument("--attr", action="append", default=[], metavar="NAME", help="a required attribute (repeatable)")
    s.add_argument("--not-attr", action="append", default=[], metavar="NAME", help="a forbidden attribute (repeatable)")
    s.add_argument("--joint", action="store_true", help="the jointly conditioned baseline model instead of AND")
    s.add_argument("--n", type=int, default=16, help="number of images (default %(default)s)")
    s.add_argument("--sampler", default="ddim", help="ddpm, ddim, annealed-ula, pc-ula, pc-mala, pc-hmc (default %(default)s)")
    s.add_argument("--model", default=None, choices=["epsilon", "energy"], help="parameterisation (default: epsilon, or the checkpoint's)")
    s.add_argument("--steps", type=int, default=25, help="network evaluations (NFE budget, default %(default)s)")
    s.add_argument("--weight", type=float, default=3.0, help="guidance scale alpha (default %(default)s)")
    s.add_argument("--neg-weight", type=float, default=1.0, help="negation strength beta (default %(default)s)")
    s.add_argument("--resolution", type=int, default=None, help="required image side (default: the model's)")
    s.add_argument("--checkpoint", default=None, help="a model checkpoint (default: the shipped one)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--block", type=int, default=DEFAULT_BLOCK,
                   help="images per block, each with its own random stream; blocks spread over torchrun "
                        "processes, and the images depend on --seed and --block, not on their number "
                        "(default %(default)s)")
    s.add_argument("--out", required=True, help="output folder")
    s.set_defaults(func=run_sample)
    return p


# ---------------------------------------------------------------------------- helpers
def parse_position(text: str, option: str) -> Tuple[float, float]:
    """``"X,Y"`` → ``(x, y)`` in ``[0, 1]``; :class:`InputError` otherwise."""
    parts = str(text).split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        x, y = (float(p) for p in parts)
    except ValueError:
        raise InputError(f"{option} {text!r}: a position is two numbers X,Y (column, row), e.g. {option} 0.25,0.75") from None
    if not (math.isfinite(x) and math.isfinite(y) and 0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
        raise InputError(
            f"{option} {text!r}: positions are fractions of the image side, X (column) and Y (row) both in [0, 1]"
        )
    return x, y


def _positive(value: int, option: str) -> int:
    if value is None or value < 1:
        raise InputError(f"{option} must be a positive integer, got {value}")
    return value


# ---------------------------------------------------------------------------- train
def run_train(args) -> int:
    """``ebmcompose scenes train``."""
    from toy import image_train as it

    config = it.config_for(args.family, args.model, args.size, steps=args.steps, seed=args.seed)
    out = Path(args.out)
    if not args.resume and (out / "resume.safetensors").exists():
        raise InputError(f"{out} already holds a training run (resume.safetensors); continue it with --resume or choose another --out")
    t0 = time.perf_counter()
    result = it.train(config, run_dir=out, resume=args.resume, until=args.until, progress=True)
    msg = f"scenes train: {config.family}/{config.parameterisation} step {result.step}/{config.steps} in {time.perf_counter() - t0:.0f} s"
    if result.complete and args.export:
        stem = out / f"scenes_{config.family}_{SUFFIX[config.parameterisation]}"
        it.save_model(stem, result.net, config, half=True)
        msg += f"; exported {stem}.safetensors"
    print(msg + f"; run folder {out}")
    return 0


# ---------------------------------------------------------------------------- sample
def _request(args) -> Dict[str, Any]:
    """Validated concepts of a ``sample`` call: ``family`` and what to require/forbid."""
    from toy import scenes

    at = [parse_position(p, "--at") for p in args.at]
    not_at = [parse_position(p, "--not-at") for p in args.not_at]
    attrs, not_attrs = list(args.attr), list(args.not_attr)
    for name in attrs + not_attrs:
        if name not in scenes.ATTRIBUTES:
            raise InputError(f"unknown attribute {name!r}; valid attributes are {', '.join(scenes.ATTRIBUTES)}")
    if (at or not_at) and (attrs or not_attrs):
        raise InputError("positions (--at/--not-at) and attributes (--attr/--not-attr) use different models; give one kind")
    if not (at or not_at or attrs or not_attrs):
        raise InputError("nothing to sample: give at least one --at X,Y or --attr NAME (see --help for examples)")
    if args.joint:
        if not at or not_at:
            raise InputError("--joint conditions on positions only: give --at X,Y (up to 5) and no --not-at")
        if len(at) > 5:
            raise InputError(f"--joint takes at most 5 positions, got {len(at)}")
        family = "joint"
    else:
        family = "attribute" if (attrs or not_attrs) else "position"
    return {"family": family, "at": at, "not_at": not_at, "require": attrs, "forbid": not_attrs}


def _load(args, family: str):
    """The :class:`~toy.scene_model.SceneModel` to sample (shipped default or ``--checkpoint``)."""
    from ebmcompose.checkpoint import CheckpointError
    from toy import pretrained
    from toy.scene_model import SceneModel

    param = args.model or "epsilon"
    if args.checkpoint is None:
        sm = pretrained.scene_model(family, param)
    else:
        try:
            sm = SceneModel.load(args.checkpoint, parameterisation=args.model)
        except CheckpointError as exc:
            raise InputError(f"--checkpoint {args.checkpoint}: {exc}") from None
    if sm.family != family:
        raise InputError(f"--checkpoint {args.checkpoint} is a {sm.family} model, but this request needs a {family} model")
    if args.resolution is not None and sm.resolution != args.resolution:
        raise InputError(
            f"the model makes {sm.resolution}x{sm.resolution} images but --resolution {args.resolution} was asked; "
            f"use a checkpoint trained at {args.resolution} or drop --resolution"
        )
    return sm


def _grid_png(images, path: Path) -> None:
    """Save ``(N, 3, H, W)`` images in ``[0, 1]`` as one PNG grid (1-pixel white gutters)."""
    from PIL import Image

    from toy.scene_model import image_grid

    Image.fromarray(image_grid(images)).save(path, format="PNG")


def _score(images, req, args, sm, n: int, nfe: int, seconds: float, block: int) -> Dict[str, Any]:
    """metrics.json: the request, the evaluator's accuracy (with its binomial standard error), NFE, time."""
    from toy import scenes

    metrics: Dict[str, Any] = {
        "family": req["family"], "parameterisation": sm.parameterisation, "sampler": args.sampler, "n": n,
        "seed": args.seed, "block": block, "weight": args.weight, "neg_weight": args.neg_weight, "nfe": int(nfe),
        "seconds": round(seconds, 3), "seconds_per_image": round(seconds / n, 4),
    }
    if req["family"] == "attribute":
        ok = scenes.attribute_accuracy(images, require=req["require"], forbid=req["forbid"])
        metrics.update(require=req["require"], forbid=req["forbid"])
    else:
        ok = scenes.position_accuracy(images, at=req["at"], not_at=req["not_at"])
        metrics.update(at=req["at"], not_at=req["not_at"])
        if not req["not_at"]:
            metrics["strict_accuracy"] = float(scenes.position_strict(images, at=req["at"]).float().mean())
    p = float(ok.float().mean())
    metrics["accuracy"] = p
    metrics["accuracy_se"] = math.sqrt(max(p * (1 - p), 0.0) / n)
    return metrics


def run_sample(args) -> int:
    """``ebmcompose scenes sample`` (under ``torchrun`` too: the images' blocks spread over the ranks)."""
    import numpy as np

    from .. import distributed
    from .scene_sampling import NEEDS_ENERGY, SAMPLERS, build_sampler
    from toy.scene_model import to_unit

    req = _request(args)
    n = _positive(args.n, "--n")
    nfe = _positive(args.steps, "--steps")
    if args.sampler not in SAMPLERS:
        raise InputError(f"unknown --sampler {args.sampler!r}; valid samplers are {', '.join(SAMPLERS)}")
    if args.sampler in NEEDS_ENERGY and args.model == "epsilon":
        raise InputError(f"--sampler {args.sampler} needs energies (a Metropolis correction): use --model energy")
    if args.sampler in NEEDS_ENERGY and args.model is None and args.checkpoint is None:
        args.model = "energy"
    sm = _load(args, req["family"])
    if args.sampler in NEEDS_ENERGY and sm.parameterisation != "energy":
        raise InputError(f"--sampler {args.sampler} needs energies, but {args.checkpoint} is an epsilon model: use an energy checkpoint")
    if req["family"] == "position":
        energy = sm.compose(req["at"], req["not_at"], weight=args.weight, neg_weight=args.neg_weight)
    elif req["family"] == "attribute":
        energy = sm.compose_attributes(req["require"], req["forbid"], weight=args.weight, neg_weight=args.neg_weight)
    else:
        energy = sm.joint_condition(req["at"], weight=args.weight)
    out = Path(args.out)
    block = _positive(args.block, "--block")
    sampler = build_sampler(args.sampler, sm.schedule, max(2, nfe))
    with distributed.session("cpu") as session:
        with distributed.all_or_none(session):  # a bad --out stops every rank before the run
            if session.is_main:
                writable_base(out)
        with staged_output(out, "scenes-sample") if session.is_main else contextlib.nullcontext() as stage:
            t0 = time.perf_counter()
            res = distributed.sample(sampler, energy, n, seed=args.seed, block=block, event_shape=sm.shape(1)[1:],
                                     session=session)
            seconds = time.perf_counter() - t0
            if session.is_main:
                images = to_unit(res.samples)
                metrics = _score(images, req, args, sm, n, res.nfe, seconds, block)
                with open(stage / "samples.npy", "wb") as f:
                    np.save(f, images.numpy().astype(np.float32))
                _grid_png(images, stage / "grid.png")
                (stage / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if not session.is_main:
        return 0
    p = metrics["accuracy"]
    print(
        f"scenes sample: {n} images, accuracy {p:.3f} ± {metrics['accuracy_se']:.3f}, nfe {metrics['nfe']}, "
        f"{seconds:.1f} s; wrote {out}/samples.npy, grid.png, metrics.json"
    )
    return 0
