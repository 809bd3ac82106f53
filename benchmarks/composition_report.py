"""Findings, markdown and plots of the composition study (:mod:`benchmarks.composition_2d`).

Pure functions of the study's result dict: :func:`findings` (pairwise verdicts on TV),
:func:`format_markdown` (the report) and :func:`plot_task` (one PNG per task).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Tuple

__all__ = ["SAMPLERS", "SAMPLER_LABELS", "findings", "format_markdown", "plot_task", "fmt_se", "NOTES"]

#: Sampler keys, in table order.
SAMPLERS: Tuple[str, ...] = ("ddpm", "ddim", "annealed", "pc_ula", "pc_mala", "pc_hmc", "smc", "smc_fkc")
#: Display names of :data:`SAMPLERS`.
SAMPLER_LABELS: Dict[str, str] = {
    "ddpm": "reverse diffusion (DDPM)",
    "ddim": "DDIM",
    "annealed": "annealed Langevin (ULA)",
    "pc_ula": "PC + ULA",
    "pc_mala": "PC + MALA",
    "pc_hmc": "PC + HMC",
    "smc": "SMC + MALA",
    "smc_fkc": "SMC (FKC weights)",
}


def fmt_se(se: float) -> str:
    """A standard error for a log line (an en dash when undefined, i.e. one seed)."""
    return "–" if not math.isfinite(se) else f"{se:.3f}"


# --------------------------------------------------------------------------- findings
def _get(rows, **kw) -> Optional[dict]:
    for r in rows:
        if r["status"] == "ok" and all(r[k] == v for k, v in kw.items()):
            return r
    return None


def _compare(a: dict, b: dict, floor: Optional[Tuple[float, float]] = None, metric: str = "tv") -> Tuple[float, float, str]:
    """``(diff, se, verdict)`` of ``a − b`` on ``metric`` (lower is better).

    Verdict "better" / "worse" when the difference exceeds twice its standard error (the standard
    errors of the two rows combined as if independent; with common random numbers across rows
    this is conservative) and 0.01, else "tie". With ``floor = (mean, std)`` of the TV of exact
    samples, two rows that are both within ``mean + 2 std`` are a tie: neither can be told apart
    from exact sampling.
    """
    da, db = a[metric], b[metric]
    diff = da["mean"] - db["mean"]
    se = math.sqrt((da["se"] if math.isfinite(da["se"]) else 0.0) ** 2 + (db["se"] if math.isfinite(db["se"]) else 0.0) ** 2)
    if floor is not None and max(da["mean"], db["mean"]) <= floor[0] + 2.0 * floor[1]:
        return diff, se, "tie"
    if diff < -2 * se and diff < -0.01:
        verdict = "better"
    elif diff > 2 * se and diff > 0.01:
        verdict = "worse"
    else:
        verdict = "tie"
    return diff, se, verdict


def findings(rows: List[dict], tasks: Dict[str, dict]) -> List[dict]:
    """Pairwise comparisons the issue asks about, on TV (lower is better; see :func:`_compare`).

    ``tasks`` maps each task to its info (``tv_floor``, ``tv_floor_std``).

    * ``mcmc_vs_reverse``: the best Metropolis-corrected PC (MALA or HMC; PC + ULA for ε rows)
      vs reverse diffusion (DDPM) at the same task / model / parameterisation / budget;
    * ``metropolis_vs_ula``: PC + MALA and PC + HMC vs PC + ULA (energy rows);
    * ``smc_vs_pc``: the better SMC (energy weights + MALA, or FKC weights) vs the best PC sampler;
    * ``learned_vs_exact``: the same sampler and budget on the learned vs the exact energy model.
    """
    out = []
    groups = sorted({(r["task"], r["model"], r["param"], r["budget"]) for r in rows if r["status"] == "ok" and r["model"] != "exact sampling"})
    def fl(task):
        return tasks[task]["tv_floor"], tasks[task]["tv_floor_std"]

    for task, model, param, b in groups:
        kw = dict(task=task, model=model, param=param, budget=b)
        ddpm = _get(rows, sampler="ddpm", **kw)
        cands = [r for r in (_get(rows, sampler=s, **kw) for s in ("pc_mala", "pc_hmc", "pc_ula")) if r is not None]
        if ddpm is not None and cands:
            best = min(cands, key=lambda r: r["tv"]["mean"])
            d, se, v = _compare(best, ddpm, fl(task))
            out.append(dict(kind="mcmc_vs_reverse", **kw, a=best["sampler"], b="ddpm",
                            a_tv=best["tv"]["mean"], b_tv=ddpm["tv"]["mean"], diff=d, se=se, verdict=v))
        smcs = [r for r in (_get(rows, sampler=s, **kw) for s in ("smc", "smc_fkc")) if r is not None]
        if smcs and cands:
            best, pc = min(smcs, key=lambda r: r["tv"]["mean"]), min(cands, key=lambda r: r["tv"]["mean"])
            d, se, v = _compare(best, pc, fl(task))
            out.append(dict(kind="smc_vs_pc", **kw, a=best["sampler"], b=pc["sampler"], a_tv=best["tv"]["mean"],
                            b_tv=pc["tv"]["mean"], diff=d, se=se, verdict=v))
        ula = _get(rows, sampler="pc_ula", **kw)
        for s in ("pc_mala", "pc_hmc"):
            r = _get(rows, sampler=s, **kw)
            if r is not None and ula is not None:
                d, se, v = _compare(r, ula, fl(task))
                out.append(dict(kind="metropolis_vs_ula", **kw, a=s, b="pc_ula", a_tv=r["tv"]["mean"],
                                b_tv=ula["tv"]["mean"], diff=d, se=se, verdict=v))
    for r in rows:
        if r["status"] != "ok" or r["model"] != "learned":
            continue
        e = _get(rows, task=r["task"], model="exact", param=r["param"], budget=r["budget"], sampler=r["sampler"])
        if e is not None:
            d, se, v = _compare(r, e, fl(r["task"]))
            out.append(dict(kind="learned_vs_exact", task=r["task"], param=r["param"], budget=r["budget"],
                            sampler=r["sampler"], learned_tv=r["tv"]["mean"], exact_tv=e["tv"]["mean"],
                            diff=d, se=se, verdict=v))
    return out


# --------------------------------------------------------------------------- markdown
def _pm(s: Optional[dict], fmt: str = "{:.3f}") -> str:
    if s is None:
        return "–"
    m = fmt.format(s["mean"])
    if not math.isfinite(s["se"]):
        return m
    return f"{m} ± {fmt.format(s['se'])}"


def _summary_lines(result: dict) -> List[str]:
    """The summary: three answers with counts (from :func:`findings`) and an overview table."""
    fs = result["findings"]
    tasks = result["tasks"]
    rows = result["rows"]
    lines = []

    def count(kind):
        fk = [f for f in fs if f["kind"] == kind]
        return fk, {v: sum(f["verdict"] == v for f in fk) for v in ("better", "tie", "worse")}

    def where(fk, verdict):
        seen = []
        for f in fk:
            if f["verdict"] == verdict:
                label = f"{f['task']} ({f.get('model', 'learned')}/{f['param']}, B={f['budget']})"
                if label not in seen:
                    seen.append(label)
        return ", ".join(seen) or "nowhere"

    mv, c = count("mcmc_vs_reverse")
    if mv:
        lines.append(
            f"- **Does MCMC correction beat reverse diffusion at matched NFE?** The best PC sampler has a "
            f"lower TV than DDPM by more than 2 standard errors (and not both at the exact-sampling floor) "
            f"in {c['better']} of {len(mv)} "
            f"task/model/parameterisation/budget groups: {where(mv, 'better')}. Ties: {where(mv, 'tie')}. "
            f"Worse: {where(mv, 'worse')}."
        )
    mu, c = count("metropolis_vs_ula")
    if mu:
        lines.append(
            f"- **Does energy-parameterised MALA/HMC beat ULA (as PC correctors, same NFE)?** Better in "
            f"{c['better']}, tied in {c['tie']}, worse in {c['worse']} of {len(mu)} comparisons. Better: "
            f"{where(mu, 'better')}. Worse: {where(mu, 'worse')}."
        )
    sp, c = count("smc_vs_pc")
    if sp:
        lines.append(
            f"- **Do importance weights and resampling (SMC) beat the best PC sampler at matched NFE?** "
            f"Better in {c['better']}, tied in {c['tie']}, worse in {c['worse']} of {len(sp)} groups. Better: "
            f"{where(sp, 'better')}. Worse: {where(sp, 'worse')}."
        )
    lv, c = count("learned_vs_exact")
    if lv:
        per = {}
        for f in lv:
            per.setdefault((f["task"], f["param"]), []).append(f["diff"])
        parts = [f"{t}/{p}: {statistics.fmean(d):+.3f}" for (t, p), d in per.items()]
        far = sorted({f"{r['task']}/{r['param']} {SAMPLER_LABELS[r['sampler']]} ({r['outside']['mean']:.0%})"
                      for r in rows if r["status"] == "ok" and r["model"] == "learned"
                      and r["outside"]["mean"] > 0.005})
        lines.append(
            f"- **Is the learned model's result limited by model error?** Same sampler, "
            f"parameterisation and NFE, learned vs exact components: learned worse in {c['worse']}, tied in "
            f"{c['tie']}, better in {c['better']} of {len(lv)} rows; mean ΔTV (learned − exact) per "
            f"task/parameterisation: {'; '.join(parts)}. Learned rows with samples outside the task's "
            f"bounds (the exact target has < 1e-6 there): {', '.join(far) or 'none'}."
        )
    # overview table: one line per group
    groups = []
    for r in rows:
        if r["status"] == "ok" and r["model"] in ("exact", "learned"):
            key = (r["task"], r["model"], r["param"], r["budget"])
            if key not in groups:
                groups.append(key)
    if groups:
        lines += ["", "TV (mean ± s.e. over seeds) at matched NFE; **bold**: best of the row, floor: exact "
                  "sampling of the same size.", "",
                  "| task | model | param. | NFE | floor | " + " | ".join(SAMPLER_LABELS[s] for s in SAMPLERS) + " |",
                  "|---|---|---|---|---|" + "---|" * len(SAMPLERS)]
        for task, model, param, b in groups:
            cells = {}
            for s in SAMPLERS:
                r = _get(rows, task=task, model=model, param=param, budget=b, sampler=s)
                cells[s] = r
            ok = [r for r in cells.values() if r is not None]
            best = min(ok, key=lambda r: r["tv"]["mean"])["sampler"] if ok else None
            out = []
            for s in SAMPLERS:
                r = cells[s]
                if r is None:
                    out.append("n/a")
                else:
                    v = _pm(r["tv"])
                    out.append(f"**{v}**" if s == best else v)
            lines.append(f"| {task} | {model} | {param} | {b} | {tasks[task]['tv_floor']:.3f} | " + " | ".join(out) + " |")
    return lines


def _row_line(r: dict, floor: float) -> str:
    label = SAMPLER_LABELS.get(r["sampler"], r["sampler"])
    head = f"| {label} | {r['param']} | {r['budget'] or '–'} |"
    if r["status"] != "ok":
        return head + f" n/a | n/a | n/a | n/a | n/a | n/a | n/a | {r['reason']} |"
    acc = _pm(r["acceptance"], "{:.2f}") if r["acceptance"] is not None else "–"
    return (
        head + f" {_pm(r['tv'])} | {_pm(r['mmd'], '{:.4f}')} | {_pm(r['loglik'], '{:.2f}')} | "
        f"{_pm(r['mode_error'])} | {acc} | {r['nfe']['mean']:.0f} | {_pm(r['seconds'], '{:.2f}')} | "
        + (f"{r['outside']['mean']:.0%} outside bounds" if r["outside"]["mean"] > 0.005 else "")
        + " |"
    )


def format_markdown(result: dict) -> str:
    """The markdown report: summary, one table per task and model, notes."""
    cfg = result["config"]
    lines = ["# Composition benchmark: samplers at matched NFE on the 2-D tasks", ""]
    if cfg.get("quick"):
        lines += ["**Quick smoke run (`--quick`): small n, few seeds; not the reference numbers.**", ""]
    lines += [
        f"n = {cfg['n']} samples per run, {cfg['seeds']} seeds (mean ± standard error over seeds), "
        f"NFE budgets {cfg['budgets']} (exact models) and {cfg['learned_budgets']} (learned models), "
        f"schedule {result['schedule']} (the checkpoints'), ladders from t = {result['t_start']}. "
        f"Total wall time {result['total_seconds']:.0f} s.",
        "",
        "## Summary",
        "",
        *_summary_lines(result),
        "",
        "## Tables",
        "",
        "TV: histogram total variation against the exact density (32×32 cells); lower is better, "
        "the floor is what an exact sample of the same size scores. MMD²: against an exact sample "
        "(can be slightly negative). log-lik: mean log density of the samples under the exact target "
        "(higher is better; the exact-sampling row is the target's value). mode err.: total variation of "
        "mode/region weights. acc.: Metropolis acceptance (MALA/HMC only). NFE: expression evaluations "
        "per chain (see notes). time: wall seconds per run.",
        "",
    ]
    header = ("| sampler | param. | budget | TV | MMD² | log-lik | mode err. | acc. | NFE | time (s) | note |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|")
    rows = result["rows"]
    for tname, info in result["tasks"].items():
        lines += [f"### {tname}: {info['description']}", "",
                  f"Ground truth: {info['ground_truth']}. TV floor {info['tv_floor']:.3f} "
                  f"(± {info['tv_floor_std']:.3f} across exact samples). Mode error: {info['mode_error']}.", ""]
        ex = _get(rows, task=tname, model="exact sampling")
        for model in ("exact", "learned"):
            mrows = [r for r in rows if r["task"] == tname and r["model"] == model]
            if not mrows:
                continue
            if all(r["status"] != "ok" for r in mrows) and model == "learned":
                lines += [f"**learned model**: n/a ({mrows[0]['reason']}).", ""]
                continue
            title = "exact analytic energies" if model == "exact" else "learned (shipped checkpoints)"
            lines += [f"**{title}**", "", header]
            if ex is not None:
                lines.append(_row_line(dict(ex, sampler="exact sampling", param="–", budget=0), info["tv_floor"]))
            order = {s: i for i, s in enumerate(SAMPLERS)}
            for r in sorted(mrows, key=lambda r: (r["budget"], r["param"] != "energy", order[r["sampler"]])):
                lines.append(_row_line(r, info["tv_floor"]))
            lines.append("")
    lines += ["## Notes", "", NOTES.strip(), ""]
    return "\n".join(lines)


NOTES = """
- **TV noise floor.** A finite exact sample has a positive histogram TV. The floor in each task's
  heading is `ec.metrics.histogram_tv_baseline` (16 multinomial draws of n points from the exact
  cell probabilities); the "exact sampling" row is an independent exact sample scored like a
  sampler. A sampler within about a floor-std of the floor is as good as exact at this resolution;
  differences below the floor's spread are not meaningful.
