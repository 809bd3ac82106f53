"""Chain-steps per second of ULA, MALA and HMC against minimal hand-written torch loops.

Target: the 8-Gaussian ring (radius 4, std 0.3) with a closed-form energy and gradient. The
same function ``ring_energy_and_grad`` is called by the hand loops directly and by the samplers
through an :class:`ebmcompose.Energy` leaf, so the ratio measures exactly the library's overhead
(``Energy.evaluate`` machinery + kernel bookkeeping: finiteness checks, per-chain masks,
recorder). Median of repeats, sampler and hand loop interleaved.

Usage::

    python benchmarks/sampler_speed.py            # full run, writes benchmarks/results/
    python benchmarks/sampler_speed.py --quick    # short run
    python benchmarks/sampler_speed.py --device cuda

Targets: eager within 10 % of the hand loop at N >= 1e4; < 20 us/step overhead at N = 100;
compiled MALA >= 10 M chain-steps/s at N = 1e5.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ebmcompose as ec  # noqa: E402
from ebmcompose.io import write_json, write_text  # noqa: E402
from samplers import HMC, MALA, ULA  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STEP = {"ULA": 0.01, "MALA": 0.03, "HMC": 0.1}
N_LEAPFROG = 5


def ring_params(device, dtype):
    ang = 2 * math.pi * torch.arange(8, dtype=torch.float64) / 8
    means = (4.0 * torch.stack([ang.cos(), ang.sin()], -1)).to(device=device, dtype=dtype)
    return means, 0.3**2


def ring_energy_and_grad(x, means, var):
    """Closed-form ``-log (1/8 Σ_k N(x; μ_k, var I))`` ``(B,)`` and its gradient ``(B, 2)``."""
    diff = x[:, None, :] - means  # (B, 8, 2)
    logits = -0.5 * diff.square().sum(-1) / var
    energy = -torch.logsumexp(logits, -1) + math.log(8 * 2 * math.pi * var)
    resp = torch.softmax(logits, -1)
    grad = (resp[..., None] * diff).sum(1) / var
    return energy, grad


class Ring(ec.Energy):
    """The ring as an Energy leaf with a closed-form ``_energy_and_grad`` (no autograd)."""

    event_shape = (2,)

    def __init__(self, device, dtype):
        super().__init__()
        self.means, self.var = ring_params(device, dtype)

    def _energy(self, x, t):
        return ring_energy_and_grad(x, self.means, self.var)[0]

    def _energy_and_grad(self, x, t, create_graph=False):
        return ring_energy_and_grad(x, self.means, self.var)

    def _grad(self, x, t, create_graph=False):
        return ring_energy_and_grad(x, self.means, self.var)[1]


# ------------------------------------------------------------------------------- hand loops
def hand_ula(x, n, h, gen, means, var):
    _, g = ring_energy_and_grad(x, means, var)
    s = math.sqrt(2 * h)
    for _ in range(n):
        x = x - h * g + s * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        _, g = ring_energy_and_grad(x, means, var)
    return x


def hand_mala(x, n, h, gen, means, var):
    e, g = ring_energy_and_grad(x, means, var)
    s = math.sqrt(2 * h)
    for _ in range(n):
        noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        xp = x - h * g + s * noise
        ep, gp = ring_energy_and_grad(xp, means, var)
        log_r = e - ep - (x - xp + h * gp).square().sum(1) / (4 * h) + 0.5 * noise.square().sum(1)
        acc = torch.rand(x.shape[:1], generator=gen, device=x.device, dtype=x.dtype) < log_r.clamp(max=0).exp()
        x = torch.where(acc[:, None], xp, x)
        e = torch.where(acc, ep, e)
        g = torch.where(acc[:, None], gp, g)
    return x


def hand_hmc(x, n, h, gen, means, var):
    e, g = ring_energy_and_grad(x, means, var)
    for _ in range(n):
        p0 = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        xp, p = x, p0 - 0.5 * h * g
        for i in range(N_LEAPFROG):
            xp = xp + h * p
            ep, gp = ring_energy_and_grad(xp, means, var)
            p = p - (0.5 * h if i == N_LEAPFROG - 1 else h) * gp
        d_h = ep + 0.5 * p.square().sum(1) - e - 0.5 * p0.square().sum(1)
        acc = torch.rand(x.shape[:1], generator=gen, device=x.device, dtype=x.dtype) < (-d_h).clamp(max=0).exp()
        x = torch.where(acc[:, None], xp, x)
        e = torch.where(acc, ep, e)
        g = torch.where(acc[:, None], gp, g)
    return x


HAND = {"ULA": hand_ula, "MALA": hand_mala, "HMC": hand_hmc}


# ------------------------------------------------------------------- compiled hand loops
# The same transitions as one torch.compile'd function per step (random draws stay eager, as in
# the library's compiled kernels): the apples-to-apples baseline for the compiled rows, and the
# bound on what any compiled kernel can reach on this target and machine.
def _ula_step(x, g, noise, h, means, var):
    x = x - h * g + (2 * h).sqrt() * noise
    return x, ring_energy_and_grad(x, means, var)[1]


def _mala_step(x, e, g, noise, u, h, means, var):
    xp = x - h * g + (2 * h).sqrt() * noise
    ep, gp = ring_energy_and_grad(xp, means, var)
    log_r = e - ep - (x - xp + h * gp).square().sum(1) / (4 * h) + 0.5 * noise.square().sum(1)
    acc = u < log_r.clamp(max=0).exp()
    return torch.where(acc[:, None], xp, x), torch.where(acc, ep, e), torch.where(acc[:, None], gp, g)


def _hmc_step(x, e, g, p0, u, h, means, var):
    xp, p = x, p0 - 0.5 * h * g
    for i in range(N_LEAPFROG):
        xp = xp + h * p
        ep, gp = ring_energy_and_grad(xp, means, var)
        p = p - (0.5 * h if i == N_LEAPFROG - 1 else h) * gp
    d_h = ep + 0.5 * p.square().sum(1) - e - 0.5 * p0.square().sum(1)
    acc = u < (-d_h).clamp(max=0).exp()
    return torch.where(acc[:, None], xp, x), torch.where(acc, ep, e), torch.where(acc[:, None], gp, g)


_COMPILED_STEPS = {}


def _compiled_step(fn):
    if fn not in _COMPILED_STEPS:
        _COMPILED_STEPS[fn] = torch.compile(fn, dynamic=False, fullgraph=True)
    return _COMPILED_STEPS[fn]


def hand_ula_compiled(x, n, h, gen, means, var):
    step, h = _compiled_step(_ula_step), torch.tensor(h, device=x.device, dtype=x.dtype)
    _, g = ring_energy_and_grad(x, means, var)
    for _ in range(n):
        x, g = step(x, g, torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype), h, means, var)
    return x


def hand_mala_compiled(x, n, h, gen, means, var):
    step, h = _compiled_step(_mala_step), torch.tensor(h, device=x.device, dtype=x.dtype)
    e, g = ring_energy_and_grad(x, means, var)
    for _ in range(n):
        noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        u = torch.rand(x.shape[:1], generator=gen, device=x.device, dtype=x.dtype)
        x, e, g = step(x, e, g, noise, u, h, means, var)
    return x


def hand_hmc_compiled(x, n, h, gen, means, var):
    step, h = _compiled_step(_hmc_step), torch.tensor(h, device=x.device, dtype=x.dtype)
    e, g = ring_energy_and_grad(x, means, var)
    for _ in range(n):
        p0 = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        u = torch.rand(x.shape[:1], generator=gen, device=x.device, dtype=x.dtype)
        x, e, g = step(x, e, g, p0, u, h, means, var)
    return x


HAND_COMPILED = {"ULA": hand_ula_compiled, "MALA": hand_mala_compiled, "HMC": hand_hmc_compiled}


def kernel(name, n_steps, compiled):
    k = {
        "ULA": ULA(step_size=STEP["ULA"], n_steps=n_steps),
        "MALA": MALA(step_size=STEP["MALA"], n_steps=n_steps),
        "HMC": HMC(step_size=STEP["HMC"], n_leapfrog=N_LEAPFROG, n_steps=n_steps),
    }[name]
    return k.compiled() if compiled else k


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, cpu=False):
    """Wall-clock seconds of ``fn()`` (``cpu=True``: also this process's CPU seconds)."""
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    wall, proc = time.perf_counter() - t0, time.process_time() - c0
    return (wall, proc) if cpu else wall


def n_steps_for(n, name, quick):
    base = {100: 2000, 1000: 1000, 10_000: 300, 100_000: 60}[n]
    if name == "HMC":
        base = max(base // N_LEAPFROG, 10)
    return max(base // (4 if quick else 1), 10)


def bench(args):
    device = torch.device(args.device)
    dtype = torch.float32
    energy = Ring(device, dtype)
    means, var = ring_params(device, dtype)
    sizes = [100, 1000, 10_000] if args.quick else [100, 1000, 10_000, 100_000]
    repeats = 3 if args.quick else args.repeats
    rows = []
    for name in ["ULA", "MALA", "HMC"]:
        for n in sizes:
            steps = n_steps_for(n, name, args.quick)
            x0 = torch.randn(n, 2, generator=torch.Generator(device=device).manual_seed(0), device=device, dtype=dtype) * 3
            modes = [False] + ([True] if args.compile else [])
            for compiled in modes:
                k = kernel(name, steps, compiled)
                hand_fn = (HAND_COMPILED if compiled else HAND)[name]
                gen = torch.Generator(device=device).manual_seed(1)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    k.sample(energy, x0, generator=gen)  # warm-up (and compilation)
                    hand_fn(x0, 2, STEP[name], torch.Generator(device=device).manual_seed(1), means, var)
                t_lib, t_hand = [], []
                for _ in range(repeats):
                    gen = torch.Generator(device=device).manual_seed(1)
                    t_hand.append(timed(lambda: hand_fn(x0, steps, STEP[name], gen, means, var), device, cpu=True))
                    gen = torch.Generator(device=device).manual_seed(1)
                    t_lib.append(timed(lambda: k.sample(energy, x0, generator=gen), device, cpu=True))
                lib, hand = statistics.median(t[0] for t in t_lib), statistics.median(t[0] for t in t_hand)
                lib_cpu, hand_cpu = statistics.median(t[1] for t in t_lib), statistics.median(t[1] for t in t_hand)
                rows.append(
                    dict(
                        sampler=name, n_chains=n, compiled=compiled, n_steps=steps,
                        baseline="compiled hand loop" if compiled else "eager hand loop",
                        lib_chain_steps_per_s=n * steps / lib, hand_chain_steps_per_s=n * steps / hand,
                        ratio_lib_over_hand_time=lib / hand,
                        overhead_us_per_step=(lib - hand) / steps * 1e6,
                        lib_us_per_step=lib / steps * 1e6, hand_us_per_step=hand / steps * 1e6,
                        lib_cpu_chain_steps_per_s=n * steps / lib_cpu, hand_cpu_chain_steps_per_s=n * steps / hand_cpu,
                        ratio_lib_over_hand_cpu=lib_cpu / hand_cpu,
                        overhead_cpu_us_per_step=(lib_cpu - hand_cpu) / steps * 1e6,
                    )
                )
                r = rows[-1]
                print(
                    f"{name:4s} N={n:>6d} {'compiled' if compiled else 'eager   '} "
                    f"lib {r['lib_chain_steps_per_s']:.3e}/s hand {r['hand_chain_steps_per_s']:.3e}/s "
                    f"time ratio {r['ratio_lib_over_hand_time']:.3f} (cpu {r['ratio_lib_over_hand_cpu']:.3f}) "
                    f"overhead {r['overhead_us_per_step']:.1f} us/step (cpu {r['overhead_cpu_us_per_step']:.1f})",
                    flush=True,
                )
    return rows, evaluate_breakdown(energy, means, var, device, dtype)


def evaluate_breakdown(energy, means, var, device, dtype, n=100, reps=3000):
    """Per-call cost at N=100 of the closed form alone vs through ``Energy.evaluate``."""
    x = torch.randn(n, 2, device=device, dtype=dtype)
    out = {}
    for label, fn in [
        ("closed_form_direct", lambda: ring_energy_and_grad(x, means, var)),
        ("energy.evaluate(validate=False)", lambda: energy.evaluate(x, None, validate=False)),
        ("energy.evaluate(validate=True)", lambda: energy.evaluate(x, None, validate=True)),
    ]:
        for _ in range(100):
            fn()
        ts = []
        for _ in range(5):
            ts.append(timed(lambda: [fn() for _ in range(reps)], device) / reps * 1e6)
        out[label] = statistics.median(ts)
    return out


def write(rows, breakdown, args):
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = dict(
        device=args.device, torch=torch.__version__, threads=torch.get_num_threads(),
        cpu_count=os.cpu_count(), platform=platform.platform(), quick=args.quick,
        repeats=3 if args.quick else args.repeats, n_leapfrog=N_LEAPFROG, step_size=STEP,
        target="8-Gaussian ring, radius 4, std 0.3, closed-form energy and gradient",
    )

    def find(name, n, compiled=False):
        return next((r for r in rows if r["sampler"] == name and r["n_chains"] == n and r["compiled"] == compiled), None)

    big = [r for r in rows if r["n_chains"] >= 10_000 and not r["compiled"]]
    small = [r for r in rows if r["n_chains"] == 100 and not r["compiled"]]
    cm = find("MALA", 100_000, True)
    targets = {
        "eager within 10% of hand loop at N>=1e4 (wall)": all(r["ratio_lib_over_hand_time"] <= 1.10 for r in big) if big else None,
        "eager within 10% of hand loop at N>=1e4 (cpu)": all(r["ratio_lib_over_hand_cpu"] <= 1.10 for r in big) if big else None,
        "overhead < 20 us/step at N=100 (wall)": all(r["overhead_us_per_step"] < 20 for r in small) if small else None,
        "overhead < 20 us/step at N=100 (cpu)": all(r["overhead_cpu_us_per_step"] < 20 for r in small) if small else None,
        "compiled MALA >= 1e7 chain-steps/s at N=1e5 (wall)": (cm["lib_chain_steps_per_s"] >= 1e7) if cm else None,
        "compiled MALA >= 1e7 chain-steps/s at N=1e5 (cpu)": (cm["lib_cpu_chain_steps_per_s"] >= 1e7) if cm else None,
    }
    bound = None
    if cm:
        bound = dict(
            compiled_hand_mala_chain_steps_per_s=cm["hand_chain_steps_per_s"],
            compiled_hand_mala_cpu_chain_steps_per_s=cm["hand_cpu_chain_steps_per_s"],
        )
    write_json(
        RESULTS / "sampler_speed.json",
        dict(meta=meta, rows=rows, evaluate_us_per_call_n100=breakdown, targets=targets, compiled_bound=bound),
    )
    lines = [
        "# Sampler speed: library kernels vs minimal hand-written torch loops",
        "",
        f"Target: {meta['target']}. Device `{meta['device']}`, torch {meta['torch']}, {meta['threads']} thread(s), "
        f"{meta['cpu_count']} CPUs; median of {meta['repeats']} interleaved repeats; HMC with {N_LEAPFROG} leapfrog steps "
        "(chain-steps count transitions). Ratio = library / baseline time (1.00 = no overhead), baseline = the eager "
        "hand loop for eager rows and the same hand loop compiled as one `torch.compile` graph per step for compiled "
        "rows. `wall` columns are wall-clock medians; `cpu` columns are this process's CPU-time medians, which "
        "exclude time the process waited for the cores (robust when other jobs share the machine; with 1 thread "
        "they measure the work done).",
        "",
        "| sampler | N | mode | library chain-steps/s | baseline chain-steps/s | ratio wall | ratio cpu | "
        "overhead us/step wall | overhead us/step cpu | library chain-steps/s cpu |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['sampler']} | {r['n_chains']:,} | {'compiled' if r['compiled'] else 'eager'} | "
            f"{r['lib_chain_steps_per_s']:.3g} | {r['hand_chain_steps_per_s']:.3g} | "
            f"{r['ratio_lib_over_hand_time']:.3f} | {r['ratio_lib_over_hand_cpu']:.3f} | "
            f"{r['overhead_us_per_step']:.1f} | {r['overhead_cpu_us_per_step']:.1f} | {r['lib_cpu_chain_steps_per_s']:.3g} |"
        )
    lines += ["", "Per-call cost at N = 100 (us):", ""]
    lines += [f"- {k}: {v:.1f}" for k, v in breakdown.items()]
    if bound:
        lines += [
            "",
            "Bound on the compiled target: the hand-written MALA step compiled as one graph reaches "
            f"{bound['compiled_hand_mala_chain_steps_per_s']:.3g} chain-steps/s wall "
            f"({bound['compiled_hand_mala_cpu_chain_steps_per_s']:.3g} per CPU-second) at N = 1e5 here.",
        ]
    lines += ["", "Targets:", ""]
    lines += [f"- {k}: {'met' if v else ('not met' if v is not None else 'not measured')}" for k, v in targets.items()]
    write_text(RESULTS / "sampler_speed.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="short run (N up to 1e4, fewer steps)")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: stable numbers; 0: torch default)")
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile rows")
    ap.add_argument("--no-write", dest="write", action="store_false")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, breakdown = bench(args)
    if args.write:
        write(rows, breakdown, args)


if __name__ == "__main__":
    main()
