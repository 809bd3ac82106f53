"""``ebmcompose demo``: compose the toy tasks, sample them several ways, measure against exact answers.

For each task of Du et al. 2023 (``product``, ``mixture``, ``negation``; see :mod:`toy.tasks`):

* **exact** — samples of the exact composed density (closed form, or the grid sampler);
* **MALA** — Metropolis-adjusted Langevin on the *static* composed energy (adapted step size);
* **reverse diffusion** — DDPM ancestral sampling that follows the *sum of the diffused
  components' scores* (the composition of Liu et al. 2022), which is not the score of the
  diffused composition, so it is biased for products and negations;
* **PC + MALA** — the same reverse process with MALA corrector steps at every noise level
  (Du et al. 2023), which targets the composed density at each level;
* **PC + MALA (learned)** — the same sampler on the shipped *learned* energy-parameterised
  component models (``toy.pretrained``), composed with the same algebra.

Writes ``<out>/<task>.png``, ``<out>/demo.png`` (all tasks), ``<out>/metrics.md`` and
``<out>/metrics.json``: histogram TV against the exact density (with the noise floor), MMD² and
energy distance against exact samples, acceptance, NFE and wall time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

from . import experiments as ex
from .errors import UsageError
from .options import Formatter, common_options, device, positive_int
from .outputs import staged_output

__all__ = ["add_parser", "run", "DemoConfig", "QUICK", "run_samplers", "metrics_rows", "format_table", "run_demo",
           "SAMPLERS", "FILES"]

SAMPLERS = ("exact", "MALA", "reverse diffusion", "PC + MALA", "PC + MALA (learned)")
#: Files the demo writes besides one ``<task>.png`` per task (other files in ``--out`` are kept).
FILES = ("demo.png", "metrics.md", "metrics.json")
#: First time of the learned models' ladders: their cosine schedule has alpha_bar(1) ~ 1e-8,
#: which makes a first step from t = 1 amplify the prior mismatch (see samplers.ReverseDiffusion).
LEARNED_T_MAX = 0.99


@dataclass(frozen=True)
class DemoConfig:
    """Settings of the demo (defaults: about half a minute on a 2-core CPU).

    Attributes
    ----------
    n : int
        Samples per sampler and task.
    seed : int
        Seed of every generator (same seed, same numbers).
    tasks : tuple of str
        Task names from :func:`toy.tasks.names`.
    diffusion_steps : int
        Reverse-diffusion steps (noise levels).
    pc_levels : int
        Noise levels of the predictor–corrector sampler.
    corrector_steps : int
        MALA steps per level in predictor–corrector.
    mala_steps : int
        MALA steps on the static target (after adaptation warm-up).
    device : str
        ``"cpu"`` or ``"cuda"``.
    """

    n: int = 2000
    seed: int = 0
    tasks: Sequence[str] = ("product", "mixture", "negation")
    diffusion_steps: int = 100
    pc_levels: int = 50
    corrector_steps: int = 2
    mala_steps: int = 300
    device: str = "cpu"


#: ``--quick``: the smaller settings (n is capped at 500).
QUICK = dict(diffusion_steps=40, pc_levels=20, corrector_steps=1, mala_steps=100)


def add_parser(subparsers) -> None:
    """Register ``demo`` (sets ``func``)."""
    d = subparsers.add_parser(
        "demo", parents=[common_options()], formatter_class=Formatter,
        help="compose the toy tasks, sample them, write plots and a metrics table",
        description=(
            "For the product (ring AND bar), mixture (left OR right) and negation (box AND NOT\n"
            "small box) tasks: draw exact samples, then sample with MALA on the composed energy,\n"
            "plain reverse diffusion on the summed diffused scores, and predictor-corrector with a\n"
            "MALA corrector; then predictor-corrector + MALA on the shipped learned models.\n\n"
            "Writes OUT/demo.png (all tasks), OUT/<task>.png, OUT/metrics.md and OUT/metrics.json\n"
            "(TV with its noise floor, MMD², energy distance, acceptance, NFE, time). The files move\n"
            "into OUT only after the run succeeded; other files in OUT are kept, and nothing is\n"
            "written on failure or Ctrl-C. About 10-30 s on a 2-core CPU."
        ),
        epilog="example:\n  ebmcompose demo --out demo-output\n  ebmcompose demo --quick --tasks product --out demo-quick",
    )
    d.add_argument("--out", default="demo-output", help="output folder (default: %(default)s; other files in it are kept)")
    d.add_argument("--n", type=positive_int, default=2000, help="samples per sampler (default: %(default)s)")
    d.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    d.add_argument("--tasks", nargs="+", default=["product", "mixture", "negation"], help="tasks to run (default: all)")
    d.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    d.add_argument("--quick", action="store_true", help="a smaller, faster configuration (for smoke tests)")
    d.set_defaults(func=run)


def run(args) -> int:
    """Run ``ebmcompose demo``; returns the exit status."""
    import toy

    unknown = [t for t in args.tasks if t not in toy.tasks.names()]
    if unknown:
        raise UsageError(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(toy.tasks.names())}")
    dev = device(args.device)
    cfg = DemoConfig(n=args.n, seed=args.seed, tasks=tuple(args.tasks), device=dev)
    if args.quick:
        cfg = DemoConfig(n=min(args.n, 500), seed=args.seed, tasks=tuple(args.tasks), device=dev, **QUICK)
    run_demo(Path(args.out), cfg)
    return 0


def _timed_row(res, t0: float, acceptance: bool = True) -> dict:
    s = ex.summarize(res.info)
    return dict(samples=res.samples, nfe=s.nfe, acceptance=s.acceptance if acceptance else None,
                seconds=time.perf_counter() - t0)


def run_samplers(task, cfg: DemoConfig) -> Dict[str, dict]:
    """Samples and cost of each sampler of :data:`SAMPLERS` on one task."""
    import torch

    import ebmcompose as ec

    dev = torch.device(cfg.device)
    schedule = ec.VPSchedule.linear()  # cosine's alpha_bar(1) ~ 1e-8 amplifies the prior mismatch
    diffused = ex.task_energy(task, "exact", "energy", schedule, dev)
    out: Dict[str, dict] = {}

    t0 = time.perf_counter()
    x = task.sample_exact(cfg.n, generator=ex.generator(cfg.seed)).to(dev)
    out["exact"] = dict(samples=x, nfe=0, acceptance=None, seconds=time.perf_counter() - t0)

    g = ex.generator(cfg.seed + 1, dev)
    x0 = 3.0 * torch.randn(cfg.n, 2, generator=g, device=dev, dtype=x.dtype)
    t0 = time.perf_counter()
    mala = ex.make_sampler(ex.SamplerOptions("mala", steps=cfg.mala_steps), schedule, exact=True)
    out["MALA"] = _timed_row(mala.sample(task.composed.to(dev), x0, generator=g), t0)

    g = ex.generator(cfg.seed + 2, dev)
    xT = torch.randn(cfg.n, 2, generator=g, device=dev, dtype=x.dtype)
    t0 = time.perf_counter()
    ddpm = ex.make_sampler(ex.SamplerOptions("ddpm", levels=cfg.diffusion_steps), schedule, exact=True)
    out["reverse diffusion"] = _timed_row(ddpm.sample(diffused, xT, generator=g), t0, acceptance=False)

    # The diffused components are exact at t = 0 too, so the last level is corrected as well.
    pc_opts = ex.SamplerOptions("pc-mala", levels=cfg.pc_levels, corrector_steps=cfg.corrector_steps)
    g = ex.generator(cfg.seed + 3, dev)
    xT = torch.randn(cfg.n, 2, generator=g, device=dev, dtype=x.dtype)
    t0 = time.perf_counter()
    out["PC + MALA"] = _timed_row(ex.make_sampler(pc_opts, schedule, exact=True).sample(diffused, xT, generator=g), t0)

    # The learned components: one conditional network per task, all leaves in one forward.
    learned = ex.task_energy(task, "learned", "energy", None, dev)
    pc_learned = ex.make_sampler(
        ex.SamplerOptions("pc-mala", levels=cfg.pc_levels, corrector_steps=cfg.corrector_steps, clip_x0=0,
                          t_max=LEARNED_T_MAX),
        ex.learned_schedule(task.name, "energy"), exact=False,
    )
    g = ex.generator(cfg.seed + 4, dev)
    xT = torch.randn(cfg.n, 2, generator=g, device=dev, dtype=x.dtype)
    t0 = time.perf_counter()
    out["PC + MALA (learned)"] = _timed_row(pc_learned.sample(learned, xT, generator=g), t0)
    return out


def metrics_rows(task, runs: Dict[str, dict], cfg: DemoConfig) -> List[dict]:
    """One metrics row per sampler; the ``exact`` row scores a second, independent exact sample."""
    exact = runs["exact"]["samples"]
    floor = ex.tv_floor(task.composed, task.bounds, cfg.n, cfg.seed + 10)
    rows = []
    for name, run_ in runs.items():
        x = run_["samples"]
        if name == "exact":
            x = task.sample_exact(cfg.n, generator=ex.generator(cfg.seed + 11))
        m = ex.compare_to_exact(x, exact, task.composed, task.bounds, cfg.seed + 12)
        rows.append(dict(
            task=task.name, sampler=name, tv=m["tv"], tv_floor=float(floor.mean), mmd=m["mmd"],
            energy_distance=m["energy_distance"], acceptance=run_["acceptance"], nfe=int(run_["nfe"]),
            seconds=round(float(run_["seconds"]), 3),
        ))
    return rows


def format_table(rows: List[dict]) -> str:
    """Markdown table of the demo's metrics rows."""
    return ex.markdown_table(
        ["task", "sampler", "TV (floor)", "MMD²", "energy dist.", "acceptance", "NFE", "time (s)"],
        [[r["task"], r["sampler"], f"{r['tv']:.3f} ({r['tv_floor']:.3f})", ex.fmt(r["mmd"], ".4f"),
          ex.fmt(r["energy_distance"], ".4f"), ex.fmt(r["acceptance"], ".2f"), r["nfe"], f"{r['seconds']:.2f}"]
         for r in rows],
    )