- **NFE accounting.** NFE counts *evaluations of the whole composed expression*, per chain:
  `info["nfe"]` divided by what one evaluation of the expression costs
  (`Energy.evaluate(...).nfe`). For analytic energies the library counts one NFE per leaf (2 for
  product/mixture/negation, 3 for tilted), for learned models one batched network forward evaluates
  all leaves (1), so this normalisation makes the budgets comparable; the raw counts are in the JSON
  (`nfe_raw`). An evaluation gives energy and gradient together for the Metropolis samplers and the
  gradient only for the others. PC reuses the corrector's cached gradient for the next predictor
  step; dual-averaging step-size adaptation is included in the count. Budgets are matched to within
  a few evaluations (integer numbers of levels).
- **Samplers.** DDPM (η = 1) and DDIM (η = 0) follow the summed *diffused* component scores
  (Liu et al. 2022), which are not the scores of the diffused composition for product, negation
  and tilted (Du et al. 2023); they are exact for the mixture. Annealed Langevin: ULA, three steps
  per level, down to t = 0.01 (its samples are at t = 0.01, not denoised), step size starting at
  0.5 σ_t² and adapted per level (settings from a small sweep on the exact product task). PC: one DDPM predictor step + `corrector_steps`
  corrector transitions per level (HMC: 2 leapfrog steps), step sizes adapted per level towards the
  kernel's target acceptance; exact models also correct at t = 0 (their diffused energies are
  exact there), learned ones cannot (σ = 0). Same starting noise for every sampler of a seed
  (common random numbers).
