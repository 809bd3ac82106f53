"""The main job: compose the toy tasks, sample them several ways, and measure against exact answers.

For each task of Du et al. 2023 (``product``, ``mixture``, ``negation``; see :mod:`toy.tasks`):

* **exact** — samples of the exact composed density (closed form, or the grid sampler);
* **MALA** — Metropolis-adjusted Langevin on the *static* composed energy (adapted step size);
* **reverse diffusion** — DDPM ancestral sampling that follows the *sum of the diffused
  components' scores* (the composition of Liu et al. 2022), which is not the score of the
  diffused composition, so it is biased for products and negations;
* **PC + MALA** — the same reverse process with MALA corrector steps at every noise level
  (Du et al. 2023), which targets the composed density at each level;
* **PC + MALA (learned)** — the same sampler on the shipped *learned* energy-parameterised
  component models (``toy.pretrained``, one batched network forward per evaluation), composed
  with the same algebra: what a user gets without closed forms.

Writes ``<out>/<task>.png`` (exact density beside each sampler's samples), ``<out>/demo.png``
(all tasks), ``<out>/metrics.md`` and ``<out>/metrics.json``: histogram TV against the exact
density (with the TV an exact sample of the same size has: the noise floor), MMD² and energy
distance against exact samples, acceptance, NFE and wall time. The whole folder is written
atomically.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

import ebmcompose as ec
import samplers
import toy
from ebmcompose.io import atomic_dir, write_json, write_text

__all__ = ["DemoConfig", "run_demo", "format_table"]

SAMPLERS = ("exact", "MALA", "reverse diffusion", "PC + MALA", "PC + MALA (learned)")

#: First time of the learned models' ladders: their cosine schedule has alpha_bar(1) ~ 1e-8,
#: which makes a first step from t = 1 amplify the prior mismatch (see samplers.ReverseDiffusion).
LEARNED_T_MAX = 0.99

#: Histogram cells per axis for the TV metric (32×32 keeps the noise floor low at n = 2000).
TV_RESOLUTION = 32


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


def _generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _run_samplers(task, cfg: DemoConfig, device: torch.device) -> Dict[str, dict]:
    """Samples and cost of each sampler on one task."""
    # The linear schedule: the cosine one's alpha_bar(1) ~ 1e-8 makes the first reverse step
    # amplify the prior mismatch of non-normalised compositions (see samplers.ReverseDiffusion).
    schedule = ec.VPSchedule.linear()
    composed = task.composed.to(device)
    diffused = task.composed_diffused(schedule).to(device)
    out: Dict[str, dict] = {}

    t0 = time.perf_counter()
    x = task.sample_exact(cfg.n, generator=_generator(cfg.seed, torch.device("cpu"))).to(device)
    out["exact"] = dict(samples=x, nfe=0, acceptance=None, seconds=time.perf_counter() - t0)

    g = _generator(cfg.seed + 1, device)
    x0 = 3.0 * torch.randn(cfg.n, 2, generator=g, device=device, dtype=x.dtype)
    t0 = time.perf_counter()
    res = samplers.MALA(n_steps=cfg.mala_steps).sample(composed, x0, generator=g)
    out["MALA"] = dict(
        samples=res.samples, nfe=res.info["nfe"], acceptance=float(res.info["acceptance"].mean()),
        seconds=time.perf_counter() - t0,
    )

    g = _generator(cfg.seed + 2, device)
    xT = torch.randn(cfg.n, 2, generator=g, device=device, dtype=x.dtype)
    t0 = time.perf_counter()
    res = samplers.ReverseDiffusion(schedule, n_steps=cfg.diffusion_steps, eta=1.0).sample(diffused, xT, generator=g)
    out["reverse diffusion"] = dict(
        samples=res.samples, nfe=res.info["nfe"], acceptance=None, seconds=time.perf_counter() - t0
    )

    g = _generator(cfg.seed + 3, device)
    xT = torch.randn(cfg.n, 2, generator=g, device=device, dtype=x.dtype)
    t0 = time.perf_counter()
    # The diffused components are exact at t = 0 too, so the last level is corrected as well.
    pc = samplers.PredictorCorrector(
        schedule, n_steps=cfg.pc_levels, corrector=samplers.MALA(n_steps=cfg.corrector_steps),
        step_rule="adapt", final_correction=True,
    )
    res = pc.sample(diffused, xT, generator=g)
    out["PC + MALA"] = _pc_row(res, t0)

    # The learned components: one conditional network per task, all leaves in one forward.
    model, _ = toy.pretrained.load(task.name, "energy")
    learned = task.compose(toy.pretrained.components(task.name, "energy")).to(device)
    g = _generator(cfg.seed + 4, device)
    xT = torch.randn(cfg.n, 2, generator=g, device=device, dtype=x.dtype)
    t0 = time.perf_counter()
    pc = samplers.PredictorCorrector(
        model.schedule, n_steps=cfg.pc_levels, corrector=samplers.MALA(n_steps=cfg.corrector_steps),
        step_rule="adapt", t_max=LEARNED_T_MAX,
    )
    out["PC + MALA (learned)"] = _pc_row(pc.sample(learned, xT, generator=g), t0)
    return out


def _pc_row(res, t0: float) -> dict:
    acc = torch.as_tensor(res.info["acceptance"]).float()
    return dict(
        samples=res.samples, nfe=res.info["nfe"], acceptance=float(acc[~acc.isnan()].mean()),
        seconds=time.perf_counter() - t0,
    )


def _metrics(task, runs: Dict[str, dict], cfg: DemoConfig) -> List[dict]:
    exact = runs["exact"]["samples"]
    ref_energy = task.composed
    g = _generator(cfg.seed + 10, torch.device("cpu"))
    floor = ec.metrics.histogram_tv_baseline(ref_energy, task.bounds, cfg.n, resolution=TV_RESOLUTION, generator=g)
    rows = []
    # A second, independent exact sample gives the metrics' values for a perfect sampler.
    for name, run in runs.items():
        x = run["samples"].detach().to("cpu", torch.float64)
        if name == "exact":
            comp = task.sample_exact(cfg.n, generator=_generator(cfg.seed + 11, torch.device("cpu"))).double()
        else:
            comp = x
        tv = ec.metrics.histogram_tv(comp, ref_energy, task.bounds, resolution=TV_RESOLUTION)
        rows.append(
            dict(
                task=task.name,
                sampler=name,
                tv=float(tv.tv),
                tv_floor=float(floor.mean),
                mmd=float(ec.metrics.mmd(comp, exact.double().cpu(), generator=_generator(cfg.seed + 12, torch.device("cpu")))),
                energy_distance=float(
                    ec.metrics.energy_distance(comp, exact.double().cpu(), generator=_generator(cfg.seed + 13, torch.device("cpu")))
                ),
                acceptance=run["acceptance"],
                nfe=int(run["nfe"]),
                seconds=round(float(run["seconds"]), 3),
            )
        )
    return rows


def format_table(rows: List[dict]) -> str:
    """Markdown table of the demo's metrics rows."""
    head = "| task | sampler | TV (floor) | MMD² | energy dist. | acceptance | NFE | time (s) |\n"
    head += "|---|---|---|---|---|---|---|---|\n"
    lines = []
    for r in rows:
        acc = "–" if r["acceptance"] is None else f"{r['acceptance']:.2f}"
        lines.append(
            f"| {r['task']} | {r['sampler']} | {r['tv']:.3f} ({r['tv_floor']:.3f}) | {r['mmd']:.4f} | "
            f"{r['energy_distance']:.4f} | {acc} | {r['nfe']} | {r['seconds']:.2f} |"
        )
    return head + "\n".join(lines) + "\n"


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
    """Run the demo and write its folder atomically; returns the metrics rows."""
    from ebmcompose import plot

    device = torch.device(cfg.device)
    all_rows: List[dict] = []
    figures = {}
    per_task = {}
    for name in cfg.tasks:
        task = toy.tasks.get(name)
        log(f"[demo] {name}: {task.description}")
        runs = _run_samplers(task, cfg, device)
        rows = _metrics(task, runs, cfg)
        all_rows.extend(rows)
        per_task[name] = (task, runs)
        for r in rows:
            log(f"[demo]   {r['sampler']:<20} TV {r['tv']:.3f} (floor {r['tv_floor']:.3f})  NFE {r['nfe']}")
    with atomic_dir(out) as tmp:
        for name, (task, runs) in per_task.items():
            fig = plot.compare(
                {k: v["samples"].detach().cpu() for k, v in runs.items()},
                reference=task.composed, bounds=task.bounds,
            )
            fig.suptitle(f"{name}: {task.description}", fontsize=9)
            plot.save(fig, tmp / f"{name}.png")
            figures[name] = fig
        fig = _overview(per_task, plot)
        plot.save(fig, tmp / "demo.png")
        table = format_table(all_rows)
        write_text(tmp / "metrics.md", "# ebmcompose demo\n\n" + table + NOTES)
        write_json(tmp / "metrics.json", {"config": _config_dict(cfg), "rows": all_rows})
    import matplotlib.pyplot as plt

    plt.close("all")
    log(f"[demo] wrote {out}/ (demo.png, <task>.png, metrics.md, metrics.json)")
    return all_rows


def _config_dict(cfg: DemoConfig) -> dict:
    d = dict(cfg.__dict__)
    d["tasks"] = list(d["tasks"])
    return d


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
