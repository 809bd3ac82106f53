"""``ebmcompose sample``: one composition (a task or an expression), one sampler, metrics."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time

from . import experiments as ex
from .errors import UsageError
from .options import (
    Formatter, _checked, common_options, device, diffusion_time, nonnegative_float, nonnegative_int, positive_float,
    positive_int, progress,
)
from .outputs import staged_output, writable_base

__all__ = ["add_parser", "run", "FILES"]

#: Files ``ebmcompose sample`` writes (other files in ``--out`` are kept).
FILES = ("samples.pt", "samples.npy", "samples.png", "metrics.json", "metrics.md")

#: Which options each sampler uses (an option given to a sampler that ignores it is an error).
_OPTION_USERS = {
    "steps": ex.STATIC_SAMPLERS,
    "step_size": ex.STATIC_SAMPLERS + ("annealed",) + ex.PC_SAMPLERS + ("smc",),
    "leapfrog": ("hmc", "pc-hmc", "annealed", "smc"),
    "levels": ex.DIFFUSION_SAMPLERS,
    "corrector_steps": ("annealed",) + ex.PC_SAMPLERS + ("smc",),
    "kernel": ("annealed",),
    "step_rule": ex.PC_SAMPLERS + ("smc",),
    "particles": ("smc",),
    "ess_threshold": ("smc",),
    "rejuvenate": ("smc",),
    "weights": ("smc",),
    "clip_x0": ("ddpm", "ddim") + ex.PC_SAMPLERS,
    "t": ex.STATIC_SAMPLERS,
}

_DEFAULT_N = 1000
#: ``--ess-threshold``: a fraction in [0, 1].
_fraction = _checked(float, lambda v: 0.0 <= v <= 1.0, "a fraction in [0, 1]")

DESCRIPTION = """\
Sample one composition of the toy energies with one sampler, and measure it against the exact answer.

Target: --task NAME (product = ring AND bar, mixture = left OR right, negation = box AND NOT
0.5*small) or --expr "EXPRESSION" over the component names ring, bar, left, right, box, small
(operators AND/&, OR/|, NOT/-, +, w*name, parentheses).

Model: --model exact uses the analytic energies: static samplers (ula, mala, hmc) sample the
static composed energy, diffusion samplers (annealed, ddpm, ddim, pc-*) follow the composition of
the exactly *diffused* components (linear schedule). --model epsilon / energy use the learned
checkpoints (toy/checkpoints, or --checkpoint-dir DIR from `ebmcompose train`): the expression is
composed over the learned leaves; static samplers evaluate them at a fixed small time --t.
epsilon models are score-only: no mala/hmc/pc-mala/pc-hmc, smc with --weights fkc, and no OR (|).

Settings (defaults in brackets; an option a sampler does not use is an error):
  ula, mala      --steps [500], --step-size [adapted by dual averaging], --t [0.01, learned only]
  hmc            --steps [200], --leapfrog [10], --step-size [adapted]
  annealed       --levels [50] x --corrector-steps [5] of --kernel [ula] (mala, hmc: --leapfrog [5]),
                 --step-size at the last level [0.01, hmc 0.1; adapted per level when omitted]
  ddpm, ddim     --levels [100], --clip-x0 [6 for learned models, off for exact]
  pc-ula/mala/hmc  --levels [50] predictor steps, --corrector-steps [2] per level,
                 --step-rule [adapt] (sigma2, beta, fixed need --step-size), --leapfrog [5], --clip-x0
  smc            sequential Monte Carlo: --particles [--n] weighted particles down --levels [100]
                 reverse-diffusion steps, importance weights toward the composed targets, resampled
                 when ESS/particles < --ess-threshold [0.5]; --rejuvenate [mala] (hmc, ula, none)
                 with --corrector-steps [1] per level, --step-rule [adapt] (sigma2, fixed), --leapfrog
                 [5]; --weights [energy for exact models, fkc for learned ones]: importance
                 weights from energy values (exact or --model energy; learned energy values can be
                 far off between modes), or Feynman-Kac corrector weights from scores (AND/NOT of
                 any model; --rejuvenate ula or none [none], ladder from t = 0.9 on learned
                 models); metrics add the log-normaliser log_z

Writes OUT/samples.pt (torch tensor (n, 2); load with torch.load(..., weights_only=True)),
OUT/samples.npy (the same as a NumPy array), OUT/samples.png (exact density, the samples, exact
samples), OUT/metrics.json and OUT/metrics.md (TV against the exact density with its noise floor,
MMD², energy distance against ground-truth samples, NFE, acceptance, divergences, time). The files
move into OUT only after the run succeeded: other files in OUT are kept, and after an error or
Ctrl-C nothing is written. A target that does not fit the bounds (flat, improper, e.g. "NOT ring")
is refused before the run; a run that diverges (non-finite or exploding samples, Langevin
divergences, everything rejected) is an error, not a result (exit status 2 for both).