- **Schedule.** Every row uses the cosine schedule the checkpoints were trained with, so learned
  and exact rows differ by model error only. All ladders start at t = 0.99 instead of 1: the
  cosine α̅ is clamped to 1e-8 at t = 1, and a first reverse step from there multiplies the
  x0-prediction error by ~150, which throws non-normalised compositions and learned models out of
  the support (`samplers.ReverseDiffusion` notes). Every sampler gets `t_max = 0.99` but SMC with
  FKC weights (`t_max = 0.9`, below).
- **SMC.** SMC + MALA: reverse-diffusion proposals weighted by energy differences toward the
  composed intermediate targets, resampled when ESS/n < 0.5, one MALA rejuvenation transition per
  level (`samplers.SMC`). SMC (FKC weights): Feynman–Kac corrector weights from the leaves' scores
  (no energies, no rejuvenation; mixtures are not linear compositions, so n/a), from `t_max = 0.9`:
  the weights discretise a continuous identity, and the cosine ladder's steps near t = 1 integrate
  the schedule's β over far more than 1. Energy weights need energy values that are right *between*
  modes; a learned energy is fitted through its gradient, and where its values between separated
  modes are off the weights move the mass to the wrong mode (compare the learned and exact rows).
- **ε vs energy.** For exact models, "epsilon" wraps each diffused component's score as a
  score-only `ec.ScoreFunction`, so score-based samplers give the same numbers as the energy rows
  (same score, same random numbers) and Metropolis correctors are n/a. For learned models the two
  are different networks (`toy.pretrained`, ε-network vs energy network `E = ½‖g‖²`). The
  mixture's OR (`|`) weights each component's score by its posterior, which needs energies: every
  ε row of the mixture is n/a. Learned energies are unnormalised, so a learned mixture's weights
  are only as equal as the concepts' normalising constants (see its mode error).