NOTES = """
TV: total variation between a 32×32 histogram of the samples and the exact density on the task's
bounds; the floor in brackets is the TV of an exact sample of the same size (what a perfect sampler
scores). MMD² (multi-bandwidth RBF, unbiased) and energy distance compare against exact samples;
the `exact` row uses a second independent exact sample. NFE counts energy/score evaluations
(one per analytic component; one per batched network forward for the learned models).
The learned row samples the shipped energy-parameterised component models (`toy.pretrained`)
on their cosine schedule from t = 0.99; the gap to the exact PC + MALA row is model error.
Reverse diffusion follows the sum of the *diffused* components' scores, which is not the score of
the diffused product: its excess TV on `product` and `negation` is the bias Du et al. (2023)
describe; MCMC correction at each level (PC + MALA) reduces it. On `mixture` the summed (OR)
diffused energy is exact, so reverse diffusion is unbiased there.
"""


def run_demo(out: Path, cfg: DemoConfig = DemoConfig(), log=print) -> List[dict]:
    """Run the demo; its files move into ``out`` (other files kept) when all succeeded. Returns the rows."""
    import toy

    all_rows: List[dict] = []
    per_task = {}
    with staged_output(out, "demo") as staging:
        for name in cfg.tasks:
            task = toy.tasks.get(name)
            log(f"[demo] {name}: {task.description}")
            runs = run_samplers(task, cfg)
            rows = metrics_rows(task, runs, cfg)
            all_rows.extend(rows)
            per_task[name] = (task, runs)
            for r in rows:
                log(f"[demo]   {r['sampler']:<20} TV {r['tv']:.3f} (floor {r['tv_floor']:.3f})  NFE {r['nfe']}")
        _write(staging, per_task, all_rows, cfg)
    log(f"[demo] wrote {out}/ (demo.png, <task>.png, metrics.md, metrics.json)")
    return all_rows