Several processes: `torchrun --nproc_per_node=P --no-python -- ebmcompose sample ...` splits the
chains into blocks of --block chains (each seeded from --seed and its index) over the P processes
and writes the same files as the plain command; rank 0 writes them, and an error on any rank
writes nothing. The samples depend on --seed and --block, not on P. The `--` keeps torchrun from
reading `--n` as a prefix of its own options. smc runs ONE population of --n particles in the same
blocks (default 512, also in one process): each block draws its start, proposal noise and
rejuvenation moves from its own stream and adapts its own rejuvenation step size, while the ESS,
the resampling and log_z use every particle's weight (gathered across the processes), so samples,
log_z and resampling events depend on --seed and --block, not on P.
"""

EPILOG = """\
examples:
  ebmcompose sample --task product --sampler pc-mala --out product-pc
  ebmcompose sample --expr "ring AND NOT 0.5*bar" --sampler mala --n 4000 --out ring-not-bar
  ebmcompose sample --task negation --model epsilon --sampler pc-ula --levels 100 --out neg-eps
  ebmcompose sample --task mixture --model energy --sampler ddpm --device cuda --out mix
  torchrun --nproc_per_node=2 --no-python -- ebmcompose sample --task product --n 4000 --out product-2
  ebmcompose sample --task product --sampler smc --particles 2000 --levels 50 --out product-smc
