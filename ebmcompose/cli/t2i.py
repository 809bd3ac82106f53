"""``ebmcompose t2i``: composable text-to-image on a local diffusers Stable Diffusion folder.

Writes ``OUT/image_000.png`` ... (one PNG per image), ``OUT/images.npy`` (float32
``(K, H, W, 3)`` in ``[0, 1]``) and ``OUT/settings.json`` (the run's settings, the parsed terms,
NFE, seconds, library versions), staged by :func:`ebmcompose.cli.outputs.staged_output` and
moved in only when the run succeeded. Under ``torchrun`` (with ``--block``) the images come in
blocks spread over the ranks, each drawn from its own generator, and rank 0 writes. A missing or incomplete pipeline folder, an unparseable
prompt or a dtype the device cannot run is one paragraph and exit status 2, with nothing written.
Imports ``samplers`` lazily, and only for ``--sampler pc-ula``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..errors import InputError
from .options import common_options, device, nonnegative_float, positive_float, positive_int, progress
from .outputs import staged_output, writable_base

__all__ = ["add_parser", "run", "check_dtype", "DTYPES", "SAMPLER_CHOICES"]

#: ``--dtype`` values.
DTYPES = ("float32", "float16", "bfloat16")
#: ``--sampler`` values: the pipeline's own scheduler, a diffusers scheduler by name, or the
#: toolkit's predictor-corrector with a ULA corrector on the latents.
SAMPLER_CHOICES = ("pipeline", "ddim", "ddpm", "pndm", "euler", "euler-ancestral", "lms", "heun", "dpm++", "unipc", "pc-ula")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``t2i`` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "t2i",
        parents=[common_options()],
        help="compose prompts ('a AND b AND NOT c') on a local Stable Diffusion folder",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Composable Diffusion (Liu et al. 2022) on a diffusers text-to-image pipeline saved in a\n"
            "local folder: eps = eps_u + w * sum_i s_i (eps_i - eps_u), s_i = +1 for AND and -beta for\n"
            "NOT, all prompts and the unconditional in one UNet forward per step. With one prompt and\n"
            "--sampler pipeline the images equal diffusers' pipe(prompt, guidance_scale=w).\n"
            "Writes OUT/image_NNN.png, OUT/images.npy (float32 (K, H, W, 3) in [0, 1]) and\n"
            "OUT/settings.json. Nothing is downloaded.\n\n"
            "examples:\n"
            "  ebmcompose t2i --pipeline ~/models/sd-v1-5 --prompt \"a red cube AND a blue sphere AND NOT a table\" --out cubes\n"
            "  ebmcompose t2i --pipeline ~/models/sd-v1-5 --prompt \"2*(a castle) AND NOT fog\" --n 4 \\\n"
            "      --sampler euler --steps 30 --dtype float16 --device cuda --out castles"
        ),
    )
    p.add_argument("--pipeline", required=True, help="folder of a saved diffusers pipeline (model_index.json)")
    p.add_argument("--prompt", required=True, help="prompt expression: prompts joined by AND, NOT, weights w*(prompt)")
    p.add_argument("--negative-prompt", default=None, help="the unconditional prompt (default: empty)")
    p.add_argument("--guidance", type=float, default=7.5, help="guidance scale w (default: %(default)s)")
    p.add_argument("--neg-weight", type=nonnegative_float, default=1.0, help="NOT strength beta (default: %(default)s)")
    p.add_argument("--steps", type=positive_int, default=50, help="denoising steps (default: %(default)s)")
    p.add_argument("--n", type=positive_int, default=1, help="images K (default: %(default)s)")
    p.add_argument("--height", type=positive_int, default=None, help="pixels, a multiple of 8 (default: the model's)")
    p.add_argument("--width", type=positive_int, default=None, help="pixels, a multiple of 8 (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the CPU generator (default: %(default)s)")
    p.add_argument("--sampler", default="pipeline", choices=SAMPLER_CHOICES,
                   help="the pipeline's scheduler, another diffusers scheduler, or pc-ula (default: %(default)s)")
    p.add_argument("--eta", type=nonnegative_float, default=0.0, help="DDIM eta (default: %(default)s)")
    p.add_argument("--corrector-step-size", type=positive_float, default=0.05,
                   help="pc-ula: ULA step h * sigma_t^2 (default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="weights and latents dtype (default: %(default)s)")
    p.add_argument("--device", default="cpu", type=device, help="cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--max-batch", type=positive_int, default=None, help="largest UNet batch (chunks the joint batch)")
    p.add_argument("--progress", dest="progress", action="store_true", default=None, help="show a progress bar")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--block", type=positive_int, default=None,
                   help="images per block, each block from its own generator seeded by (--seed, block); needed "
                        "under torchrun (the images then do not depend on the number of processes); default: "
                        "one generator for all images, as diffusers")
    p.add_argument("--out", required=True, help="output folder (other files in it are kept)")
    p.set_defaults(func=run)
    return p


def check_dtype(name: str, device_name: str):
    """``torch.<name>``, after checking that ``device_name`` runs the UNet's operations in it.

    Raises
    ------
    InputError
        The device cannot run them (the message names the dtype, the device and what to use).
    """
    import torch
    import torch.nn.functional as F

    dtype = getattr(torch, name)
    try:
        x = torch.ones(1, 4, 4, 4, dtype=dtype, device=device_name)
        y = F.conv2d(x, torch.ones(4, 4, 3, 3, dtype=dtype, device=device_name), padding=1)
        y = F.silu(F.group_norm(y, 2))
        F.scaled_dot_product_attention(y.flatten(2), y.flatten(2), y.flatten(2))
        F.interpolate(y, scale_factor=2.0, mode="nearest")
    except (RuntimeError, TypeError, NotImplementedError) as exc:
        raise InputError(
            f"--dtype {name} cannot run on {device_name}: {str(exc).splitlines()[0]}. Use --dtype float32, "
            "or float16/bfloat16 on a device that supports them (a CUDA GPU)."
        ) from None
    return dtype


def _sampler(args, cp):
    """``(scheduler, sampler)`` for ``ComposablePipeline.__call__`` from ``--sampler``."""
    if args.sampler == "pipeline":
        return None, None
    if args.sampler != "pc-ula":
        return args.sampler, None
    import ebmcompose as ec
    from samplers import ULA, PredictorCorrector

    schedule = ec.VPSchedule.from_diffusers(cp.pipe.scheduler)
    corrector = ULA(step_size=args.corrector_step_size, n_steps=1)
    return None, PredictorCorrector(schedule, args.steps, corrector=corrector, predictor="ddim", step_rule="sigma2")


def run(args) -> int:
    """Generate and write the images (see the module docstring)."""
    import contextlib

    import numpy as np

    from .. import distributed
    from ..pipelines import ComposablePipeline, parse_prompt

    terms = parse_prompt(args.prompt, neg_weight=args.neg_weight)  # a bad prompt fails before any loading
    if not (args.guidance == args.guidance and abs(args.guidance) != float("inf")):
        raise InputError(f"--guidance must be a finite number, got {args.guidance}")
    dtype = check_dtype(args.dtype, args.device)
    out = Path(args.out)
    with distributed.session(args.device) as session:
        if session.distributed and args.block is None:
            raise InputError(
                "under torchrun give --block (images per block, e.g. --block 1): each block then draws from its "
                "own generator, so the images depend on --seed and --block, not on the number of processes"
            )
        with distributed.all_or_none(session):  # a bad --out stops every rank before the run
            if session.is_main:
                writable_base(out)
        with staged_output(out, "t2i") if session.is_main else contextlib.nullcontext() as stage:
            cp = ComposablePipeline.from_pretrained(args.pipeline, torch_dtype=dtype, device=str(session.device),
                                                    max_batch=args.max_batch)
            start = time.perf_counter()
            images, res = _generate(cp, args, session)
            seconds = time.perf_counter() - start
            if not session.is_main:
                return 0
            if not np.isfinite(images).all():
                raise InputError(
                    "the generated images contain NaN; with --dtype float16/bfloat16 try float32, or fewer "
                    "steps of a stochastic sampler, or a smaller --corrector-step-size"
                )
            files = []
            from PIL import Image

            for i, img in enumerate(images):
                name = f"image_{i:03d}.png"
                Image.fromarray(np.round(img * 255).astype(np.uint8)).save(stage / name)
                files.append(name)
            np.save(stage / "images.npy", images)
            settings = _settings(args, terms, res, seconds, images.shape, files)
            (stage / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    print(f"ebmcompose t2i: wrote {len(files)} image(s), images.npy and settings.json to {out}")
    return 0


def _generate(cp, args, session):
    """``(images (K, H, W, 3) float32, the result of this rank's last pipeline call or None)``.

    Without ``--block``: one call with ``Generator().manual_seed(seed)`` (diffusers' own images).
    With it: blocks of ``--block`` images, block ``b`` from ``ec.distributed.block_generator(seed, b)``,
    spread over the ranks and gathered in block order.
    """
    import numpy as np
    import torch

    from .. import distributed

    scheduler, sampler = _sampler(args, cp)

    def call(k: int, generator):
        return cp(
            args.prompt, guidance=args.guidance, num_inference_steps=args.steps, negative_prompt=args.negative_prompt,
            neg_weight=args.neg_weight, num_images=k, height=args.height, width=args.width, generator=generator,
            output_type="np", eta=args.eta, scheduler=scheduler, sampler=sampler, progress=progress(args.progress) and session.is_main,
        )

    if args.block is None:
        res = call(args.n, torch.Generator("cpu").manual_seed(args.seed))
        return np.asarray(res.images, dtype=np.float32), res
    plan = distributed.BlockPlan.of(args.n, args.block, session)
    parts, res = [], None
    with distributed.all_or_none(session):
        for b in plan.blocks:
            lo, hi = plan.bounds(b)
            res = call(hi - lo, distributed.block_generator(args.seed, b))
            parts.append(torch.from_numpy(np.asarray(res.images, dtype=np.float32)))
    shapes = distributed.all_gather_objects(None if res is None else tuple(parts[0].shape[1:]), session)
    event = next(s for s in shapes if s is not None)
    local = torch.cat(parts) if parts else torch.zeros((0, *event), dtype=torch.float32)
    images = distributed.gather_rows(local, plan, session).numpy()
    return images, res  # rank 0 always holds block 0, so its ``res`` is never None


def _settings(args, terms, res, seconds, shape, files) -> dict:
    import diffusers
    import torch
    import transformers

    import ebmcompose

    return {
        "command": "ebmcompose t2i",
        "pipeline": str(Path(args.pipeline).expanduser().absolute()),
        "prompt": args.prompt,
        "terms": [{"text": t.text, "weight": t.weight} for t in terms],
        "negative_prompt": args.negative_prompt,
        "guidance": args.guidance,
        "neg_weight": args.neg_weight,
        "formula": "eps = eps_u + guidance * sum_i weight_i * (eps_i - eps_u)",
        "steps": args.steps,
        "n": args.n,
        "images_shape": list(shape),
        "images_layout": "(K, H, W, 3) float32 in [0, 1]",
        "seed": args.seed,
        "sampler": args.sampler,
        "eta": args.eta,
        "corrector_step_size": args.corrector_step_size if args.sampler == "pc-ula" else None,
        "dtype": args.dtype,
        "device": args.device,
        "max_batch": args.max_batch,
        "nfe": res.nfe,
        "timesteps": [float(k) for k in res.timesteps.tolist()],
        "seconds": round(seconds, 3),
        "files": files + ["images.npy"],
        "versions": {
            "ebmcompose": ebmcompose.__version__, "torch": torch.__version__,
            "diffusers": diffusers.__version__, "transformers": transformers.__version__,
        },
    }
