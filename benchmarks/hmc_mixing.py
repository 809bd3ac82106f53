"""HMC mixing on 100-D ill-conditioned Gaussians: step-size jitter and diagonal mass adaptation.

    python -m benchmarks.hmc_mixing [--quick] [--seeds 3] [--out benchmarks/results]

Targets (diagonal, so each coordinate is an eigen-direction; HMC with a scalar mass is rotation
invariant, so a rotated Gaussian of the same spectrum mixes alike):

* ``log-spaced``: standard deviations log-spaced from 0.1 to 1 (condition number 100 in variance).
  With ``L = 10`` leapfrog steps at the adapted step, some directions turn by a whole period per
  trajectory and never move: fixed-``L`` resonance.
* ``gamma``: variances drawn from Gamma(0.5, 1) (seed 10) and scaled to a largest variance of 1, as
  inference-gym's ``IllConditionedGaussian`` (condition number ~2e4 here).

Configurations, all ``HMC(n_leapfrog=10)``, 128 chains, compiled transitions, float64, the same
start points: a fixed step size (adapted once without jitter at unit mass, then fixed) with jitter
0 (the baseline) and 0.2 (the default); and ``adapt_mass=True`` (step size and mass adapted in
warm-up). Reported per seed and as medians: min / median ESS over coordinates per gradient
(``samplers.diagnostics.ess``), acceptance, and the largest relative error of the coordinate
variances (a wrong sampler would show).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

import ebmcompose as ec
from ebmcompose.io import write_json, write_text
from samplers import HMC
from samplers.diagnostics import ess

N_LEAPFROG = 10


def target_std(name: str, dim: int) -> torch.Tensor:
    """Standard deviations ``(dim,)`` float64 of a named target."""
    if name == "log-spaced":
        return torch.logspace(-1, 0, dim, dtype=torch.float64)
    var = np.sort(np.random.default_rng(10).gamma(0.5, 1.0, dim))
    return torch.tensor(np.sqrt(var / var.max()), dtype=torch.float64)


def one_run(std: torch.Tensor, config: str, h: float, *, chains: int, steps: int, warmup: int, seed: int,
            compile: bool = True) -> Dict[str, Any]:
    energy = ec.EnergyFunction(lambda x: 0.5 * (x / std).square().sum(1), name="gaussian")
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(chains, std.numel(), dtype=torch.float64, generator=g) * std
    if config == "adapt_mass":
        kernel = HMC(n_leapfrog=N_LEAPFROG, n_steps=steps, n_warmup=warmup, adapt_mass=True, compile=compile)
    else:
        kernel = HMC(step_size=h, n_leapfrog=N_LEAPFROG, n_steps=steps, n_warmup=0, compile=compile,
                     jitter=0.0 if config == "fixed step, no jitter" else 0.2)
    t0 = time.perf_counter()
    res = kernel.sample(energy, x0, generator=g, trace_every=1, on_divergence="ignore")
    secs = time.perf_counter() - t0
    es = ess(res.info.trace)
    grads = steps * N_LEAPFROG * res.samples.shape[0]  # gradient evaluations of the kept steps, all chains
    var_err = (res.info.trace.var(dim=(0, 1)) / std.square() - 1.0).abs().max()
    return {"config": config, "seed": seed, "min_ess_per_grad": float(es.min()) / grads,
            "median_ess_per_grad": float(es.median()) / grads, "worst_dim": int(es.argmin()),
            "acceptance": float(res.info.acceptance.mean()), "step_size": float(res.info.step_size),
            "max_var_rel_error": float(var_err), "seconds": secs}


CONFIGS = ("fixed step, no jitter", "fixed step, jitter 0.2", "adapt_mass")


def run(*, quick: bool = False, seeds: int = 3) -> Dict[str, Any]:
    dim, chains, steps, warmup = (20, 32, 100, 100) if quick else (100, 128, 1000, 500)  # quick: eager, no compile
    load0 = os.getloadavg()
    out: Dict[str, Any] = {"quick": quick, "dim": dim, "chains": chains, "steps": steps, "warmup": warmup,
                           "n_leapfrog": N_LEAPFROG, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                           "load_before": load0, "targets": {}}
    for name in ("log-spaced", "gamma"):
        std = target_std(name, dim)
        energy = ec.EnergyFunction(lambda x: 0.5 * (x / std).square().sum(1))
        x0 = torch.randn(chains, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(99)) * std
        tuned = HMC(n_leapfrog=N_LEAPFROG, n_steps=1, n_warmup=warmup, jitter=0.0, compile=not quick).sample(
            energy, x0, generator=torch.Generator().manual_seed(98), on_divergence="ignore")
        h = float(tuned.info.step_size)
        rows: List[Dict[str, Any]] = []
        for seed in range(seeds):  # configurations interleaved within each seed
            for config in CONFIGS:
                rows.append(one_run(std, config, h, chains=chains, steps=steps, warmup=warmup, seed=seed, compile=not quick))
        med = {c: {k: statistics.median(r[k] for r in rows if r["config"] == c)
                   for k in ("min_ess_per_grad", "median_ess_per_grad", "acceptance", "max_var_rel_error")}
               for c in CONFIGS}
        base = med[CONFIGS[0]]["min_ess_per_grad"]
        for c in CONFIGS:
            med[c]["min_ess_gain"] = med[c]["min_ess_per_grad"] / base
        cond = float((std.max() / std.min()) ** 2)
        out["targets"][name] = {"condition_number": cond, "fixed_step_size": h, "rows": rows, "median": med}
    out["load_after"] = os.getloadavg()
    return out


def markdown(r: Dict[str, Any]) -> str:
    lines = [
        "# HMC mixing: step-size jitter and mass adaptation",
        "",
        f"Generated by `python -m benchmarks.hmc_mixing{' --quick' if r['quick'] else ''}` ({r['dim']}-D, {r['chains']} chains, "
        f"{r['steps']} kept steps, L = {r['n_leapfrog']}, compiled, float64; {r['threads']} torch thread(s), {r['cpus']} CPUs; "
        f"load average {r['load_before'][0]:.1f} before, {r['load_after'][0]:.1f} after). Medians over seeds; "
        "ESS per gradient = ESS (pooled over chains) / (kept steps × L × chains); the baseline is the first row of each target.",
        "",
    ]
    if r["quick"]:
        lines += ["**Quick mode: tiny sizes; the numbers test the pipeline, not the mixing.**", ""]
    for name, t in r["targets"].items():
        lines += [f"## {name} (condition number {t['condition_number']:.3g}; fixed step {t['fixed_step_size']:.4f})", "",
                  "| configuration | min ESS / grad | gain | median ESS / grad | acceptance | max var. rel. error |",
                  "|---|---:|---:|---:|---:|---:|"]
        for c, m in t["median"].items():
            lines.append(f"| {c} | {m['min_ess_per_grad']:.3g} | {m['min_ess_gain']:.1f}× | {m['median_ess_per_grad']:.3g} | "
                         f"{m['acceptance']:.3f} | {m['max_var_rel_error']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (a pipeline check)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run(quick=args.quick, seeds=args.seeds)
    out = Path(args.out)
    write_json(out / "hmc_mixing.json", result)
    write_text(out / "hmc_mixing.md", markdown(result))
    for name, t in result["targets"].items():
        print(name + ": " + "; ".join(f"{c} {m['min_ess_per_grad']:.4f} ({m['min_ess_gain']:.1f}x)" for c, m in t["median"].items()))
    print(f"wrote {out}/hmc_mixing.json, .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
