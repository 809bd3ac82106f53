"""The ``ebmcompose`` command line.

Subcommands::

    ebmcompose demo   --out demo-output                         # the main job (benchmarks.demo)
    ebmcompose sample --task product --sampler pc-mala --out s   # one composition, one sampler
    ebmcompose sample --expr "ring AND NOT 0.5*bar" --sampler mala
    ebmcompose train  --tasks product --quick --out ckpt         # toy checkpoints (benchmarks.train_toy)
    ebmcompose bench  speed --quick                              # benchmarks.sampler_speed
    ebmcompose bench  composition --quick                        # benchmarks.composition_2d

User errors (bad settings, unknown names, a missing GPU or checkpoint, a sampler that diverged)
print one paragraph saying what to do and exit with status 2; ``--debug`` shows the Python
traceback instead. Every output folder is built in a temporary sibling and swapped in whole
(:func:`ebmcompose.io.atomic_dir`): after an error or Ctrl-C nothing is half-written.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

__all__ = ["main", "build_parser", "UserError", "SAMPLERS", "MODELS"]

#: ``--sampler`` choices of ``ebmcompose sample``.
SAMPLERS = ("ula", "mala", "hmc", "annealed", "ddpm", "ddim", "pc-ula", "pc-mala", "pc-hmc")
#: ``--model`` choices: analytic energies or the learned checkpoints.
MODELS = ("exact", "epsilon", "energy")
STATIC_SAMPLERS = ("ula", "mala", "hmc")
PC_SAMPLERS = ("pc-ula", "pc-mala", "pc-hmc")
DIFFUSION_SAMPLERS = ("annealed", "ddpm", "ddim") + PC_SAMPLERS
KERNELS = ("ula", "mala", "hmc")
STEP_RULES = ("adapt", "sigma2", "beta", "fixed")
#: Histogram cells per axis of the TV metric (as in the demo).
TV_RESOLUTION = 32
#: Files ``ebmcompose sample`` writes.
SAMPLE_FILES = ("samples.pt", "samples.npy", "samples.png", "metrics.json", "metrics.md")
#: A sample farther out than this is a divergence, not a sample (the toy targets live in [-6, 6]²).
DIVERGED_ABS = 1e6


class UserError(Exception):
    """A mistake in the command line: reported without a traceback."""


class _UsageError(Exception):
    """An argparse error (bad option or value), reported like a :class:`UserError`."""

    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors return to :func:`main` instead of exiting the process."""

    def error(self, message):  # noqa: D401 (argparse API)
        raise _UsageError(self.prog, message)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the descriptions' and examples' line breaks; shows defaults where given."""


# ----------------------------------------------------------------------------- small helpers
def _device(name: str) -> str:
    import torch

    if name == "cpu":
        return name
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(
                f"--device {name} was requested but this machine has no CUDA GPU that torch can use "
                f"(torch {torch.__version__}). Run with --device cpu, or install a CUDA build of torch "
                "on a machine with an NVIDIA GPU."
            )
        if ":" in name:
            try:
                index = int(name.split(":", 1)[1])
            except ValueError:
                raise UserError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
            if not 0 <= index < torch.cuda.device_count():
                raise UserError(
                    f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                    f"(cuda:0 to cuda:{torch.cuda.device_count() - 1}); pick one of those or --device cuda"
                )
        return name
    raise UserError(f"unknown device {name!r}; use cpu or cuda (cuda:N for a specific GPU)")


def _set_threads(n: int) -> None:
    """Set torch's CPU thread count explicitly."""
    import torch

    torch.set_num_threads(n)


def _checked(cast: Callable, ok: Callable[[float], bool], expected: str) -> Callable[[str], Any]:
    """An argparse ``type``: ``cast(text)``, then ``ok(value)``, else "expected ``expected``"."""

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not (math.isfinite(value) and ok(value)):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value

    parse.__name__ = expected  # argparse names the type in its messages
    return parse


