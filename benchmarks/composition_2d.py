"""Sampler accuracy on the 2-D composition tasks at matched NFE, against exact answers.

The study of issue "composition benchmark": for the three tasks of Du et al. 2023
(``product``, ``mixture``, ``negation``; :mod:`toy.tasks`) and one harder task
(``tilted``: a ring AND a diagonal bar AND a broad Gaussian tilt, three components, two modes of
unequal weight), every row is

    sampler  x  parameterisation  x  model
    {DDPM, DDIM, annealed Langevin, PC + ULA, PC + MALA, PC + HMC, SMC + MALA, SMC (FKC)}  x  {energy, ε}  x  {exact, learned}

and the columns are histogram TV against the exact density (with its noise floor), MMD² and the
mean log-likelihood against the exact target, the mode-weight error, Metropolis acceptance, NFE
and wall time, as mean ± standard error over seeds. Every sampler of a row group gets the same
budget of *expression evaluations* (see :func:`sampler_configs`).

* **exact** models are the tasks' analytic components diffused exactly
  (:meth:`toy.tasks.Task.composed_diffused`); **ε** for them means the same components wrapped
  as score-only :class:`ebmcompose.ScoreFunction` leaves, so only score-based samplers apply.
* **learned** models are the shipped checkpoints (:func:`toy.pretrained.components`): ``"energy"``
  (:class:`ebmcompose.DiffusionEnergy`) and ``"epsilon"`` (:class:`ebmcompose.EpsilonModel`). No
  checkpoint exists for ``tilted``, so it has exact rows only.
* Rows a parameterisation cannot run (MALA/HMC correctors and the mixture's ``|`` need energy
  values) are kept as ``n/a`` with the reason.

All rows use the noise schedule the checkpoints were trained with (cosine, ``s = 0.008``), so a
learned row differs from its exact row only by model error; every ladder starts at
``T_START = 0.99`` instead of 1 (``t_max`` of every sampler; see :class:`samplers.ReverseDiffusion`,
Notes: cosine's ``alpha_bar(1)`` ≈ 1e-8 makes a first step from ``t = 1`` amplify the
x0-prediction error ~150-fold).

Usage::

    python -m benchmarks.composition_2d            # full study (~6 min on 2 shared CPU cores)
    python -m benchmarks.composition_2d --quick    # small smoke run (~30 s)

Writes ``composition_2d.json``, ``composition_2d.md`` and ``composition_2d_<task>.png`` to
``--out`` (default ``benchmarks/results``; ``--quick`` defaults to the git-ignored
``outputs/composition_2d_quick`` and may not write into ``benchmarks/results``). The files move
into ``--out`` only after the whole study succeeded; other files there are kept. Targets,
acceptance summaries and the TV floor come from :mod:`ebmcompose.cli.experiments`; the tasks and
mode-weight errors from :mod:`benchmarks.composition_tasks`; findings, markdown and plots from
:mod:`benchmarks.composition_report`.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

import ebmcompose as ec
import samplers
import toy
from samplers.fkc import fkc_applies
from ebmcompose.cli import experiments as ex
from ebmcompose.cli.errors import OutputError
from ebmcompose.cli.outputs import staged_output
from ebmcompose.io import write_json, write_text

from .composition_report import SAMPLER_LABELS, SAMPLERS, findings, fmt_se, format_markdown, plot_task
from .composition_tasks import TASKS, get_task, mode_error_fn, tilted_task

__all__ = [
    "SAMPLERS",
    "SAMPLER_LABELS",
    "TASKS",
    "T_START",
    "StudyConfig",
    "tilted_task",
    "sampler_configs",
    "get_task",
    "mode_error_fn",
    "run_study",
    "format_markdown",
    "main",
]

#: Samplers whose Metropolis correction needs energy values.
NEEDS_ENERGY = frozenset({"pc_mala", "pc_hmc", "smc"})
#: First time of every ladder (``t_max`` of every sampler but SMC with FKC weights).
T_START = 0.99
#: First time of SMC with FKC weights: a step of the cosine ladder near ``t = 1`` integrates
#: ``β`` over far more than 1, where the weights' discretisation collapses the ESS.
FKC_T_MAX = 0.9
#: Histogram cells per axis of the TV metric (the demo's and ``ebmcompose sample``'s).
TV_RESOLUTION = ex.TV_RESOLUTION
#: Fixed RBF bandwidths of the MMD, so that MMD² values are comparable across rows.
MMD_BANDWIDTHS = (0.25, 0.5, 1.0, 2.0, 4.0)
#: Annealed Langevin: initial step ``ALD_STEP · sigma(t)²`` and ULA steps per level (chosen by a
#: small sweep on the exact product task: steps per level in {1, 3, 5}, factor in {0.1, 0.5}).
ALD_STEP = 0.5
ALD_STEPS_PER_LEVEL = 3
#: Leapfrog steps of the HMC corrector.
N_LEAPFROG = 2
#: Default output folders.
RESULTS = Path(__file__).resolve().parent / "results"
QUICK_RESULTS = Path(__file__).resolve().parents[1] / "outputs" / "composition_2d_quick"
STEM = "composition_2d"


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class StudyConfig:
    """Settings of the study.

    Attributes
    ----------
    n : int
        Samples (chains) per run.
    seeds : int
        Independent repetitions; tables give mean ± standard error over them.
    budgets : tuple of int
        NFE budgets (expression evaluations per chain) for the exact-model rows.
    learned_budgets : tuple of int
        NFE budgets for the learned-model rows (a network forward costs ~1000x an analytic
        evaluation on a CPU, so these are kept small).
    tasks : tuple of str
        From :data:`TASKS`.
    models : tuple of str
        ``"exact"`` and/or ``"learned"``.
    params : tuple of str
        ``"energy"`` and/or ``"epsilon"``.
    samplers : tuple of str
        From :data:`SAMPLERS`.
    corrector_steps : int
        Corrector transitions per level of the PC samplers.
    t_start : float
        First time of every ladder.
    device : str
        ``"cpu"`` or ``"cuda"``.
    plots : bool
        Write the per-task PNGs.
    threads : int or None
        ``torch.set_num_threads`` for the run (None: leave as is).
    quick : bool
        Marks a smoke run in the outputs.
    """

    n: int = 2000
    seeds: int = 3
    budgets: Tuple[int, ...] = (100, 300)
    learned_budgets: Tuple[int, ...] = (100,)
    tasks: Tuple[str, ...] = TASKS
    models: Tuple[str, ...] = ("exact", "learned")
    params: Tuple[str, ...] = ("energy", "epsilon")
    samplers: Tuple[str, ...] = SAMPLERS
    corrector_steps: int = 1
    t_start: float = T_START
    device: str = "cpu"
    plots: bool = True
    threads: Optional[int] = 1
    quick: bool = False

    def __post_init__(self):
        for name, allowed in (("tasks", TASKS), ("models", ("exact", "learned")),
                              ("params", ("energy", "epsilon")), ("samplers", SAMPLERS)):
            bad = [v for v in getattr(self, name) if v not in allowed]
            if bad:
                raise ValueError(f"unknown {name} {bad}; valid: {', '.join(allowed)}")
        if self.n < 10 or self.seeds < 1:
            raise ValueError(f"need n >= 10 and seeds >= 1, got n={self.n}, seeds={self.seeds}")
        if any(b < 10 for b in (*self.budgets, *self.learned_budgets)):
            raise ValueError("every NFE budget must be >= 10")
        if not 0.0 < self.t_start <= 1.0:
            raise ValueError(f"t_start must be in (0, 1], got {self.t_start}")


QUICK = StudyConfig(n=500, seeds=2, budgets=(60,), learned_budgets=(30,), quick=True)


# --------------------------------------------------------------------------- models
def build_energy(task, model: str, param: str, schedule: ec.VPSchedule, device) -> ec.Energy:
    """The composed time-dependent energy the diffusion samplers follow (:func:`ex.task_energy`).

    Raises ``ec.ScoreOnlyError`` when the composition needs energies a score-only model lacks
    (the mixture's ``|``).
    """
    return ex.task_energy(task, model, param, schedule, device)


def expression_cost(energy: ec.Energy, device, dtype) -> int:
    """NFE that one evaluation of the whole composed expression costs (leaves or forwards)."""
    x = torch.zeros(2, 2, device=device, dtype=dtype)
    return int(energy.evaluate(x, 0.5, energy=False, grad=True).nfe)


# --------------------------------------------------------------------------- samplers at a budget
def sampler_configs(
    schedule: ec.VPSchedule, budget: int, final_correction: bool, corrector_steps: int = 1, t_max: float = T_START
) -> Dict[str, object]:
    """Each sampler configured to spend about ``budget`` expression evaluations per chain.

    * DDPM / DDIM: ``budget`` steps (one evaluation each).
    * annealed Langevin: ``budget / 4`` levels x 3 ULA steps (one evaluation per level start
      plus one per transition) from ``t_start`` down to ``t = 0.01``; step ``0.5 σ_t²`` at
      first, then adapted per level (dual averaging).
    * PC: ``P`` levels with ``K = corrector_steps`` corrector transitions each, costing
      ``c = 1`` (ULA, MALA) or ``N_LEAPFROG`` (HMC) evaluations; the predictor reuses the
      corrector's cached gradient, so NFE ``≈ P (1 + K c)`` (+1 with a final correction at
      ``t = 0``, exact models only; −K c without). Step sizes adapted per level (dual averaging).
    * SMC + MALA: ``P`` reverse-diffusion proposal steps with importance weights and adaptive
      resampling (:class:`samplers.SMC`), ``K`` MALA rejuvenation transitions per level; NFE
      ``P (1 + K) + 1``. Exact models weight down to ``t = 0``; learned ones to ``t = 0.01``.
    * SMC (FKC): ``budget − 1`` reverse-diffusion proposal steps with the Feynman–Kac corrector
      weights of the leaves' scores (``weights="fkc"``, no rejuvenation; score-only leaves too), from
      :data:`FKC_T_MAX`; NFE ``budget``.
    """
    # Annealed Langevin's rule is step_i = step_size * sigma_i^2 / sigma_L^2; starting it at
    # ALD_STEP * sigma_i^2 keeps the first, noisiest levels stable (a fixed step_size of 0.01 at
    # the last level means ~16 at t = 0.99, which throws chains out where learned energies
    # cannot bring them back).
    t_min = 0.01
    ald_step = ALD_STEP * float(schedule.sigma(torch.tensor(t_min, dtype=torch.float64))) ** 2
    out: Dict[str, object] = {
        "ddpm": samplers.ReverseDiffusion(schedule, n_steps=budget, eta=1.0, t_max=t_max),
        "ddim": samplers.ReverseDiffusion(schedule, n_steps=budget, eta=0.0, t_max=t_max),
        "annealed": samplers.AnnealedLangevin(
            schedule, n_levels=max(budget // (1 + ALD_STEPS_PER_LEVEL), 2),
            n_steps_per_level=ALD_STEPS_PER_LEVEL, step_size=ald_step,
            t_max=t_max, t_min=t_min, adapt=True,
        ),
    }
    K = corrector_steps
    kernels = {
        "pc_ula": (samplers.ULA(step_size=0.1, n_steps=K), 1),
        "pc_mala": (samplers.MALA(step_size=0.1, n_steps=K), 1),
        "pc_hmc": (samplers.HMC(step_size=0.1, n_leapfrog=N_LEAPFROG, n_steps=K), N_LEAPFROG),
    }
    for key, (kernel, c) in kernels.items():
        per_level = 1 + K * c
        extra = 1 if final_correction else -K * c
        levels = max(int(round((budget - extra) / per_level)), 2)
        out[key] = samplers.PredictorCorrector(
            schedule, n_steps=levels, corrector=kernel, step_rule="adapt", final_correction=final_correction,
            t_max=t_max,
        )
    levels = max(int(round((budget - 1) / (1 + K))), 2)
    out["smc"] = samplers.SMC(
        schedule, n_steps=levels, rejuvenate=samplers.MALA(step_size=0.1, n_steps=K), step_rule="adapt",
        t_max=t_max, t_min=0.0 if final_correction else 0.01,
    )
    out["smc_fkc"] = samplers.SMC(schedule, n_steps=max(budget - 1, 2), weights="fkc", t_max=min(t_max, FKC_T_MAX),
                                  t_min=0.0 if final_correction else 0.01)
    return out


# --------------------------------------------------------------------------- the study
@dataclass
class _Reference:
    """Exact quantities of one task shared by all its rows."""

    task: object
    exact: List[torch.Tensor]  # one exact sample per seed
    log_prob: Callable[[torch.Tensor], torch.Tensor]
    mode_error: Callable[[torch.Tensor], float]
    mode_desc: str
    tv_floor: float
    tv_floor_std: float
    ground_truth: str


def _reference(task, cfg: StudyConfig) -> _Reference:
    exact = [task.sample_exact(cfg.n, generator=ex.generator(20_000 + s)).double() for s in range(cfg.seeds)]
    if task.exact is not None:
        gm = task.exact.double() if hasattr(task.exact, "double") else task.exact
        log_prob = gm.log_prob
        truth = "closed-form Gaussian mixture"
    else:
        log_z = float(ec.grid.grid_density(task.composed, task.bounds, resolution=512).log_z)
        composed = task.composed

        def log_prob(x):
            return -composed.energy(x.to(next(iter(composed.buffers())).dtype)).double() - log_z

        truth = "grid reference (toy.reference_sample, 512^2) and grid-normalised density"
    floor = ex.tv_floor(task.composed, task.bounds, cfg.n, 30_000, n_repeats=16)
    fn, desc = mode_error_fn(task)
    return _Reference(task, exact, log_prob, fn, desc, float(floor.mean), float(floor.std), truth)


def _metrics(x: torch.Tensor, ref: _Reference, seed: int) -> Dict[str, float]:
    task = ref.task
    x = x.detach().to("cpu", torch.float64)
    tv = ec.metrics.histogram_tv(x, task.composed, task.bounds, resolution=TV_RESOLUTION)
    mmd = ec.metrics.mmd(x, ref.exact[seed], bandwidths=MMD_BANDWIDTHS, max_samples=2000,
                         generator=ex.generator(40_000 + seed))
    with torch.no_grad():
        ll = float(ec.metrics.mean_log_likelihood(x, ref.log_prob))
    return dict(tv=float(tv.tv), outside=float(tv.outside), mmd=float(mmd), loglik=ll,
                mode_error=float(ref.mode_error(x)))


_METRICS = ("tv", "outside", "mmd", "loglik", "mode_error", "acceptance", "nfe", "nfe_raw", "seconds")


def _summarise(values: Sequence[Optional[float]]) -> Optional[Dict[str, float]]:
    v = [float(a) for a in values if a is not None and math.isfinite(float(a))]
    if not v:
        return None
    mean = statistics.fmean(v)
    se = statistics.stdev(v) / math.sqrt(len(v)) if len(v) > 1 else float("nan")
    return {"mean": mean, "se": se, "values": v}


def _row_key(r) -> Tuple:
    return (r["task"], r["model"], r["param"], r["budget"], r["sampler"])


def run_study(cfg: StudyConfig = StudyConfig(), out: Optional[Path] = None, log=print) -> dict:
    """Run the study and (when ``out`` is given) write its JSON, markdown and PNG files.

    Parameters
    ----------
    cfg : StudyConfig
        Settings.
    out : Path, optional
        Output folder; files ``composition_2d.json``, ``composition_2d.md``,
        ``composition_2d_<task>.png`` move into it when the study succeeded (other files kept).
    log : callable
        Progress messages.

    Returns
    -------
    dict
        ``{"config", "environment", "tasks": {name: {...}}, "rows": [...], "findings": [...],
        "total_seconds"}``; each row has ``task, model, param, sampler, budget`` and, unless
        ``status`` is ``"n/a"`` (with ``reason``), a summary ``{"mean", "se", "values"}`` per
        metric.
    """
    if out is None:
        return _timed_run(cfg, log)
    with staged_output(out, "composition") as staging:  # checks --out before the run
        result = _timed_run(cfg, log)
        names = write_outputs(result, staging, cfg)
    log(f"[composition_2d] wrote {', '.join(str(Path(out) / n) for n in names)}")
    return result


def _timed_run(cfg: StudyConfig, log) -> dict:
    t_total = time.perf_counter()
    old_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        result = _run(cfg, torch.device(cfg.device), log)
    finally:
        torch.set_num_threads(old_threads)
    result["total_seconds"] = round(time.perf_counter() - t_total, 1)
    return result


def _run(cfg: StudyConfig, device, log) -> dict:
    base_schedule = ec.VPSchedule.cosine()
    rows: List[dict] = []
    task_info: Dict[str, dict] = {}
    plot_samples: Dict[str, Dict[Tuple[str, str], Dict[str, Tuple[torch.Tensor, int]]]] = {}
    for tname in cfg.tasks:
        task = get_task(tname)
        ref = _reference(task, cfg)
        log(f"[composition_2d] {tname}: {task.description} (TV floor {ref.tv_floor:.3f})")
        exact_rows = [_metrics(ref.exact[s], replace_exact(ref, s), s) for s in range(cfg.seeds)]
        rows.append(_row(tname, "exact sampling", "-", "exact", 0, status="ok",
                         runs=[dict(m, acceptance=None, nfe=0, nfe_raw=0, seconds=0.0) for m in exact_rows]))
        has_learned = tname in toy.tasks.names()
        task_info[tname] = dict(
            description=task.description, bounds=list(task.bounds), ground_truth=ref.ground_truth,
            tv_floor=ref.tv_floor, tv_floor_std=ref.tv_floor_std, mode_error=ref.mode_desc,
            components=list(task.components), learned_checkpoint=has_learned,
        )
        plot_samples[tname] = {("exact sampling", "-"): {"exact": (ref.exact[0], 0)}}
        for model in cfg.models:
            budgets = cfg.budgets if model == "exact" else cfg.learned_budgets
            if model == "learned" and not has_learned:
                for param in cfg.params:
                    for b in budgets:
                        for s in cfg.samplers:
                            rows.append(_row(tname, model, param, s, b, status="n/a",
                                             reason="no shipped checkpoint for this task"))
                continue
            schedule = base_schedule
            if model == "learned":
                schedule = ex.learned_schedule(tname)
                task_info[tname]["learned_schedule"] = repr(schedule)
            for param in cfg.params:
                try:
                    energy = build_energy(task, model, param, schedule, device)
                    why = None
                except ec.ScoreOnlyError:
                    energy, why = None, "the mixture's | needs energy values (score-only ε model)"
                cost = expression_cost(energy, device, torch.get_default_dtype()) if energy is not None else 1
                for b in budgets:
                    cfgs = sampler_configs(schedule, b, final_correction=(model == "exact"),
                                           corrector_steps=cfg.corrector_steps, t_max=cfg.t_start)
                    for s in cfg.samplers:
                        if energy is None:
                            rows.append(_row(tname, model, param, s, b, status="n/a", reason=why))
                            continue
                        if s == "smc_fkc" and not fkc_applies(energy):
                            rows.append(_row(tname, model, param, s, b, status="n/a",
                                             reason="FKC weights need a linear composition (sums, AND, NOT); the mixture's | is not"))
                            continue
                        if s in NEEDS_ENERGY and not energy.has_energy:
                            what = "SMC's importance weights" if s == "smc" else "Metropolis correction"
                            rows.append(_row(tname, model, param, s, b, status="n/a",
                                             reason=f"{what} needs energy values (score-only ε model)"))
                            continue
                        runs = []
                        for seed in range(cfg.seeds):
                            g = ex.generator(10_000 + seed, device)  # common random numbers across rows
                            t0 = time.perf_counter()
                            res = cfgs[s].sample(energy, shape=(cfg.n, 2), generator=g, device=device)
                            x = res.samples.detach()
                            if device.type == "cuda":
                                torch.cuda.synchronize(device)
                            secs = time.perf_counter() - t0
                            m = _metrics(x, ref, seed)
                            summary = ex.summarize(res.info)
                            acc = summary.acceptance if s in NEEDS_ENERGY else None
                            runs.append(dict(m, acceptance=acc, nfe=summary.nfe / cost,
                                             nfe_raw=summary.nfe, seconds=secs))
                            if seed == 0:
                                plot_samples[tname].setdefault((model, param), {})[s] = (x.cpu(), b)
                        row = _row(tname, model, param, s, b, status="ok", runs=runs)
                        rows.append(row)
                        log(f"[composition_2d]   {model:7s} {param:7s} B={b:<4d} {SAMPLER_LABELS[s]:<26s} "
                            f"TV {row['tv']['mean']:.3f}±{fmt_se(row['tv']['se'])}  "
                            f"NFE {row['nfe']['mean']:.0f}  {row['seconds']['mean']:.2f}s")
    result = {
        "config": _config_dict(cfg),
        "environment": dict(torch=torch.__version__, python=platform.python_version(),
                            platform=platform.platform(), threads=cfg.threads or torch.get_num_threads()),
        "schedule": repr(base_schedule),
        "t_start": cfg.t_start,
        "tasks": task_info,
        "rows": rows,
    }
    result["findings"] = findings(rows, task_info)
    result["_plot_samples"] = plot_samples
    return result


def replace_exact(ref: _Reference, seed: int) -> _Reference:
    """``ref`` whose exact sample for ``seed`` is an independent second exact sample.

    The "exact sampling" row compares one exact sample against another, which gives every
    metric's value for a perfect sampler (TV and MMD floors, the target's mean log-likelihood).
    """
    other = ref.task.sample_exact(len(ref.exact[seed]), generator=ex.generator(50_000 + seed)).double()
    exact = list(ref.exact)
    exact[seed] = other
    return replace(ref, exact=exact)


def _row(task, model, param, sampler, budget, status, runs=None, reason=None) -> dict:
    row = dict(task=task, model=model, param=param, sampler=sampler, budget=budget, status=status)
    if status != "ok":
        row["reason"] = reason
        return row
    for k in _METRICS:
        row[k] = _summarise([r[k] for r in runs])
    return row


def _config_dict(cfg: StudyConfig) -> dict:
    d = asdict(cfg)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}



def write_outputs(result: dict, folder: Path, cfg: StudyConfig) -> List[str]:
    """Write ``composition_2d.json``, ``.md`` and one PNG per task into ``folder``; returns the names."""
    plot_samples = result.pop("_plot_samples", {})
    written = []
    if cfg.plots:
        for tname, by_row in plot_samples.items():
            # keep only the largest budget per (model, param) row: it was stored last
            p = folder / f"{STEM}_{tname}.png"
            plot_task(get_task(tname), result["tasks"][tname], by_row, p)
            written.append(p.name)
    written.append(write_text(folder / f"{STEM}.md", format_markdown(result)).name)
    written.append(write_json(folder / f"{STEM}.json", result).name)
    return written


# --------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.composition_2d",
        description="Samplers at matched NFE on the 2-D composition tasks, against exact answers.",
    )
    ap.add_argument("--quick", action="store_true", help="small smoke run (n=500, 2 seeds, small budgets)")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3; --quick 2)")
    ap.add_argument("--n", type=int, default=None, help="samples per run (default 2000; --quick 500)")
    ap.add_argument("--out", type=Path, default=None,
                    help=f"output folder, other files in it are kept (default {RESULTS}; with --quick {QUICK_RESULTS})")
    ap.add_argument("--tasks", nargs="+", choices=TASKS, default=None, help="subset of tasks")
    ap.add_argument("--models", nargs="+", choices=("exact", "learned"), default=None)
    ap.add_argument("--samplers", nargs="+", choices=SAMPLERS, default=None, help="subset of samplers")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the study from the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    cfg = QUICK if args.quick else StudyConfig()
    changes = {}
    if args.seeds is not None:
        changes["seeds"] = args.seeds
    if args.n is not None:
        changes["n"] = args.n
    if args.tasks:
        changes["tasks"] = tuple(args.tasks)
    if args.models:
        changes["models"] = tuple(args.models)
    if args.samplers:
        changes["samplers"] = tuple(args.samplers)
    changes["device"] = args.device
    changes["plots"] = not args.no_plots
    cfg = replace(cfg, **changes)
    out = args.out or (QUICK_RESULTS if args.quick else RESULTS)
    try:
        if args.quick and out.expanduser().resolve() == RESULTS.resolve():
            raise OutputError(f"--out {out}: a --quick run never replaces the committed results; choose another --out")
        result = run_study(cfg, out=out)
    except OutputError as exc:
        print(f"{build_parser().prog}: error: {exc}", file=sys.stderr)
        return 2
    print(f"[composition_2d] done in {result['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