- **Verdicts** in the summary compare TV means: "better"/"worse" needs a difference of more than
  0.01 and more than twice the combined standard error of the two rows; two rows that are both
  within 2 floor-stds of the TV floor are a tie (both indistinguishable from exact sampling).
  All rows of a seed start from the same noise, so the rows' errors are correlated and the
  combined standard error is conservative.
- **log-likelihood** is a mean, so a few far-out samples dominate it; read it with the
  "outside bounds" note.
- **Wall time** is measured on a shared 2-core machine (other jobs ran concurrently), with one
  torch thread per run: treat it as indicative only. NFE is the cost measure that matters.
"""


# --------------------------------------------------------------------------- plots & files
def plot_task(task, info: dict, samples_by_row: dict, path: Path) -> None:
    """One PNG of a task: the exact density or samples, then each sampler's samples per row."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ebmcompose import plot

    tname = task.name
    row_keys = [k for k in samples_by_row if k[0] != "exact sampling"]
    ncols = 1 + len(SAMPLERS)
    nrows = max(len(row_keys), 1)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.2 * ncols, 2.2 * nrows), squeeze=False)
    for i, key in enumerate(row_keys):
        ax0 = axes[i, 0]
        if i == 0:
            plot.density(task.composed, task.bounds, ax=ax0, resolution=120)
            ax0.set_title("exact density", fontsize=7)
        else:
            x, _ = samples_by_row[("exact sampling", "-")]["exact"]
            plot.samples(x, ax=ax0, bounds=task.bounds)
            ax0.set_title("exact samples", fontsize=7)
        for j, s in enumerate(SAMPLERS, start=1):
            ax = axes[i, j]
            if s in samples_by_row[key]:
                x, b = samples_by_row[key][s]
                plot.samples(x, ax=ax, bounds=task.bounds)
                ax.set_title(f"{key[0]}/{key[1]}: {SAMPLER_LABELS[s]}\nNFE {b}", fontsize=6)
            else:
                ax.set_axis_off()
                ax.text(0.5, 0.5, f"{key[0]}/{key[1]}\n{SAMPLER_LABELS[s]}\nn/a", ha="center", va="center", fontsize=6)
        for ax in axes[i]:
            ax.tick_params(labelsize=5)
    fig.suptitle(f"{tname}: {info['description']} (seed 0, largest budget per row)", fontsize=8)
    fig.tight_layout()
    plot.save(fig, path, dpi=110)
    plt.close(fig)


