"""Experiment logic shared by ``ebmcompose sample``/``demo`` and the composition study.

Targets (toy tasks, expressions over their components, learned checkpoints), sampler
construction from options, the one reader of a sampler's ``info`` (:func:`summarize`), and the
metrics against exact answers. ``samplers`` and ``toy`` are imported inside the functions, so
that importing :mod:`ebmcompose.cli` never imports them.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from .errors import UsageError

__all__ = [
    "TV_RESOLUTION", "SAMPLERS", "STATIC_SAMPLERS", "PC_SAMPLERS", "DIFFUSION_SAMPLERS", "KERNELS",
    "STEP_RULES", "REJUVENATE", "SMC_WEIGHTS", "smc_weights", "smc_rejuvenate", "MODELS", "generator", "Target", "components_by_name", "used_names", "load_learned",
    "task_energy", "learned_schedule", "build_target", "SamplerOptions", "needs_energy", "make_sampler",
    "RunSummary", "summarize", "tv_floor", "compare_to_exact", "markdown_table", "fmt",
]

#: Histogram cells per axis of the TV metric (32 keeps the noise floor low at n = 2000).
TV_RESOLUTION = 32
#: ``--sampler`` choices of ``ebmcompose sample``.
SAMPLERS = ("ula", "mala", "hmc", "annealed", "ddpm", "ddim", "pc-ula", "pc-mala", "pc-hmc", "smc")
STATIC_SAMPLERS = ("ula", "mala", "hmc")
PC_SAMPLERS = ("pc-ula", "pc-mala", "pc-hmc")
DIFFUSION_SAMPLERS = ("annealed", "ddpm", "ddim") + PC_SAMPLERS + ("smc",)
KERNELS = ("ula", "mala", "hmc")
#: ``--rejuvenate`` choices of ``--sampler smc``.
REJUVENATE = ("mala", "hmc", "ula", "none")
#: ``--weights`` choices of ``--sampler smc``.
SMC_WEIGHTS = ("energy", "fkc")
STEP_RULES = ("adapt", "sigma2", "beta", "fixed")
#: ``--model`` choices: analytic energies or the learned checkpoints.
MODELS = ("exact", "epsilon", "energy")


def generator(seed: int, device="cpu"):
    """A seeded ``torch.Generator`` on ``device``."""
    import torch

    return torch.Generator(device=device).manual_seed(seed)


# ----------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Target:
    """What a sampling run needs about its target.

    Attributes
    ----------
    energy : Energy
        What the sampler runs on (on the run's device).
    t : float or None
        Fixed time at which static samplers evaluate time-dependent (learned) energies.
    schedule : VPSchedule
        The noise schedule of the diffusion samplers.
    static : Energy
        The exact static composed energy (the ground truth; on the CPU).
    sample_exact : callable
        ``sample_exact(n, generator=g) -> Tensor (n, 2)``: exact samples of ``static``.
    ground_truth : str
        How ``sample_exact`` is exact.
    bounds : tuple
        The square that holds the target's mass.
    label : str
        One line for plots and reports.
    """

    energy: Any
    t: Optional[float]
    schedule: Any
    static: Any
    sample_exact: Callable
    ground_truth: str
    bounds: tuple
    label: str


def components_by_name():
    """``(tasks, owner)``: every toy task by name, and the task owning each component name."""
    import toy

    tasks = {name: toy.tasks.get(name) for name in toy.tasks.names()}
    owner: Dict[str, str] = {}
    for tname, task in tasks.items():
        for cname in task.components:
            if cname in owner:
                raise RuntimeError(f"component name {cname!r} is used by two tasks")
            owner[cname] = tname
    return tasks, owner


def used_names(expr: str, known) -> List[str]:
    """The names of ``known`` that ``expr`` mentions, in order of first use."""
    out: List[str] = []
    for name in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", expr):
        if name in known and name not in out:
            out.append(name)
    return out


def load_learned(task_name: str, parameterisation: str, checkpoint_dir: Optional[str] = None):
    """``(model, labels, schedule)`` of one task's checkpoint (shipped, or from ``checkpoint_dir``).

    A missing or unreadable checkpoint is a :class:`UsageError` that says how to make one.
    """
    from ebmcompose.checkpoint import CheckpointError, CheckpointNotFoundError
    from toy import pretrained

    train = f"ebmcompose train --tasks {task_name} --parameterisations {parameterisation}"
    if checkpoint_dir is None:
        hint = f"the shipped checkpoint is missing; regenerate it with `{train} --out toy/checkpoints`"
    else:
        if not Path(checkpoint_dir).is_dir():
            raise UsageError(
                f"--checkpoint-dir {checkpoint_dir} is not a folder. Point it at a folder written by "
                f"`ebmcompose train` (e.g. `{train} --out {checkpoint_dir}`), or leave it out to use the "
                "shipped checkpoints in toy/checkpoints."
            )
        hint = f"train it with `{train} --out {checkpoint_dir}`, or leave out --checkpoint-dir to use the shipped checkpoints"
    stem = pretrained.checkpoint_path(task_name, parameterisation, checkpoint_dir)
    try:
        model, info = pretrained.load(task_name, parameterisation, checkpoint_dir, missing_hint=hint)
    except CheckpointNotFoundError:
        raise UsageError(
            f"--model {parameterisation} needs the {parameterisation} checkpoint of task {task_name!r}, "
            f"but {stem}.safetensors is missing: {hint}."
        ) from None
    except CheckpointError as exc:
        raise UsageError(f"cannot load the {parameterisation} checkpoint of task {task_name!r}: {exc}") from None
    return model, info["labels"], model.schedule


def _score_only(leaves: Mapping[str, Any]) -> Dict[str, Any]:
    """The same leaves as score-only energies (the "ε" parameterisation of an exact model)."""
    import ebmcompose as ec

    return {
        k: ec.ScoreFunction(lambda x, t, e=e: e.score(x, t), name=k, time_dependent=True)
        for k, e in leaves.items()
    }


def task_energy(task, model: str, param: str, schedule, device="cpu"):
    """A task's composed time-dependent energy, as the diffusion samplers follow it.

    Parameters
    ----------
    task : toy.tasks.Task
    model : {"exact", "learned"}
        The task's analytic components diffused exactly on ``schedule``, or the shipped checkpoints.
    param : {"energy", "epsilon"}
        ``"epsilon"`` makes exact leaves score-only; for learned models it picks the checkpoint.

    Raises
    ------
    ebmcompose.ScoreOnlyError
        When the composition needs energies that score-only leaves lack (a mixture's ``|``).
    """
    if model == "exact":
        leaves = task.diffused_components(schedule)
        if param == "epsilon":
            leaves = _score_only(leaves)
    else:
        model_, labels, _ = load_learned(task.name, param)
        leaves = {name: model_.condition(k, name=name) for name, k in labels.items()}
    return task.compose(leaves).to(device)


def learned_schedule(task_name: str, param: str = "epsilon"):
    """The noise schedule the shipped checkpoint of ``task_name`` was trained with."""
    return load_learned(task_name, param)[2]


def build_target(
    *, task: Optional[str] = None, expr: Optional[str] = None, model: str = "exact",
    static_sampler: bool = False, checkpoint_dir: Optional[str] = None, t: Optional[float] = None,
    device: str = "cpu",
) -> Target:
    """The target of ``ebmcompose sample``: a toy task or an expression over the tasks' components.

    ``model="exact"``: static samplers get the static composed energy, diffusion samplers the
    composition of the exactly diffused components (linear schedule: the cosine one's
    ``alpha_bar(1) ~ 1e-8`` makes the first reverse step amplify the prior mismatch of
    compositions whose weights do not sum to one). ``"epsilon"``/``"energy"``: the learned leaves,
    which static samplers evaluate at the fixed time ``t`` (default 0.01).
    """
    import ebmcompose as ec
    import toy

    tasks, owner = components_by_name()
    static_leaves = {c: tasks[tn].components[c] for c, tn in owner.items()}
    bounds = toy.tasks.BOUNDS
    if task is not None:
        if task not in tasks:
            raise UsageError(f"unknown task {task!r}; choose from {', '.join(tasks)} (or give --expr)")
        tk = tasks[task]
        names, compose, static, bounds = list(tk.components), tk.compose, tk.composed, tk.bounds
        label = f"{tk.name}: {tk.description}"
        sample_exact = tk.sample_exact
        how = "closed form (exact mixture)" if tk.exact is not None else \
            "toy.reference_sample on a 512x512 grid over the bounds"
    else:
        try:
            static = ec.parse(expr, static_leaves)
        except ec.ParseError as exc:
            raise UsageError(
                f"cannot parse --expr: {exc}\nComponent names: {', '.join(static_leaves)}; operators: "
                "AND/&, OR/|, NOT/-, +, w*name, (...), e.g. \"ring AND NOT 0.5*bar\"."
            ) from None
        names = used_names(expr, owner)

        def compose(leaves, _expr=expr):
            return ec.parse(_expr, leaves)

        label = expr
        how = "toy.reference_sample of the static composed energy on a 512x512 grid over the bounds"

        def sample_exact(n, generator=None, _static=static):
            return toy.reference_sample(_static, n, bounds, resolution=512, generator=generator)

    t_fixed = None
    if model == "exact":
        schedule = ec.VPSchedule.linear()
        energy = static if static_sampler else compose({c: static_leaves[c].diffused(schedule) for c in names})
    else:
        energy, schedule = _learned_composition(names, owner, compose, model, checkpoint_dir)
        if static_sampler:
            t_fixed = 0.01 if t is None else t
    if device != "cpu":
        # nn.Module.to moves in place: keep the static target (ground truth, plots) on the CPU.
        energy = copy.deepcopy(energy).to(device)
    return Target(energy, t_fixed, schedule, static, sample_exact, how, tuple(bounds), label)


def _learned_composition(names, owner, compose, model: str, checkpoint_dir):
    import ebmcompose as ec

    models: Dict[str, tuple] = {}
    for c in names:
        if owner[c] not in models:
            models[owner[c]] = load_learned(owner[c], model, checkpoint_dir)
    schedules = {repr(m[2]) for m in models.values()}
    if len(schedules) > 1:
        raise UsageError(
            f"the checkpoints of {', '.join(models)} were trained with different noise schedules "
            f"({'; '.join(sorted(schedules))}), so their time-dependent energies do not compose; "
            "retrain them together with `ebmcompose train`"
        )
    leaves = {}
    for c in names:
        net, labels, _ = models[owner[c]]
        if c not in labels:
            raise UsageError(f"the {model} checkpoint of task {owner[c]!r} has no component {c!r} (it has {', '.join(labels)})")
        leaves[c] = net.condition(labels[c], name=c)
    try:
        energy = compose(leaves)
    except ec.ScoreOnlyError:
        raise UsageError(
            "OR / | (a mixture) needs energies: it weights each component's score by its posterior "
            "exp(-E_i)/sum_j exp(-E_j), but --model epsilon models are score-only. Use --model energy "
            "(learned energies) or --model exact, or drop the | from the expression."
        ) from None
    return energy, next(iter(models.values()))[2]


# ----------------------------------------------------------------------------- samplers
@dataclass(frozen=True)
class SamplerOptions:
    """A sampler by name with the command line's settings; ``None`` means the sampler's default.

    ``sampler`` is one of :data:`SAMPLERS`. ``t_max`` (first time of a ladder) and
    ``final_correction`` are not command-line options; the demo sets them.
    """

    sampler: str
    steps: Optional[int] = None
    step_size: Optional[float] = None
    leapfrog: Optional[int] = None
    levels: Optional[int] = None
    corrector_steps: Optional[int] = None
    kernel: Optional[str] = None
    step_rule: Optional[str] = None
    clip_x0: Optional[float] = None
    t_max: Optional[float] = None
    ess_threshold: Optional[float] = None
    rejuvenate: Optional[str] = None
    weights: Optional[str] = None

    @classmethod
    def from_args(cls, args) -> "SamplerOptions":
        """The options of an ``argparse.Namespace`` (attributes this class does not have are ignored)."""
        return cls(**{f.name: getattr(args, f.name, None) for f in fields(cls)})


def needs_energy(sampler: str, kernel: Optional[str] = None, weights: Optional[str] = None) -> bool:
    """Whether the sampler needs energy values (not only scores): a Metropolis step, or SMC's energy
    weights (``weights``: ``"energy"`` or ``"fkc"``, see :func:`smc_weights`)."""
    if sampler == "smc":
        return weights != "fkc"
    return sampler in ("mala", "hmc", "pc-mala", "pc-hmc") or (sampler == "annealed" and (kernel or "ula") != "ula")


def smc_weights(weights: Optional[str], energy, exact: bool) -> str:
    """``--weights`` of ``--sampler smc``: as given; else ``"energy"`` for exact energies, and for
    learned models ``"fkc"`` (Feynman–Kac corrector weights from scores) wherever they apply (a linear
    composition: not a mixture). Learned energies' *values* are fitted only through their gradients, so
    between separated modes they can be off by a lot: on the 2-D product, energy weights put every
    particle in one of its two modes (``benchmarks/results/composition_2d.md``), FKC weights do not."""
    if weights:
        return weights
    if exact:
        return "energy"
    from samplers.fkc import fkc_applies

    if fkc_applies(energy):
        return "fkc"
    return "energy" if energy.has_energy else "fkc"  # a mixture: FKC weights do not apply


def smc_rejuvenate(rejuvenate: Optional[str], weights: Optional[str]) -> str:
    """``--rejuvenate`` of ``--sampler smc``: as given, else ``"none"`` with FKC weights (MALA/HMC need
    energy values) and ``"mala"`` with energy weights."""
    return rejuvenate or ("none" if weights == "fkc" else "mala")


def make_sampler(opts: SamplerOptions, schedule, exact: bool):
    """The sampler ``opts`` names, with its settings and the command line's defaults.

    ``exact``: the target's diffused energies are exact at ``t = 0`` (PC corrects there too) and
    need no clamp of the x0-prediction (learned models default to ``--clip-x0 6``, the toy bounds).
    """
    import samplers

    s, h = opts.sampler, opts.step_size
    ladder = {} if opts.t_max is None else {"t_max": opts.t_max}
    if s == "ula":
        return samplers.ULA(step_size=h, n_steps=opts.steps or 500)
    if s == "mala":
        return samplers.MALA(step_size=h, n_steps=opts.steps or 500)
    if s == "hmc":
        return samplers.HMC(step_size=h, n_leapfrog=opts.leapfrog or 10, n_steps=opts.steps or 200)
    if s == "annealed":
        name = opts.kernel or "ula"
        kernel = samplers.HMC(n_leapfrog=opts.leapfrog or 5) if name == "hmc" else \
            (samplers.MALA() if name == "mala" else samplers.ULA())
        default_h = 0.1 if name == "hmc" else 0.01
        per_level = 5 if opts.corrector_steps is None else opts.corrector_steps
        return samplers.AnnealedLangevin(
            schedule, n_levels=opts.levels or 50, n_steps_per_level=per_level,
            step_size=default_h if h is None else h, kernel=kernel, adapt=h is None, **ladder,
        )
    if s == "smc":
        return _make_smc(opts, schedule, exact, ladder)
    clip = opts.clip_x0
    if clip is None:
        clip = None if exact else 6.0  # the toy bounds: tames the cosine schedule's first step
    elif clip == 0:
        clip = None
    if s in ("ddpm", "ddim"):
        return samplers.ReverseDiffusion(
            schedule, n_steps=opts.levels or 100, eta=1.0 if s == "ddpm" else 0.0, clip_x0=clip, **ladder
        )
    if s not in PC_SAMPLERS:
        raise UsageError(f"unknown sampler {s!r}; choose from {', '.join(SAMPLERS)}")
    k = 2 if opts.corrector_steps is None else opts.corrector_steps
    corrector = _kernel(s[len("pc-"):], h, k, opts)
    return samplers.PredictorCorrector(
        schedule, n_steps=opts.levels or 50, corrector=corrector, step_rule=opts.step_rule or "adapt",
        clip_x0=clip, final_correction=True if exact else None, **ladder,
    )


def _kernel(name: str, h, k: int, opts: SamplerOptions):
    """The ``ula`` / ``mala`` / ``hmc`` kernel (``--leapfrog`` [5]) that a ladder sampler runs ``k`` times per level."""
    import samplers

    if name == "hmc":
        return samplers.HMC(step_size=h, n_leapfrog=opts.leapfrog or 5, n_steps=k)
    return {"ula": samplers.ULA, "mala": samplers.MALA}[name](step_size=h, n_steps=k)


def _make_smc(opts: SamplerOptions, schedule, exact: bool, ladder: dict):
    """``--sampler smc``: ``--levels`` [100] proposal steps, ``--rejuvenate`` [mala; none with FKC
    weights] with ``--corrector-steps`` [1] transitions per level; learned models run the weights on
    ``[0.01, 0.98]`` (their energies are undefined at ``t = 0``, and the cosine schedule's first step
    from ``t = 1`` amplifies the x0-prediction's error ~100-fold), FKC weights on ``[0.01, 0.9]``
    (each step must integrate the schedule's ``β`` over much less than 1, which the cosine schedule's
    steps near ``t = 1`` do not). ``opts.weights``: ``"energy"`` or ``"fkc"`` (resolved)."""
    import samplers

    fkc = opts.weights == "fkc"
    h, name = opts.step_size, smc_rejuvenate(opts.rejuvenate, opts.weights)
    k = 1 if opts.corrector_steps is None else opts.corrector_steps
    kernel = None
    if name != "none" and k > 0:
        kernel = _kernel(name, h, k, opts)
    return samplers.SMC(
        schedule, n_steps=opts.levels or 100, rejuvenate=kernel,
        ess_threshold=0.5 if opts.ess_threshold is None else opts.ess_threshold,
        step_rule=(opts.step_rule or "adapt") if kernel is not None else None,
        t_min=0.0 if exact else 0.01, weights=opts.weights or "energy",
        **{"t_max": 1.0 if exact else (0.9 if fkc else 0.98), **ladder},
    )


# ----------------------------------------------------------------------------- run summaries
@dataclass(frozen=True)
class RunSummary:
    """What the experiments read from a sampler's ``info``.

    Attributes
    ----------
    nfe : int
        Energy/score evaluations in all.
    acceptance : float or None
        Mean Metropolis acceptance over the steps that had one (None: no Metropolis step).
    divergences : int
        Steps that produced a non-finite energy gradient.
    step_size : float or None
        The final step size when it is one number.
    """

    nfe: int
    acceptance: Optional[float]
    divergences: int
    step_size: Optional[float]


def summarize(info: Mapping[str, Any]) -> RunSummary:
    """The one place that reads a sampler's ``info`` (levels without a correction hold NaN)."""
    import torch

    acc = info.get("acceptance")
    mean_acc = None
    if acc is not None:
        a = torch.as_tensor(acc).detach().double().cpu().flatten()
        a = a[~a.isnan()]
        mean_acc = float(a.mean()) if a.numel() else None
    h = info.get("step_size")
    step = None
    if h is not None and torch.as_tensor(h).numel() == 1:
        step = float(torch.as_tensor(h))
    return RunSummary(int(info["nfe"]), mean_acc, int(info.get("divergences", 0) or 0), step)


# ----------------------------------------------------------------------------- metrics
def tv_floor(static, bounds, n: int, seed: int, n_repeats: Optional[int] = None):
    """TV of exact samples of size ``n`` (the noise floor of :func:`compare_to_exact`'s TV)."""
    import ebmcompose as ec

    kw = {} if n_repeats is None else {"n_repeats": n_repeats}
    return ec.metrics.histogram_tv_baseline(
        static, bounds, n, resolution=TV_RESOLUTION, generator=generator(seed), **kw
    )


def compare_to_exact(x, exact, static, bounds, seed: int) -> Dict[str, Optional[float]]:
    """TV against the exact density, MMD² and energy distance against an exact sample.

    Parameters
    ----------
    x, exact : Tensor
        ``(n, 2)`` samples and ``(m, 2)`` exact samples (any device; compared in float64 on the CPU).
    seed : int
        MMD uses ``seed``, energy distance ``seed + 1`` (their subsampling).

    Returns
    -------
    dict
        ``tv``, ``outside`` (mass outside ``bounds``), ``mmd``, ``energy_distance`` (None for n < 2).
    """
    import torch

    import ebmcompose as ec

    x = x.detach().to("cpu", torch.float64)
    exact = exact.detach().to("cpu", torch.float64)
    tv = ec.metrics.histogram_tv(x, static, bounds, resolution=TV_RESOLUTION)
    out = dict(tv=float(tv.tv), outside=float(tv.outside), mmd=None, energy_distance=None)
    if len(x) >= 2:
        out["mmd"] = float(ec.metrics.mmd(x, exact, generator=generator(seed)))
        out["energy_distance"] = float(ec.metrics.energy_distance(x, exact, generator=generator(seed + 1)))
    return out


def fmt(value: Optional[float], spec: str = ".3f") -> str:
    """``value`` formatted, or an en dash for a missing value."""
    return "–" if value is None else format(value, spec)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table (cells are ``str``-ed)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"