_positive_int = _checked(int, lambda v: v > 0, "a positive integer")
_nonnegative_int = _checked(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _checked(float, lambda v: v > 0, "a positive, finite number")
_nonnegative_float = _checked(float, lambda v: v >= 0, "a finite number >= 0")
_time = _checked(float, lambda v: 0.0 < v <= 1.0, "a diffusion time in (0, 1]")


def _progress(flag: Optional[bool]) -> bool:
    """``--progress`` / ``--no-progress``; by default a bar only on an interactive terminal."""
    if flag is not None:
        return flag
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _check_out(path: Path, markers: Sequence[str], what: str) -> None:
    """Refuse to replace a folder that is not an earlier output of this command.

    :func:`ebmcompose.io.atomic_dir` swaps the new folder in for the old one *whole*, so a typo
    such as ``--out .`` must not replace the current directory.
    """
    resolved = path.expanduser().resolve()
    if resolved in {Path.cwd().resolve(), Path.home().resolve(), Path(resolved.anchor)}:
        raise UserError(
            f"--out {path} is the current, home or root directory; {what} replaces its output folder "
            "as a whole, so give it a folder of its own (e.g. --out results/run1)"
        )
    if resolved.exists():
        if not resolved.is_dir():
            raise UserError(f"--out {path} exists and is not a folder; choose another --out")
        entries = [p.name for p in resolved.iterdir()]
        if entries and not any(m in entries for m in markers):
            raise UserError(
                f"--out {path} already exists and does not look like an earlier {what} output "
                f"(none of {', '.join(markers)} in it); {what} replaces the folder as a whole, so "
                "choose a new folder or remove this one first"
            )


# ----------------------------------------------------------------------------- demo
def _cmd_demo(args) -> int:
    from . import demo
    import toy

    unknown = [t for t in args.tasks if t not in toy.tasks.names()]
    if unknown:
        raise UserError(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(toy.tasks.names())}")
    device = _device(args.device)
    out = Path(args.out)
    _check_out(out, ("metrics.json", "demo.png"), "ebmcompose demo")
    cfg = demo.DemoConfig(n=args.n, seed=args.seed, tasks=tuple(args.tasks), device=device)
    if args.quick:
        cfg = demo.DemoConfig(
            n=min(args.n, 500), seed=args.seed, tasks=tuple(args.tasks), device=cfg.device,
            diffusion_steps=40, pc_levels=20, corrector_steps=1, mala_steps=100,
        )
    demo.run_demo(out, cfg)
    return 0


# ----------------------------------------------------------------------------- sample
def _tasks_and_components():
    """``(tasks, owner)``: every toy task by name, and the task owning each component name."""
    import toy

    tasks = {name: toy.tasks.get(name) for name in toy.tasks.names()}
    owner: Dict[str, str] = {}
    for tname, task in tasks.items():
        for cname in task.components:
            assert cname not in owner, f"component name {cname!r} is used by two tasks"
            owner[cname] = tname
    return tasks, owner


def _used_names(expr: str, known) -> List[str]:
    """The component names an expression mentions, in order of first use."""
    out: List[str] = []
    for name in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", expr):
        if name in known and name not in out:
            out.append(name)
    return out


def _load_learned(task_name: str, parameterisation: str, checkpoint_dir: Optional[str]):
    """``(model, labels, schedule)`` of one task's checkpoint (shipped or from ``checkpoint_dir``)."""
    from ebmcompose.checkpoint import CheckpointError, CheckpointNotFoundError
    from toy import pretrained

    if checkpoint_dir is None:
        hint = (
            f"the shipped checkpoint is missing; regenerate it with `ebmcompose train --tasks {task_name} "
            f"--parameterisations {parameterisation} --out toy/checkpoints`"
        )
    else:
        if not Path(checkpoint_dir).is_dir():
            raise UserError(
                f"--checkpoint-dir {checkpoint_dir} is not a folder. Point it at a folder written by "
                f"`ebmcompose train` (e.g. `ebmcompose train --tasks {task_name} --parameterisations "
                f"{parameterisation} --out {checkpoint_dir}`), or leave it out to use the shipped "
                "checkpoints in toy/checkpoints."
            )
        hint = (
            f"train it with `ebmcompose train --tasks {task_name} --parameterisations {parameterisation} "
            f"--out {checkpoint_dir}`, or leave out --checkpoint-dir to use the shipped checkpoints"
        )
    stem = pretrained.checkpoint_path(task_name, parameterisation, checkpoint_dir)
    try:
        model, info = pretrained.load(task_name, parameterisation, checkpoint_dir, missing_hint=hint)
    except CheckpointNotFoundError:
        raise UserError(
            f"--model {parameterisation} needs the {parameterisation} checkpoint of task {task_name!r}, "
            f"but {stem}.safetensors / {stem}.json are missing: {hint}."
        ) from None
    except CheckpointError as exc:
        raise UserError(f"cannot load the {parameterisation} checkpoint of task {task_name!r}: {exc}") from None
    return model, info["labels"], model.schedule


def _needs_energy(sampler: str, kernel: str) -> bool:
    return sampler in ("mala", "hmc", "pc-mala", "pc-hmc") or (sampler == "annealed" and kernel != "ula")


#: Which ``sample`` options each sampler uses (an option given to a sampler that ignores it is an error).
_OPTION_USERS = {
    "steps": STATIC_SAMPLERS,
    "step_size": STATIC_SAMPLERS + ("annealed",) + PC_SAMPLERS,
    "leapfrog": ("hmc", "pc-hmc", "annealed"),
    "levels": DIFFUSION_SAMPLERS,
    "corrector_steps": ("annealed",) + PC_SAMPLERS,
    "kernel": ("annealed",),
    "step_rule": PC_SAMPLERS,
    "clip_x0": ("ddpm", "ddim") + PC_SAMPLERS,
    "t": STATIC_SAMPLERS,
}


def _check_options(args) -> None:
    s = args.sampler
    for opt, users in _OPTION_USERS.items():
        if getattr(args, opt) is None or s in users:
            continue
        flag = "--" + opt.replace("_", "-")
        hint = ""
        if opt == "steps":
            hint = " (ladder samplers take --levels and --corrector-steps)"
        raise UserError(
            f"{flag} does not apply to --sampler {s}; it is used by {', '.join(users)}{hint}. "
            f"See `ebmcompose sample --help` for the settings of each sampler."
        )
    if args.leapfrog is not None and s == "annealed" and (args.kernel or "ula") != "hmc":
        raise UserError("--leapfrog applies to --sampler annealed only with --kernel hmc")
    if args.t is not None and args.model == "exact":
        raise UserError(
            "--t applies only to static samplers on learned models (--model epsilon/energy, which are "
            "time-dependent); --model exact static samplers target the static composed energy"
        )
    if s == "annealed" and args.corrector_steps == 0:
        raise UserError("--sampler annealed needs --corrector-steps >= 1 (0 turns correction off only for pc-*)")
    rule = args.step_rule or "adapt"
    if s in PC_SAMPLERS and rule != "adapt" and args.step_size is None:
        raise UserError(f"--step-rule {rule} scales a base step size: give --step-size too (or use --step-rule adapt)")


def _make_sampler(args, schedule, exact: bool):
    """The sampler object of ``args.sampler`` with the command line's settings and defaults."""
    import samplers

    s, h = args.sampler, args.step_size
    if s == "ula":
        return samplers.ULA(step_size=h, n_steps=args.steps or 500)
    if s == "mala":
        return samplers.MALA(step_size=h, n_steps=args.steps or 500)
    if s == "hmc":
        return samplers.HMC(step_size=h, n_leapfrog=args.leapfrog or 10, n_steps=args.steps or 200)
    if s == "annealed":
        kernel_name = args.kernel or "ula"
        kernel = {
            "ula": lambda: samplers.ULA(),
            "mala": lambda: samplers.MALA(),
            "hmc": lambda: samplers.HMC(n_leapfrog=args.leapfrog or 5),
        }[kernel_name]()
        default_h = 0.1 if kernel_name == "hmc" else 0.01
        return samplers.AnnealedLangevin(
            schedule, n_levels=args.levels or 50, n_steps_per_level=(5 if args.corrector_steps is None else args.corrector_steps),
            step_size=default_h if h is None else h, kernel=kernel, adapt=h is None,
        )
    clip = args.clip_x0
    if clip is None:
        clip = None if exact else 6.0  # the toy bounds: tames the cosine schedule's first step
    elif clip == 0:
        clip = None
    if s in ("ddpm", "ddim"):
        return samplers.ReverseDiffusion(schedule, n_steps=args.levels or 100, eta=1.0 if s == "ddpm" else 0.0, clip_x0=clip)
    k = s.split("-", 1)[1]
    corrector = {
        "ula": lambda: samplers.ULA(step_size=h, n_steps=(2 if args.corrector_steps is None else args.corrector_steps)),
        "mala": lambda: samplers.MALA(step_size=h, n_steps=(2 if args.corrector_steps is None else args.corrector_steps)),
        "hmc": lambda: samplers.HMC(step_size=h, n_leapfrog=args.leapfrog or 5, n_steps=(2 if args.corrector_steps is None else args.corrector_steps)),
    }[k]()
    return samplers.PredictorCorrector(
        schedule, n_steps=args.levels or 50, corrector=corrector, step_rule=args.step_rule or "adapt",
        clip_x0=clip, final_correction=True if exact else None,
    )


def _target(args, device):
    """Everything ``sample`` needs about the target.

    Returns a dict: ``energy`` (what the sampler runs on), ``t`` (fixed time for static samplers
    on learned models, else ``None``), ``schedule``, ``static`` (the exact static composed
    energy: the ground truth), ``sample_exact(n, generator)``, ``ground_truth`` (how),
    ``bounds``, ``label``.
    """
    import ebmcompose as ec
    import toy

    tasks, owner = _tasks_and_components()
    static_leaves = {c: tasks[t].components[c] for c, t in owner.items()}
    bounds = toy.tasks.BOUNDS
    if args.task is not None:
        if args.task not in tasks:
            raise UserError(f"unknown task {args.task!r}; choose from {', '.join(tasks)} (or give --expr)")
        task = tasks[args.task]
        names = list(task.components)
        compose = task.compose
        static = task.composed
        bounds = task.bounds
        label = f"{task.name}: {task.description}"
        if task.exact is not None:
            sample_exact, how = task.sample_exact, "closed form (exact mixture)"
        else:
            sample_exact, how = task.sample_exact, "toy.reference_sample on a 512x512 grid over the bounds"
    else:
        try:
            static = ec.parse(args.expr, static_leaves)
        except ec.ParseError as exc:
            raise UserError(
                f"cannot parse --expr: {exc}\nComponent names: {', '.join(static_leaves)}; operators: "
                "AND/&, OR/|, NOT/-, +, w*name, (...), e.g. \"ring AND NOT 0.5*bar\"."
            ) from None
        names = _used_names(args.expr, owner)
        expr = args.expr

        def compose(leaves, _expr=expr):
            return ec.parse(_expr, leaves)

        label = f"{args.expr}"
        how = "toy.reference_sample of the static composed energy on a 512x512 grid over the bounds"

        def sample_exact(n, generator=None, _static=static):
            return toy.reference_sample(_static, n, bounds, resolution=512, generator=generator)

    static_sampler = args.sampler in STATIC_SAMPLERS
    t = None
    if args.model == "exact":
        # The linear schedule (as in the demo): the cosine one's alpha_bar(1) ~ 1e-8 makes the first
        # reverse step amplify the prior mismatch of compositions whose weights do not sum to one.
        schedule = ec.VPSchedule.linear()
        if static_sampler:
            energy = static
        else:
            energy = compose({c: static_leaves[c].diffused(schedule) for c in names})
    else:
        models: Dict[str, tuple] = {}
        for c in names:
            tname = owner[c]
            if tname not in models:
                models[tname] = _load_learned(tname, args.model, args.checkpoint_dir)
        schedules = {repr(m[2]) for m in models.values()}
        if len(schedules) > 1:
            raise UserError(
                f"the checkpoints of {', '.join(models)} were trained with different noise schedules "
                f"({'; '.join(sorted(schedules))}), so their time-dependent energies do not compose; "
                "retrain them together with `ebmcompose train`"
            )
        schedule = next(iter(models.values()))[2]
        leaves = {}
        for c in names:
            model, labels, _ = models[owner[c]]
            if c not in labels:
                raise UserError(f"the {args.model} checkpoint of task {owner[c]!r} has no component {c!r} (it has {', '.join(labels)})")
            leaves[c] = model.condition(labels[c], name=c)
        try:
            energy = compose(leaves)
        except ec.ScoreOnlyError:
            raise UserError(
                "OR / | (a mixture) needs energies: it weights each component's score by its posterior "
                "exp(-E_i)/sum_j exp(-E_j), but --model epsilon models are score-only. Use --model energy "
                "(learned energies) or --model exact, or drop the | from the expression."
            ) from None
        if static_sampler:
            t = 0.01 if args.t is None else args.t
    if _needs_energy(args.sampler, args.kernel or "ula") and not energy.has_energy:
        kind = f"{args.sampler} with --kernel {args.kernel}" if args.sampler == "annealed" else args.sampler
        raise UserError(
            f"--sampler {kind} needs energy values for its Metropolis accept/reject step, but --model "
            f"{args.model} provides scores only (epsilon networks). Use a score-only sampler (ula, "
            "pc-ula, ddpm, ddim or annealed with --kernel ula), or --model energy (energy-parameterised "
            "checkpoints) or --model exact."
        )
    if device != "cpu":
        # nn.Module.to moves in place: keep the static target (ground truth, plots) on the CPU.
        energy = copy.deepcopy(energy).to(device)
    return dict(
        energy=energy, t=t, schedule=schedule, static=static, sample_exact=sample_exact,
        ground_truth=how, bounds=bounds, label=label,
    )


def _mean_acceptance(info) -> Optional[float]:
    import torch

    acc = info.get("acceptance")
    if acc is None:
        return None
    acc = torch.as_tensor(acc).detach().double().cpu().flatten()
    acc = acc[~acc.isnan()]
    return float(acc.mean()) if acc.numel() else None


def _diverged(args, samples, info, acceptance) -> Optional[str]:
    """Why a run's output is not a sample (non-finite, blown up, all rejected), or ``None``."""
    import torch

    bad = ~torch.isfinite(samples).all(dim=-1)
    if bool(bad.any()):
        return f"{int(bad.sum())} of {samples.shape[0]} samples are NaN or infinite"
    unadjusted = args.sampler in ("ula", "pc-ula") or (args.sampler == "annealed" and (args.kernel or "ula") == "ula")
    div = int(info.get("divergences", 0) or 0)
    if unadjusted and div > 0:
        return f"{div} Langevin steps produced a non-finite energy gradient (divergences)"
    big = float(samples.abs().max()) if samples.numel() else 0.0
    if big > DIVERGED_ABS:
        return f"samples reached |x| = {big:.3g} (the toy targets live in [-6, 6]^2)"
    if _needs_energy(args.sampler, args.kernel or "ula") and acceptance is not None and acceptance < 0.01:
        return f"the Metropolis acceptance rate was {acceptance:.3g}: almost every proposal was rejected"
    return None


def _sample_metrics(target, samples, args):
    """``(metrics dict, ground-truth samples (n, 2) float64 on the CPU)``."""
    import torch

    import ebmcompose as ec

    cpu = torch.device("cpu")
    g = torch.Generator(device=cpu).manual_seed(args.seed + 10)
    t0 = time.perf_counter()
    exact = target["sample_exact"](args.n, generator=g).detach().to(cpu, torch.float64)
    x = samples.detach().to(cpu, torch.float64)
    static, bounds = target["static"], target["bounds"]
    tv = ec.metrics.histogram_tv(x, static, bounds, resolution=TV_RESOLUTION)
    floor = ec.metrics.histogram_tv_baseline(
        static, bounds, args.n, resolution=TV_RESOLUTION, generator=torch.Generator().manual_seed(args.seed + 11)
    )
    out = dict(
        tv=float(tv.tv), tv_floor=float(floor.mean), tv_floor_std=float(floor.std), outside_bounds=float(tv.outside),
        mmd=None, energy_distance=None,
    )
    if args.n >= 2:
        out["mmd"] = float(ec.metrics.mmd(x, exact, generator=torch.Generator().manual_seed(args.seed + 12)))
        out["energy_distance"] = float(
            ec.metrics.energy_distance(x, exact, generator=torch.Generator().manual_seed(args.seed + 13))
        )
    out["metrics_seconds"] = round(time.perf_counter() - t0, 3)
    return out, exact


def _metrics_markdown(record: dict) -> str:
    m = record["metrics"]
    acc = "–" if m["acceptance"] is None else f"{m['acceptance']:.2f}"
    mmd = "–" if m["mmd"] is None else f"{m['mmd']:.4f}"
    ed = "–" if m["energy_distance"] is None else f"{m['energy_distance']:.4f}"
    cfg = record["config"]
    target = f"task {cfg['task']}" if cfg["task"] else f"`{cfg['expr']}`"
    return (
        f"# ebmcompose sample\n\n"
        f"Target: {target} ({record['target']}); model: {cfg['model']}; sampler: {cfg['sampler']}; "
        f"n = {cfg['n']}; seed = {cfg['seed']}.\n\n"
        "| sampler | model | TV (floor) | MMD² | energy dist. | acceptance | divergences | NFE | time (s) |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
        f"| {cfg['sampler']} | {cfg['model']} | {m['tv']:.3f} ({m['tv_floor']:.3f}) | {mmd} | {ed} | {acc} | "
        f"{m['divergences']} | {m['nfe']} | {m['seconds']:.2f} |\n\n"
        f"TV: total variation between a {TV_RESOLUTION}×{TV_RESOLUTION} histogram of the samples and the exact "
        "density on the bounds; the floor in brackets is what an exact sample of the same size scores. "
        "MMD² (unbiased, multi-bandwidth RBF) and energy distance compare against a ground-truth sample "
        f"({record['ground_truth']}). NFE counts energy/score evaluations (one per network call for learned "
        "models, whose leaves run in one batched forward).\n"
    )


def _cmd_sample(args) -> int:
    import numpy as np
    import torch

    import samplers
    from ebmcompose import plot
    from ebmcompose.io import atomic_dir, write_json, write_text

    if (args.task is None) == (args.expr is None):
        raise UserError('give exactly one of --task NAME (product, mixture, negation) or --expr "ring AND NOT 0.5*bar"')
    if args.checkpoint_dir is not None and args.model == "exact":
        raise UserError("--checkpoint-dir applies to learned models: add --model epsilon or --model energy")
    _check_options(args)
    device = _device(args.device)
    out = Path(args.out)
    _check_out(out, SAMPLE_FILES, "ebmcompose sample")

    target = _target(args, device)
    sampler = _make_sampler(args, target["schedule"], exact=args.model == "exact")
    g = torch.Generator(device=device).manual_seed(args.seed)
    progress = _progress(args.progress)
    t0 = time.perf_counter()
    try:
        if args.sampler in STATIC_SAMPLERS:
            x0 = args.init_scale * torch.randn(args.n, 2, generator=g, device=device)
            res = sampler.sample(target["energy"], x0, target["t"], generator=g, progress=progress)
        else:
            res = sampler.sample(target["energy"], shape=(args.n, 2), generator=g, device=device, progress=progress)
    except samplers.NonFiniteStateError as exc:
        raise UserError(
            f"--sampler {args.sampler} diverged: {str(exc).rstrip('.')}. Use a smaller --step-size (or leave "
            "it out to adapt it). Nothing was written."
        ) from None
    seconds = time.perf_counter() - t0
    samples = res.samples.detach()
    acceptance = _mean_acceptance(res.info) if _needs_energy(args.sampler, args.kernel or "ula") else None
    why = _diverged(args, samples, res.info, acceptance)
    if why is not None:
        hint = "Use a smaller --step-size, or leave it out so that it is adapted."
        if args.sampler in ("ddpm", "ddim"):
            hint = "Use more --levels, or --clip-x0 6 to clamp the x0-prediction."
        raise UserError(f"--sampler {args.sampler} diverged: {why}. {hint} Nothing was written.")

    metrics, exact = _sample_metrics(target, samples, args)
    metrics.update(
        nfe=int(res.info["nfe"]), acceptance=acceptance, divergences=int(res.info.get("divergences", 0) or 0),
        seconds=round(seconds, 3),
    )
    if "step_size" in res.info and res.info["step_size"] is not None and torch.as_tensor(res.info["step_size"]).numel() == 1:
        metrics["step_size"] = float(torch.as_tensor(res.info["step_size"]))
    config = {
        k: getattr(args, k)
        for k in (
            "task", "expr", "model", "checkpoint_dir", "sampler", "n", "seed", "device", "steps", "step_size",
            "leapfrog", "levels", "corrector_steps", "kernel", "step_rule", "clip_x0", "t", "init_scale",
        )
    }
    record = {
        "config": config,
        "sampler": repr(sampler),
        "energy": str(target["energy"]),
        "target": target["label"],
        "ground_truth": target["ground_truth"],
        "bounds": list(target["bounds"]),
        "metrics": metrics,
    }
    x_cpu = samples.to("cpu")
    fig = plot.compare(
        {f"{args.sampler} ({args.model})": x_cpu, "exact samples": exact.float()},
        reference=target["static"], bounds=target["bounds"],
    )
    fig.suptitle(f"{target['label']} — TV {metrics['tv']:.3f} (floor {metrics['tv_floor']:.3f}), NFE {metrics['nfe']}", fontsize=9)
    try:
        with atomic_dir(out) as tmp:
            torch.save(x_cpu.clone(), tmp / "samples.pt")
            np.save(tmp / "samples.npy", x_cpu.numpy())
            plot.save(fig, tmp / "samples.png")
            write_json(tmp / "metrics.json", record)
            write_text(tmp / "metrics.md", _metrics_markdown(record))
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    if metrics["outside_bounds"] > 0.5:
        hint = " (try --clip-x0 6 or more --levels)" if args.sampler in ("ddpm", "ddim") or args.sampler in PC_SAMPLERS else ""
        print(
            f"ebmcompose sample: warning: {metrics['outside_bounds']:.0%} of the samples lie outside the "
            f"bounds {tuple(target['bounds'])}{hint}",
            file=sys.stderr,
        )
    acc = "" if acceptance is None else f", acceptance {acceptance:.2f}"
    print(
        f"[sample] {target['label']} | {args.sampler} on {args.model}: TV {metrics['tv']:.3f} "
        f"(floor {metrics['tv_floor']:.3f}), NFE {metrics['nfe']}{acc}, {seconds:.2f} s"
    )
    print(f"[sample] wrote {out}/ ({', '.join(SAMPLE_FILES)})")
    return 0


# ----------------------------------------------------------------------------- train
def _write_files_atomically(out: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(folder)`` into a temporary folder, then move its files into ``out``.

    A new ``out`` appears whole (:func:`atomic_dir`); into an existing folder (e.g.
    ``toy/checkpoints``) each file is swapped in with ``os.replace``, leaving other files alone.
    """
    import shutil
    import tempfile

    from ebmcompose.io import atomic_dir

    if not out.exists():
        with atomic_dir(out) as tmp:
            write(tmp)
        return
    tmp = Path(tempfile.mkdtemp(prefix=".ebmcompose-train.", suffix=".tmp", dir=out))
    try:
        write(tmp)
        for f in sorted(tmp.iterdir()):
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cmd_train(args) -> int:
    import toy
    from toy import pretrained
    from toy.train import save_trained, train

    from . import train_toy

    unknown = [t for t in args.tasks if t not in toy.tasks.names()]
    if unknown:
        raise UserError(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(toy.tasks.names())}")
    out = Path(args.out) if args.out else Path(f"checkpoints-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder; choose another --out")
    shipped = out.resolve() == pretrained.CHECKPOINT_DIR.resolve()
    progress = _progress(args.progress)
    trained_all = []
    print(f"{'task':<10}{'param':<9}{'iters':>6}{'time_s':>8}{'loss':>9}  score rel. error (component: t=0.1 / t=0.5)")
    for task_name in dict.fromkeys(args.tasks):
        task = toy.tasks.get(task_name)
        for param in dict.fromkeys(args.parameterisations):
            settings = dict(train_toy.SETTINGS[param])
            if args.quick:
                settings["n_iters"] = train_toy.QUICK_ITERS
            if args.iters is not None:
                settings["n_iters"] = args.iters
            t0 = time.perf_counter()
            trained = train(param, task, seed=args.seed, name=task_name, progress=progress, **settings)
            elapsed = time.perf_counter() - t0
            errors = train_toy.evaluate(trained, task)
            trained_all.append((f"{task_name}_{train_toy.SUFFIX[param]}", trained, errors))
            errs = ", ".join(f"{n}: {e['t=0.1']:.3f} / {e['t=0.5']:.3f}" for n, e in errors.items())
            print(
                f"{task_name:<10}{param:<9}{settings['n_iters']:>6}{elapsed:>8.1f}{trained.final_loss:>9.4f}  {errs}",
                flush=True,
            )

    def write(folder: Path) -> None:
        for stem, trained, errors in trained_all:
            save_trained(folder / stem, trained, metrics={"score_relative_error": errors})

    _write_files_atomically(out, write)
    names = ", ".join(f"{stem}.safetensors/.json" for stem, _, _ in trained_all)
    print(f"[train] wrote {out}/ ({names})" + (" — replacing shipped checkpoints" if shipped else ""))
    if not shipped:
        print(f"[train] use them with: ebmcompose sample --task {args.tasks[0]} --model "
              f"{args.parameterisations[0]} --checkpoint-dir {out} --sampler pc-ula")
    return 0


# ----------------------------------------------------------------------------- bench
def _run_main(module, argv: List[str], name: str) -> int:
    try:
        rc = module.main(argv)
    except SystemExit as exc:  # an argparse error or an explicit sys.exit inside the benchmark
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(f"ebmcompose bench {name}: {code}", file=sys.stderr)
        return 1
    return int(rc or 0)


def _thread_list(text: str) -> str:
    """Validate ``--thread-counts`` (``"1,0"``) here, so a typo is a usage error before anything runs."""
    parts = [p.strip() for p in text.split(",")]
    if not parts or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated thread counts such as 1,2 (0 = all CPUs), got {text!r}")
    return ",".join(parts)


def _cmd_bench_speed(args) -> int:
    from . import sampler_speed

    device = _device(args.device)
    argv = ["--device", device, "--repeats", str(args.repeats), "--threads", args.thread_counts]
    if args.quick:
        argv.append("--quick")
    if not args.compile:
        argv.append("--no-compile")
    if not args.write:
        argv.append("--no-write")
    return _run_main(sampler_speed, argv, "speed")


def _cmd_bench_composition(args) -> int:
    import importlib

    argv = list(args.extra)
    if args.quick:
        argv.insert(0, "--quick")
    if args.device is not None:
        argv[:0] = ["--device", _device(args.device)]
    try:
        module = importlib.import_module("benchmarks.composition_2d")
    except ModuleNotFoundError as exc:
        if exc.name != "benchmarks.composition_2d":
            raise UserError(
                f"benchmarks/composition_2d.py could not be imported: {exc}. Install the missing package "
                "(bash .ci/env.sh installs the project's dependencies) and run it again."
            ) from None
        raise UserError(
            "the composition benchmark (benchmarks/composition_2d.py) is not in this checkout yet. "
            "Update your checkout, or run the samplers on the tasks yourself with "
            "`ebmcompose demo` or `ebmcompose sample --task product --sampler pc-mala`."
        ) from None
    if not callable(getattr(module, "main", None)):
        raise UserError("benchmarks/composition_2d.py has no main(argv) function; it cannot be run from the CLI yet")
    return _run_main(module, argv, "composition")


def _cmd_bench_none(args) -> int:
    raise UserError("choose a benchmark: `ebmcompose bench speed` or `ebmcompose bench composition` (see --help)")


# ----------------------------------------------------------------------------- parser
_SAMPLE_DESCRIPTION = """\
Sample one composition of the toy energies with one sampler, and measure it against the exact answer.

Target: --task NAME (product = ring AND bar, mixture = left OR right, negation = box AND NOT
0.5*small) or --expr "EXPRESSION" over the component names ring, bar, left, right, box, small
(operators AND/&, OR/|, NOT/-, +, w*name, parentheses).

Model: --model exact uses the analytic energies: static samplers (ula, mala, hmc) sample the
static composed energy, diffusion samplers (annealed, ddpm, ddim, pc-*) follow the composition of
the exactly *diffused* components (linear schedule). --model epsilon / energy use the learned
checkpoints (toy/checkpoints, or --checkpoint-dir DIR from `ebmcompose train`): the expression is
composed over the learned leaves; static samplers evaluate them at a fixed small time --t.
epsilon models are score-only: no mala/hmc/pc-mala/pc-hmc and no OR (|).

Settings (defaults in brackets; an option a sampler does not use is an error):
  ula, mala      --steps [500], --step-size [adapted by dual averaging], --t [0.01, learned only]
  hmc            --steps [200], --leapfrog [10], --step-size [adapted]
  annealed       --levels [50] x --corrector-steps [5] of --kernel [ula] (mala, hmc: --leapfrog [5]),
                 --step-size at the last level [0.01, hmc 0.1; adapted per level when omitted]
  ddpm, ddim     --levels [100], --clip-x0 [6 for learned models, off for exact]
  pc-ula/mala/hmc  --levels [50] predictor steps, --corrector-steps [2] per level,
                 --step-rule [adapt] (sigma2, beta, fixed need --step-size), --leapfrog [5], --clip-x0

Writes OUT/samples.pt (torch tensor (n, 2); load with torch.load(..., weights_only=True)),
OUT/samples.npy (the same as a NumPy array), OUT/samples.png (exact density, the samples, exact
samples), OUT/metrics.json and OUT/metrics.md (TV against the exact density with its noise floor,
MMD², energy distance against ground-truth samples, NFE, acceptance, divergences, time). The
folder is written atomically: after an error or Ctrl-C nothing is written. A run that diverges
(non-finite or exploding samples, everything rejected) is an error, not a result.
"""

_SAMPLE_EPILOG = """\
examples:
  ebmcompose sample --task product --sampler pc-mala --out product-pc
  ebmcompose sample --expr "ring AND NOT 0.5*bar" --sampler mala --n 4000 --out ring-not-bar
  ebmcompose sample --task negation --model epsilon --sampler pc-ula --levels 100 --out neg-eps
  ebmcompose sample --task mixture --model energy --sampler ddpm --device cuda --out mix
"""

_TRAIN_DESCRIPTION = """\
Train the toy component models by denoising score matching (toy.train; the settings of
benchmarks/train_toy.py): for each task and parameterisation one conditional ResMLP whose label k
is the task's k-th component and whose null label is their union. Prints the final loss and the
relative score error of each learned component against its exact diffused score at t = 0.1 and 0.5.

Writes OUT/<task>_eps.safetensors + .json (epsilon) and OUT/<task>_energy.safetensors + .json
(energy): safetensors weights plus a JSON config, never pickles. Each file is written atomically
(a new folder appears whole); other files in OUT are left alone. The default OUT is a new folder
checkpoints-<date>-<time>: the shipped toy/checkpoints are only replaced with an explicit
--out toy/checkpoints. Use the result with `ebmcompose sample --model epsilon --checkpoint-dir OUT`.
The full settings take about 1.5-2 minutes per model on one CPU core; training runs on the CPU.
"""

_TRAIN_EPILOG = """\
examples:
  ebmcompose train --tasks product --parameterisations energy --quick --out my-checkpoints
  ebmcompose train --out toy/checkpoints        # regenerate the shipped checkpoints
"""

_BENCH_DESCRIPTION = """\
Run a benchmark.

  speed        chain-steps per second of ULA, MALA and HMC against hand-written torch loops
               (benchmarks.sampler_speed); writes benchmarks/results/sampler_speed.json and .md
               unless --no-write.
  composition  sampler accuracy at matched NFE on the 2-D composition tasks
               (benchmarks.composition_2d); writes composition_2d.json, composition_2d.md and
               composition_2d_<task>.png to its --out folder (see `ebmcompose bench composition
               -- --help`).
"""


def _common() -> argparse.ArgumentParser:
    """Options every subcommand accepts (also after the subcommand's name)."""
    c = _Parser(add_help=False)
    c.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show Python tracebacks for errors")
    return c


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="ebmcompose",
        formatter_class=_Formatter,
        description=(
            "Compositional generation with energy-based models. Energies (analytic densities, "
            "learned diffusion models) compose with AND / NOT / OR, and interchangeable samplers "
            "(reverse diffusion, annealed Langevin, ULA, MALA, HMC, predictor-corrector) draw from "
            "the composition. Start with `ebmcompose demo`."
        ),
        epilog=(
            "examples:\n"
            "  ebmcompose demo --out demo-output\n"
            "  ebmcompose sample --task product --sampler pc-mala --out product-pc\n"
            "  ebmcompose train --tasks product --quick --out my-checkpoints\n"
            "  ebmcompose bench speed --quick\n"
            "Run `ebmcompose COMMAND --help` for what each command writes."
        ),
    )
    p.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    p.add_argument(
        "--threads", type=_positive_int, default=1,
        help="torch CPU threads (default: %(default)s; the toy tasks are small tensors, where "
        "extra threads only contend and run several times slower on a busy machine)",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    common = _common()
    from ebmcompose.cli import scenes as _scenes_cli  # scenes train|sample (registration moves at the CLI merge)

    _scenes_cli.add_parser(sub)

    # demo ------------------------------------------------------------------------------------
    d = sub.add_parser(
        "demo",
        parents=[common],
        formatter_class=_Formatter,
        help="compose the toy tasks, sample them, write plots and a metrics table",
        description=(
            "For the product (ring AND bar), mixture (left OR right) and negation (box AND NOT\n"
            "small box) tasks: draw exact samples, then sample with MALA on the composed energy,\n"
            "plain reverse diffusion on the summed diffused scores, and predictor-corrector with a\n"
            "MALA corrector; then predictor-corrector + MALA on the shipped learned models.\n\n"
            "Writes OUT/demo.png (all tasks), OUT/<task>.png, OUT/metrics.md and OUT/metrics.json\n"
            "(TV with its noise floor, MMD², energy distance, acceptance, NFE, time), atomically:\n"
            "nothing half-written on failure or Ctrl-C. About 10-30 s on a 2-core CPU."
        ),
        epilog="example:\n  ebmcompose demo --out demo-output\n  ebmcompose demo --quick --tasks product --out demo-quick",
    )
    d.add_argument("--out", default="demo-output", help="output folder (default: %(default)s)")
    d.add_argument("--n", type=_positive_int, default=2000, help="samples per sampler (default: %(default)s)")
    d.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    d.add_argument("--tasks", nargs="+", default=["product", "mixture", "negation"], help="tasks to run (default: all)")
    d.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    d.add_argument("--quick", action="store_true", help="a smaller, faster configuration (for smoke tests)")
    d.set_defaults(func=_cmd_demo)

    # sample ----------------------------------------------------------------------------------
    s = sub.add_parser(
        "sample",
        parents=[common],
        formatter_class=_Formatter,
        help="sample one composition (a task or an expression) with one sampler; write samples, plot, metrics",
        description=_SAMPLE_DESCRIPTION,
        epilog=_SAMPLE_EPILOG,
    )
    tgt = s.add_argument_group("target (exactly one)")
    tgt.add_argument("--task", help="product, mixture or negation")
    tgt.add_argument("--expr", help='an expression over ring, bar, left, right, box, small, e.g. "ring AND NOT 0.5*bar"')
    mdl = s.add_argument_group("model")
    mdl.add_argument("--model", choices=MODELS, default="exact", help="exact analytic energies or learned checkpoints (default: %(default)s)")
    mdl.add_argument("--checkpoint-dir", help="folder of learned checkpoints (from `ebmcompose train`; default: the shipped toy/checkpoints)")
    smp = s.add_argument_group("sampler")
    smp.add_argument("--sampler", choices=SAMPLERS, default="pc-mala", help="(default: %(default)s)")
    smp.add_argument("--steps", type=_positive_int, help="MCMC transitions of ula/mala/hmc")
    smp.add_argument("--step-size", type=_positive_float, help="step size (> 0); omitted: adapted")
    smp.add_argument("--leapfrog", type=_positive_int, help="leapfrog steps per HMC transition")
    smp.add_argument("--levels", type=_positive_int, help="noise levels of annealed / ddpm / ddim / pc-*")
    smp.add_argument("--corrector-steps", type=_nonnegative_int, help="MCMC transitions per level (annealed, pc-*)")
    smp.add_argument("--kernel", choices=KERNELS, help="kernel of --sampler annealed (default: ula)")
    smp.add_argument("--step-rule", choices=STEP_RULES, help="corrector step-size rule of pc-* (default: adapt)")
    smp.add_argument("--clip-x0", type=_nonnegative_float, help="clamp the x0-prediction to [-X, X]; 0: off")
    smp.add_argument("--t", type=_time, help="time at which static samplers evaluate learned models (default 0.01)")
    smp.add_argument("--init-scale", type=_positive_float, default=3.0, help="static samplers start from N(0, s²I) (default: %(default)s)")
    run = s.add_argument_group("run")
    run.add_argument("--n", type=_positive_int, default=1000, help="number of samples (chains) (default: %(default)s)")
    run.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    run.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    run.add_argument("--out", default="sample-output", help="output folder (default: %(default)s)")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar (default: on a terminal)")
    s.set_defaults(func=_cmd_sample)

    # train -----------------------------------------------------------------------------------
    t = sub.add_parser(
        "train",
        parents=[common],
        formatter_class=_Formatter,
        help="train the toy component models (epsilon / energy checkpoints)",
        description=_TRAIN_DESCRIPTION,
        epilog=_TRAIN_EPILOG,
    )
    t.add_argument("--tasks", nargs="+", default=["product", "mixture", "negation"], help="tasks to train (default: all)")
    t.add_argument(
        "--parameterisations", nargs="+", choices=["epsilon", "energy"], default=["epsilon", "energy"],
        help="epsilon (score-only) and/or energy models (default: both)",
    )
    t.add_argument("--out", help="output folder (default: a new folder checkpoints-<date>-<time>)")
    t.add_argument("--quick", action="store_true", help="300 iterations per model (smoke test, poor models)")
    t.add_argument("--iters", type=_positive_int, help="training iterations per model (overrides --quick)")
    t.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    t.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="tqdm progress bar (default: on a terminal)")
    t.set_defaults(func=_cmd_train)

    # bench -----------------------------------------------------------------------------------
    b = sub.add_parser(
        "bench",
        parents=[common],
        formatter_class=_Formatter,
        help="run a benchmark: speed or composition",
        description=_BENCH_DESCRIPTION,
        epilog="examples:\n  ebmcompose bench speed --quick\n  ebmcompose bench composition --quick",
    )
    b.set_defaults(func=_cmd_bench_none)
    bsub = b.add_subparsers(dest="benchmark", metavar="BENCHMARK", parser_class=_Parser)
    bs = bsub.add_parser(
        "speed",
        parents=[common],
        formatter_class=_Formatter,
        help="sampler speed against hand-written loops (benchmarks.sampler_speed)",
        description=(
            "Chain-steps per second of ULA, MALA and HMC against minimal hand-written torch loops on\n"
            "the 8-Gaussian ring (benchmarks.sampler_speed). Writes benchmarks/results/sampler_speed.json\n"
            "and benchmarks/results/sampler_speed.md (sampler_speed_cuda.* with --device cuda; unless\n"
            "--no-write) and prints the table.\n"
            "A full run takes several minutes; --quick about two on a 2-core CPU."
        ),
        epilog="example:\n  ebmcompose bench speed --quick --no-compile",
    )
    bs.add_argument("--quick", action="store_true", help="short run (N up to 1e4, fewer steps)")
    bs.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    bs.add_argument("--repeats", type=_positive_int, default=5, help="repeats per row, median reported (default: %(default)s)")
    bs.add_argument(
        "--thread-counts", type=_thread_list, default="1,0",
        help="comma-separated torch thread counts, one table each; 0 = all CPUs (default: %(default)s)",
    )
    bs.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile rows")
    bs.add_argument("--no-write", dest="write", action="store_false", help="print only; do not write benchmarks/results/")
    bs.set_defaults(func=_cmd_bench_speed)
    bc = bsub.add_parser(
        "composition",
        parents=[common],
        formatter_class=_Formatter,
        help="sampler accuracy on the 2-D composition tasks (benchmarks.composition_2d)",
        description=(
            "Sampler accuracy at matched NFE on the 2-D composition tasks (benchmarks.composition_2d):\n"
            "DDPM, DDIM, annealed Langevin and PC + ULA/MALA/HMC on exact and learned models, against\n"
            "exact answers. Writes composition_2d.json, composition_2d.md and composition_2d_<task>.png\n"
            "to the benchmark's --out folder (its own default; see `ebmcompose bench composition -- --help`).\n"
            "Arguments after `--` are passed to it unchanged."
        ),
        epilog=(
            "examples:\n  ebmcompose bench composition --quick\n"
            "  ebmcompose bench composition --quick -- --tasks product --out results/c2d\n"
            "  ebmcompose bench composition -- --help"
        ),
    )
    bc.add_argument("--quick", action="store_true", help="a short run")
    bc.add_argument("--device", default=None, help="cpu or cuda (default: the benchmark's own)")
    bc.add_argument("extra", nargs="*", help="more arguments for benchmarks.composition_2d (after --)")
    bc.set_defaults(func=_cmd_bench_composition)
    return p


def _report(command: str, message: str, debug_hint: bool = False) -> None:
    text = f"ebmcompose {command}: error: {message}".rstrip()
    if debug_hint:
        text += "\n(run with --debug for the traceback)"
    print(text, file=sys.stderr)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``ebmcompose`` console script; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        print(f"{exc.prog}: error: {exc}\nRun `{exc.prog} --help` for the options and examples.", file=sys.stderr)
        return 2
    if args.command is None:
        parser.print_help()
        return 2
    _set_threads(args.threads)
    command = args.command + (f" {args.benchmark}" if getattr(args, "benchmark", None) else "")
    debug = bool(getattr(args, "debug", False))
    from ebmcompose.checkpoint import CheckpointError

    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        if debug:
            raise
        _report(command, str(exc))
        return 2
    except KeyboardInterrupt:
        print(f"ebmcompose {command}: interrupted; nothing was written", file=sys.stderr)
        return 130
    except CheckpointError as exc:
        if debug:
            raise
        _report(command, str(exc))
        return 2
    except FloatingPointError as exc:  # samplers.NonFiniteStateError
        if debug:
            raise
        _report(command, f"{exc}. Use a smaller --step-size.", debug_hint=True)
        return 2
    except (ValueError, TypeError) as exc:
        # Library errors on user-supplied settings carry their own advice.
        if debug:
            raise
        _report(command, str(exc), debug_hint=True)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