def _write(folder: Path, per_task, rows, cfg: DemoConfig) -> None:
    import matplotlib.pyplot as plt

    from ebmcompose import plot
    from ebmcompose.io import write_json, write_text

    try:
        for name, (task, runs) in per_task.items():
            fig = plot.compare({k: v["samples"].detach().cpu() for k, v in runs.items()},
                               reference=task.composed, bounds=task.bounds)
            fig.suptitle(f"{name}: {task.description}", fontsize=9)
            plot.save(fig, folder / f"{name}.png")
        plot.save(_overview(per_task, plot), folder / "demo.png")
        write_text(folder / "metrics.md", "# ebmcompose demo\n\n" + format_table(rows) + NOTES)
        config = dict(cfg.__dict__, tasks=list(cfg.tasks))
        write_json(folder / "metrics.json", {"config": config, "rows": rows})
    finally:
        plt.close("all")


def _overview(per_task, plot):
    """One figure: a row per task, a column per sampler, exact density first."""
    import matplotlib.pyplot as plt

    names = list(per_task)
    cols = 1 + len(SAMPLERS)
    fig, axes = plt.subplots(len(names), cols, figsize=(2.6 * cols, 2.6 * len(names)), squeeze=False)
    for i, name in enumerate(names):
        task, runs = per_task[name]
        plot.density(task.composed, task.bounds, ax=axes[i, 0], resolution=160)
        axes[i, 0].set_title(f"{name}: exact density", fontsize=8)
        for j, sname in enumerate(SAMPLERS, start=1):
            plot.samples(runs[sname]["samples"].detach().cpu(), ax=axes[i, j], bounds=task.bounds)
            axes[i, j].set_title(sname, fontsize=8)
    fig.tight_layout()
    return fig