"""


def add_parser(subparsers) -> None:
    """Register ``sample`` (sets ``func``)."""
    s = subparsers.add_parser(
        "sample", parents=[common_options()], formatter_class=Formatter, description=DESCRIPTION, epilog=EPILOG,
        help="sample one composition (a task or an expression) with one sampler; write samples, plot, metrics",
    )
    tgt = s.add_argument_group("target (exactly one)")
    tgt.add_argument("--task", help="product, mixture or negation")
    tgt.add_argument("--expr", help='an expression over ring, bar, left, right, box, small, e.g. "ring AND NOT 0.5*bar"')
    mdl = s.add_argument_group("model")
    mdl.add_argument("--model", choices=ex.MODELS, default="exact", help="exact analytic energies or learned checkpoints (default: %(default)s)")
    mdl.add_argument("--checkpoint-dir", help="folder of learned checkpoints (from `ebmcompose train`; default: the shipped toy/checkpoints)")
    smp = s.add_argument_group("sampler")
    smp.add_argument("--sampler", choices=ex.SAMPLERS, default="pc-mala", help="(default: %(default)s)")
    smp.add_argument("--steps", type=positive_int, help="MCMC transitions of ula/mala/hmc")
    smp.add_argument("--step-size", type=positive_float, help="step size (> 0); omitted: adapted")
    smp.add_argument("--leapfrog", type=positive_int, help="leapfrog steps per HMC transition")
    smp.add_argument("--levels", type=positive_int, help="noise levels of annealed / ddpm / ddim / pc-*")
    smp.add_argument("--corrector-steps", type=nonnegative_int, help="MCMC transitions per level (annealed, pc-*)")
    smp.add_argument("--kernel", choices=ex.KERNELS, help="kernel of --sampler annealed (default: ula)")
    smp.add_argument("--step-rule", choices=ex.STEP_RULES, help="corrector step-size rule of pc-* (default: adapt)")
    smp.add_argument("--clip-x0", type=nonnegative_float, help="clamp the x0-prediction to [-X, X]; 0: off")
    smp.add_argument("--t", type=diffusion_time, help="time at which static samplers evaluate learned models (default 0.01)")
    smp.add_argument("--particles", type=positive_int, help="smc: particle population = samples written (same as --n)")
    smp.add_argument("--ess-threshold", type=_fraction, help="smc: resample when ESS/particles falls below it, in [0, 1] (default 0.5)")
    smp.add_argument("--rejuvenate", choices=ex.REJUVENATE, help="smc: MCMC kernel after each level's resampling (default: mala; none with --weights fkc)")
    smp.add_argument("--weights", choices=ex.SMC_WEIGHTS,
                     help="smc: importance weights from energy values, or Feynman-Kac corrector weights from scores "
                     "(default: energy for --model exact, fkc for learned models where it applies)")
    smp.add_argument("--init-scale", type=positive_float, default=3.0, help="static samplers start from N(0, s²I) (default: %(default)s)")
    run_ = s.add_argument_group("run")
    run_.add_argument("--n", type=positive_int, default=_DEFAULT_N, help="number of samples (chains) (default: %(default)s)")
    run_.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    run_.add_argument("--block", type=positive_int, default=None,
                      help="chains per block, each with its own random stream, spread over torchrun "
                      "processes; the samples depend on it like on --seed, not on the number of processes "
                      "(default: 512; smc: blocks of one population, resampled across all of them)")
    run_.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    run_.add_argument("--out", default="sample-output", help="output folder (default: %(default)s; other files in it are kept)")
    run_.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar (default: on a terminal)")
    s.set_defaults(func=run)


def check_options(args) -> None:
    """Reject options the chosen sampler does not use, and inconsistent combinations."""
    s = args.sampler
    if (args.task is None) == (args.expr is None):
        raise UsageError('give exactly one of --task NAME (product, mixture, negation) or --expr "ring AND NOT 0.5*bar"')
    if args.checkpoint_dir is not None and args.model == "exact":
        raise UsageError("--checkpoint-dir applies to learned models: add --model epsilon or --model energy")
    for opt, users in _OPTION_USERS.items():
        if getattr(args, opt) is None or s in users:
            continue
        hint = " (ladder samplers take --levels and --corrector-steps)" if opt == "steps" else ""
        raise UsageError(
            f"--{opt.replace('_', '-')} does not apply to --sampler {s}; it is used by {', '.join(users)}{hint}. "
            f"See `ebmcompose sample --help` for the settings of each sampler."
        )
    if args.leapfrog is not None and s == "annealed" and (args.kernel or "ula") != "hmc":
        raise UsageError("--leapfrog applies to --sampler annealed only with --kernel hmc")
    if args.t is not None and args.model == "exact":
        raise UsageError(
            "--t applies only to static samplers on learned models (--model epsilon/energy, which are "
            "time-dependent); --model exact static samplers target the static composed energy"
        )
    if s == "annealed" and args.corrector_steps == 0:
        raise UsageError("--sampler annealed needs --corrector-steps >= 1 (0 turns correction off only for pc-*)")
    if args.particles is not None:
        if args.n not in (args.particles, _DEFAULT_N):
            raise UsageError(f"--particles {args.particles} and --n {args.n} disagree: smc writes one sample per particle; give one of them")
        args.n = args.particles
    if s == "smc" and args.step_rule == "beta":
        raise UsageError("--step-rule beta is not available for smc; use adapt, sigma2 or fixed")
    rule = args.step_rule or "adapt"
    if s in ex.PC_SAMPLERS + ("smc",) and rule != "adapt" and args.step_size is None:
        raise UsageError(f"--step-rule {rule} scales a base step size: give --step-size too (or use --step-rule adapt)")


def check_smc_kernel(args, weights: str) -> None:
    """Reject rejuvenation options of ``--sampler smc`` that its kernel (from ``--rejuvenate`` and the
    resolved ``weights``, :func:`~ebmcompose.cli.experiments.smc_rejuvenate`) does not use."""
    rej = ex.smc_rejuvenate(args.rejuvenate, weights)
    if args.leapfrog is not None and rej != "hmc":
        raise UsageError("--leapfrog applies to --sampler smc only with --rejuvenate hmc")
    if weights == "fkc" and rej in ("mala", "hmc"):
        raise UsageError(f"--rejuvenate {rej} needs energy values, which --weights fkc does without: use "
                         "--rejuvenate ula (a heuristic) or none, or --weights energy with --model energy or exact")
    if rej == "none" and (args.step_size is not None or args.step_rule is not None or args.corrector_steps):
        raise UsageError("--step-size, --step-rule and --corrector-steps set the rejuvenation kernel, and "
                         f"--sampler smc has none here (--rejuvenate none{', the default with --weights fkc' if args.rejuvenate is None else ''}): "
                         f"drop them, or give --rejuvenate {'ula' if weights == 'fkc' else 'ula, mala or hmc'}")


def _fatal_problems(res, quiet: bool = False) -> "str | None":
    """Why a run's output is not a sample (the samplers' own checks, ``res.warnings``), or ``None``.

    When it is a sample, the problems that make it suspect are printed as warnings (unless ``quiet``).
    """
    fatal = [p.what for p in res.warnings if p.fatal]
    if fatal:
        return "; ".join(fatal)
    for p in () if quiet else res.warnings:
        fix = "a larger --step-size" if p.kind == "high_acceptance" else "a smaller --step-size"
        print(f"ebmcompose sample: warning: {p.what}; use {fix}, or leave it out so that it is adapted", file=sys.stderr)
    return None


def _markdown(record: dict) -> str:
    m, cfg = record["metrics"], record["config"]
    target = f"task {cfg['task']}" if cfg["task"] else f"`{cfg['expr']}`"
    table = ex.markdown_table(
        ["sampler", "model", "TV (floor)", "MMD²", "energy dist.", "acceptance", "divergences", "NFE", "time (s)"],
        [[cfg["sampler"], cfg["model"], f"{m['tv']:.3f} ({m['tv_floor']:.3f})", ex.fmt(m["mmd"], ".4f"),
          ex.fmt(m["energy_distance"], ".4f"), ex.fmt(m["acceptance"], ".2f"), m["divergences"], m["nfe"],
          f"{m['seconds']:.2f}"]],
    )
    return (
        f"# ebmcompose sample\n\nTarget: {target} ({record['target']}); model: {cfg['model']}; sampler: "
        f"{cfg['sampler']}; n = {cfg['n']}; seed = {cfg['seed']}.\n\n{table}\n"
        f"TV: total variation between a {ex.TV_RESOLUTION}×{ex.TV_RESOLUTION} histogram of the samples and the "
        "exact density on the bounds; the floor in brackets is what an exact sample of the same size scores. "
        "MMD² (unbiased, multi-bandwidth RBF) and energy distance compare against a ground-truth sample "
        f"({record['ground_truth']}). NFE counts energy/score evaluations (one per network call for learned "
        "models, whose leaves run in one batched forward).\n"
    )


_CONFIG_KEYS = (
    "task", "expr", "model", "checkpoint_dir", "sampler", "n", "seed", "device", "steps", "step_size",
    "leapfrog", "levels", "corrector_steps", "kernel", "step_rule", "clip_x0", "t", "init_scale", "block",
    "ess_threshold", "rejuvenate", "weights",
)


def run(args) -> int:
    """Run ``ebmcompose sample``; returns the exit status."""
    from ebmcompose import distributed

    check_options(args)
    dev = device(args.device)
    # smc: one population of --n particles in blocks of --block (resampled across all blocks and ranks)
    args.block = args.block or distributed.DEFAULT_BLOCK
    with distributed.session(dev) as session:
        with distributed.all_or_none(session):  # a bad --out stops every rank before the run
            if session.is_main:
                writable_base(args.out)
        with staged_output(args.out, "sample") if session.is_main else contextlib.nullcontext() as staging:
            record, x, exact, target = _sample(args, session)
            if session.is_main:
                _write(staging, args, record, x, exact, target)
    if not session.is_main:
        return 0
    m = record["metrics"]
    if m["outside_bounds"] > 0.5:
        hint = " (try --clip-x0 6 or more --levels)" if args.sampler in ("ddpm", "ddim") + ex.PC_SAMPLERS else ""
        print(f"ebmcompose sample: warning: {m['outside_bounds']:.0%} of the samples lie outside the bounds "
              f"{tuple(target.bounds)}{hint}", file=sys.stderr)
    acc = "" if m["acceptance"] is None else f", acceptance {m['acceptance']:.2f}"
    print(f"[sample] {target.label} | {args.sampler} on {args.model}: TV {m['tv']:.3f} "
          f"(floor {m['tv_floor']:.3f}), NFE {m['nfe']}{acc}, {m['seconds']:.2f} s")
    print(f"[sample] wrote {args.out}/ ({', '.join(FILES)})")
    return 0


def _sample(args, session):
    """Every rank samples its blocks; rank 0 gets ``(record, x, exact, target)``, the others ``Nones``."""
    import torch

    import samplers
    from ebmcompose import distributed

    dev = session.device

    target = ex.build_target(
        task=args.task, expr=args.expr, model=args.model, static_sampler=args.sampler in ex.STATIC_SAMPLERS,
        checkpoint_dir=args.checkpoint_dir, t=args.t, device=str(dev),
    )
    weights = ex.smc_weights(args.weights, target.energy, args.model == "exact") if args.sampler == "smc" else None
    if weights is not None:
        check_smc_kernel(args, weights)
    if ex.needs_energy(args.sampler, args.kernel, weights) and not target.energy.has_energy:
        kind = f"{args.sampler} with --kernel {args.kernel}" if args.sampler == "annealed" else args.sampler
        smc = args.sampler == "smc"
        raise UsageError(
            f"--sampler {kind} needs energy values for its {'importance weights' if smc else 'Metropolis accept/reject step'}, but --model "
            f"{args.model} provides scores only (epsilon networks). Use "
            + ("--weights fkc (Feynman-Kac corrector weights from scores), " if smc else "")
            + "a score-only sampler (ula, pc-ula, ddpm, ddim or annealed with --kernel ula), or --model energy "
            "(energy-parameterised checkpoints) or --model exact."
        )
    _check_fits_bounds(target)
    opts = dataclasses.replace(ex.SamplerOptions.from_args(args), weights=weights)
    sampler = ex.make_sampler(opts, target.schedule, exact=args.model == "exact")
    run = dict(seed=args.seed, block=args.block, session=session,
               progress=progress(args.progress), on_divergence="ignore")
    t0 = time.perf_counter()
    try:
        if args.sampler in ex.STATIC_SAMPLERS:
            def init(m, g):
                return args.init_scale * torch.randn(m, 2, generator=g, device=dev)

            res = distributed.sample(sampler, target.energy, args.n, init=init, t=target.t, **run)
        else:
            res = distributed.sample(sampler, target.energy, args.n, event_shape=(2,), device=dev, **run)
    except samplers.NonFiniteStateError as exc:
        raise UsageError(
            f"--sampler {args.sampler} diverged: {str(exc).rstrip('.')}. Use a smaller --step-size (or leave "
            "it out to adapt it). Nothing was written."
        ) from None
    seconds = time.perf_counter() - t0
    x = res.samples.detach()
    acceptance = res.acceptance if ex.needs_energy(args.sampler, args.kernel, weights) else None
    summary = ex.RunSummary(res.nfe, acceptance, res.divergences, res.step_size)
    why = _fatal_problems(res, quiet=not session.is_main)
    if why is not None:
        hint = "Use a smaller --step-size, or leave it out so that it is adapted."
        if args.sampler in ("ddpm", "ddim"):
            hint = "Use more --levels, or --clip-x0 6 to clamp the x0-prediction."
        raise UsageError(f"--sampler {args.sampler} diverged: {why}. {hint} Nothing was written.")
    if not session.is_main:
        return None, None, None, None

    t1 = time.perf_counter()
    exact = target.sample_exact(args.n, generator=ex.generator(args.seed + 10)).detach().to("cpu", torch.float64)
    floor = ex.tv_floor(target.static, target.bounds, args.n, args.seed + 11)
    cmp = ex.compare_to_exact(x, exact, target.static, target.bounds, args.seed + 12)
    metrics = dict(
        tv=cmp["tv"], tv_floor=float(floor.mean), tv_floor_std=float(floor.std), outside_bounds=cmp["outside"],
        mmd=cmp["mmd"], energy_distance=cmp["energy_distance"], metrics_seconds=round(time.perf_counter() - t1, 3),
        nfe=summary.nfe, acceptance=summary.acceptance, divergences=summary.divergences, seconds=round(seconds, 3),
    )
    if summary.step_size is not None:
        metrics["step_size"] = summary.step_size
    if res.population is not None:  # smc (one population): log-normaliser estimate and resampling events
        metrics.update(log_z=res.population["log_z"], n_resampled=res.population["n_resampled"])
    record = {
        "config": {k: getattr(args, k) for k in _CONFIG_KEYS},
        "sampler": repr(sampler),
        "energy": str(target.energy),
        "target": target.label,
        "ground_truth": target.ground_truth,
        "bounds": list(target.bounds),
        "metrics": metrics,
    }
    return record, x.to("cpu"), exact, target


def _check_fits_bounds(target) -> None:
    """Refuse, before the run, a target whose exact density has its mass at the edge of the bounds."""
    import toy

    try:
        toy.check_fits_bounds(target.static, target.bounds, what=f"the target {target.label!r}")
    except toy.ImproperTargetError as exc:
        raise UsageError(f"{exc} Nothing was run or written.") from None


def _write(folder, args, record, x, exact, target) -> None:
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    from ebmcompose import plot
    from ebmcompose.io import write_json, write_text

    m = record["metrics"]
    fig = plot.compare({f"{args.sampler} ({args.model})": x, "exact samples": exact.float()},
                       reference=target.static, bounds=target.bounds)
    fig.suptitle(f"{target.label} — TV {m['tv']:.3f} (floor {m['tv_floor']:.3f}), NFE {m['nfe']}", fontsize=9)
    try:
        torch.save(x.clone(), folder / "samples.pt")
        np.save(folder / "samples.npy", x.numpy())
        plot.save(fig, folder / "samples.png")
        write_json(folder / "metrics.json", record)
        write_text(folder / "metrics.md", _markdown(record))
    finally:
        plt.close(fig)
