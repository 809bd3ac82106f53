"""Chain-steps per second of ULA, MALA and HMC against minimal hand-written torch loops.

Target: the 8-Gaussian ring (radius 4, std 0.3) with a closed-form energy and gradient. The
same function ``ring_energy_and_grad`` is called by the hand loops directly and by the samplers
through an :class:`ebmcompose.Energy` leaf, so the ratio measures exactly the library's overhead
(``Energy.evaluate`` machinery + kernel bookkeeping: finiteness checks, per-chain masks,
recorder). Median of repeats, sampler and hand loop interleaved; the eager rows at N >= 1e4 pool
their pairs from several fresh processes (``--processes``, ``benchmarks/speed_processes.py``). One
table per torch thread count (default: 1 thread, then all CPUs); compiled code is regenerated for
each count.

Usage::

    python -m benchmarks.sampler_speed              # full run, writes benchmarks/results/
    python -m benchmarks.sampler_speed --quick      # short run
    python -m benchmarks.sampler_speed --threads 2 --sizes 100000
    python -m benchmarks.sampler_speed --device cuda --threads 1 --sizes 100,1000,10000,100000,1000000
                                                    # writes sampler_speed_cuda.{json,md}; on a GPU
                                                    # also GPU kernels per step (torch.profiler)

Targets: eager within 10 % of the hand loop at N >= 1e4; <= 30 us/step overhead at N = 100;
compiled MALA >= 10 M chain-steps/s at N = 1e5 (the issue's 2-core CPU: all CPUs).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ebmcompose.io import write_json, write_text  # noqa: E402
from samplers import HMC, MALA, ULA  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
from benchmarks.speed_processes import median_se, pairs_in_processes  # noqa: E402
from benchmarks.speed_baselines import (  # noqa: E402,F401  (re-exported: tests and users import them from here)
    HAND,
    HAND_COMPILED,
    LAYOUTS,
    N_LEAPFROG,
    STEP,
    Ring,
    hand_hmc,
    hand_hmc_compiled,
    hand_mala,
    hand_mala_compiled,
    hand_ula,
    hand_ula_compiled,
    ring_energy_and_grad,
    ring_energy_and_grad_broadcast,
    ring_params,
)


def kernel(name, n_steps, compiled):
    k = {
        "ULA": ULA(step_size=STEP["ULA"], n_steps=n_steps),
        "MALA": MALA(step_size=STEP["MALA"], n_steps=n_steps),
        "HMC": HMC(step_size=STEP["HMC"], n_leapfrog=N_LEAPFROG, n_steps=n_steps, jitter=0.0),  # the hand loop's fixed step
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


#: Fewest steps per timed run on a GPU, where a step takes ~0.1-0.3 ms at every N up to 1e6: a
#: run of 20-60 steps would be dominated by ``sample``'s one-off work (validation, the initial
#: evaluation, the final checks and summaries), not by the steps being compared.
MIN_DEVICE_STEPS = 200


def n_steps_for(n, name, quick, device="cpu"):
    """Steps per timed run: long enough to dwarf the timer and one-off work, short enough for many pairs."""
    base = {100: 500, 1000: 1000, 10_000: 300, 100_000: 60}.get(n) or max(20, round(6e6 / n))
    if torch.device(device).type != "cpu":
        base = max(base, MIN_DEVICE_STEPS)
    if name == "HMC":
        base = max(base // N_LEAPFROG, 10)
    return max(base // (4 if quick else 1), 10)


#: Chain counts whose overhead is a few per cent of a step, which the machine's jitter swamps
#: unless many short pairs are timed (their rows take about as long as the others).
SMALL_N = 100


def _repeats(args, n=None):
    """``--repeats`` when given, else 9 (3 with ``--quick``); at ``N = SMALL_N`` 41 (9) short pairs."""
    if getattr(args, "repeats", None):
        return args.repeats
    if n == SMALL_N:
        return 9 if args.quick else 41
    return 3 if args.quick else 9


class _OpCounter(TorchDispatchMode):
    """Counts the aten operators dispatched while active (views and in-place ops included)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def _problem(device, n, fn=None, dtype=torch.float32):
    """The timed problem: the ring as an Energy (layout ``fn``), its ``means``/``var`` for the hand
    loops, and ``n`` float32 starting points (fixed seed)."""
    energy = Ring(device, dtype, fn)
    means, var = ring_params(device, dtype)
    x0 = torch.randn(n, 2, generator=torch.Generator(device=device).manual_seed(0), device=device, dtype=dtype) * 3
    return energy, means, var, x0


def _per_step(name, device, n, compiled, fn, count):
    """``(library, hand loop)`` of ``count(run)`` per step: ``count`` is applied to a library run and
    to a hand-loop run of 20 steps and of 10, and the difference is divided by 10, so one-off work
    (the initial evaluation, validation, the final summary, compilation) cancels."""
    energy, means, var, x0 = _problem(device, n, fn)
    hand_fn = (HAND_COMPILED if compiled else HAND)[name]
    counts = {}
    for steps in (10, 20):
        k = kernel(name, steps, compiled)
        counts[steps] = (
            count(lambda: k.sample(energy, x0, generator=torch.Generator(device=device).manual_seed(1))),
            count(lambda: hand_fn(x0, steps, STEP[name], torch.Generator(device=device).manual_seed(1), means, var, fn)),
        )
    return tuple((counts[20][i] - counts[10][i]) / 10 for i in range(2))


def _count_ops(run):
    """Aten ops dispatched by ``run()``."""
    with _OpCounter() as ops:
        run()
    return ops.count


def ops_per_step(name, device, n=SMALL_N):
    """``(library, hand loop)`` aten ops per eager step at ``N = n``: deterministic, unlike a timing.

    At small N each op costs a roughly fixed few microseconds, so this is the machine-independent
    part of the overhead.
    """
    return _per_step(name, device, n, False, ring_energy_and_grad, _count_ops)


def _gpu_kernels(prof):
    """Kernels the GPU ran under ``prof`` (``torch.profiler``), memory copies and fills excluded."""
    from torch.autograd import DeviceType

    return sum(
        e.count for e in prof.key_averages()
        if e.device_type == DeviceType.CUDA and not e.key.startswith(("Memcpy", "Memset", "[memory]"))
    )


def _count_gpu_kernels(run, device):
    """GPU kernels launched by ``run()``, after one warm-up call (which compiles)."""
    from torch.profiler import ProfilerActivity, profile

    run()
    sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run()
        sync(device)
    return _gpu_kernels(prof)


def launches_per_step(name, device, n, compiled, fn=ring_energy_and_grad):
    """``(library, baseline)`` GPU kernels per step on ``device`` (eager or compiled).

    On a GPU, small and medium batches are bound by launches, not by arithmetic: each kernel
    costs the host a few microseconds to queue whatever it computes. Counted with
    ``torch.profiler``; deterministic for a given torch build, unlike a timing.
    """
    return _per_step(name, device, n, compiled, fn, lambda run: _count_gpu_kernels(run, device))


def time_pairs(name, n, compiled, layout, device, quick, repeats):
    """``(steps, pairs)``: ``repeats`` timed pairs ``((lib wall, lib cpu), (hand wall, hand cpu))`` in
    this process, the library kernel and its hand loop on ``N = n`` chains back to back."""
    device = torch.device(device)
    fn = LAYOUTS[layout]
    energy, means, var, x0 = _problem(device, n, fn)
    steps = n_steps_for(n, name, quick, device)
    k = kernel(name, steps, compiled)
    hand_fn = (HAND_COMPILED if compiled else HAND)[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        k.sample(energy, x0, generator=torch.Generator(device=device).manual_seed(1))  # warm-up (and compilation)
        hand_fn(x0, 2, STEP[name], torch.Generator(device=device).manual_seed(1), means, var, fn)
    def run_hand():
        gen = torch.Generator(device=device).manual_seed(1)
        return timed(lambda: hand_fn(x0, steps, STEP[name], gen, means, var, fn), device, cpu=True)

    def run_lib():
        gen = torch.Generator(device=device).manual_seed(1)
        return timed(lambda: k.sample(energy, x0, generator=gen), device, cpu=True)

    # Paired design: each repeat times both back to back (in alternating order), and the ratio and
    # overhead are medians of the per-pair values, so a machine that slows down or speeds up
    # between repeats (shared CPUs, memory bandwidth) cancels within each pair.
    pairs = []
    for i in range(repeats):
        if i % 2 == 0:
            hand = run_hand()
            pairs.append((run_lib(), hand))
        else:
            pairs.append((run_lib(), run_hand()))
    return steps, pairs


def in_processes(args, n, compiled):
    """Processes a row's pairs are spread over: ``--processes`` for the eager CPU rows the eager
    target judges (N >= 1e4), whose ratio a single process biases by its memory layout; else 1."""
    judged = not compiled and n >= 10_000 and torch.device(args.device).type == "cpu"
    return args.processes if judged else 1


def measure(name, n, compiled, layout, args):
    """One row: the library kernel and its hand loop on ``N = n`` chains, interleaved, median of repeats."""
    device, fn = torch.device(args.device), LAYOUTS[layout]
    repeats, processes = _repeats(args, n), in_processes(args, n, compiled)
    if processes > 1:
        spec = dict(name=name, n=n, compiled=compiled, layout=layout, device=args.device, quick=args.quick,
                    repeats=-(-repeats // processes), threads=torch.get_num_threads())
        steps, per_process = pairs_in_processes(spec, processes)
        pairs, groups = [p for g in per_process for p in g], [len(g) for g in per_process]
    else:
        (steps, pairs), groups = time_pairs(name, n, compiled, layout, args.device, args.quick, repeats), None
    t_lib, t_hand = [p[0] for p in pairs], [p[1] for p in pairs]
    med = statistics.median
    lib, hand = med(t[0] for t in t_lib), med(t[0] for t in t_hand)
    lib_cpu, hand_cpu = med(t[1] for t in t_lib), med(t[1] for t in t_hand)
    row = dict(
        sampler=name, n_chains=n, compiled=compiled, threads=torch.get_num_threads(), layout=layout, n_steps=steps,
        baseline="compiled hand loop" if compiled else "eager hand loop", repeats=len(pairs), processes=processes,
        lib_chain_steps_per_s=n * steps / lib, hand_chain_steps_per_s=n * steps / hand,
        ratio_lib_over_hand_time=med(a[0] / b[0] for a, b in pairs),
        ratio_se=median_se([a[0] / b[0] for a, b in pairs], groups),
        overhead_us_per_step=med(a[0] - b[0] for a, b in pairs) / steps * 1e6,
        overhead_se_us_per_step=median_se([(a[0] - b[0]) / steps * 1e6 for a, b in pairs], groups),
        lib_us_per_step=lib / steps * 1e6, hand_us_per_step=hand / steps * 1e6,
        lib_cpu_chain_steps_per_s=n * steps / lib_cpu, hand_cpu_chain_steps_per_s=n * steps / hand_cpu,
        ratio_lib_over_hand_cpu=med(a[1] / b[1] for a, b in pairs),
        overhead_cpu_us_per_step=med(a[1] - b[1] for a, b in pairs) / steps * 1e6,
        overhead_cpu_se_us_per_step=median_se([(a[1] - b[1]) / steps * 1e6 for a, b in pairs], groups),
    )
    if n == SMALL_N and not compiled:
        row["lib_ops_per_step"], row["hand_ops_per_step"] = ops_per_step(name, device, n)
    if n == SMALL_N and device.type == "cuda":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            row["lib_kernels_per_step"], row["hand_kernels_per_step"] = launches_per_step(name, device, n, compiled, fn)
    print(
        f"{name:4s} N={n:>6d} {'compiled' if compiled else 'eager   '} {row['threads']} thr {layout:14s} "
        f"lib {row['lib_chain_steps_per_s']:.3e}/s hand {row['hand_chain_steps_per_s']:.3e}/s "
        f"time ratio {row['ratio_lib_over_hand_time']:.3f} ± {row['ratio_se']:.3f} (cpu {row['ratio_lib_over_hand_cpu']:.3f}) "
        f"overhead {row['overhead_us_per_step']:.1f} ± {row['overhead_se_us_per_step']:.1f} us/step "
        f"(cpu {row['overhead_cpu_us_per_step']:.1f})"
        + (f" ops/step {row['lib_ops_per_step']:.0f} vs {row['hand_ops_per_step']:.0f}" if "lib_ops_per_step" in row else "")
        + (f" kernels/step {row['lib_kernels_per_step']:.1f} vs {row['hand_kernels_per_step']:.1f}"
           if "lib_kernels_per_step" in row else ""),
        flush=True,
    )
    return row


def calibration(device=None, reps=20_000):
    """How fast this machine is right now at what N = 100 rows are made of (medians of 5).

    ``torch_op_us``: one small eager op (``a + a`` on 100 floats, dispatch-bound);
    ``python_ns``: one iteration of a plain Python ``for`` loop with an add; on a GPU also
    ``device_op_us``, one small op there (launch-bound). Shared and throttled
    machines vary several-fold in both from one hour to the next; the overhead columns scale with
    them, the ratio columns much less.
    """
    a = torch.randn(100)
    op, py = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            a + a
        op.append((time.perf_counter() - t0) / reps * 1e6)
        t0, acc = time.perf_counter(), 0
        for i in range(reps * 10):
            acc += i
        py.append((time.perf_counter() - t0) / (reps * 10) * 1e9)
    out = dict(torch_op_us=statistics.median(op), python_ns=statistics.median(py))
    if device is not None and device.type == "cuda":
        out["device_op_us"] = _device_op_us(device, reps)
    return out


def _device_op_us(device, reps):
    """Wall time per small op on ``device`` queued back to back (launch-bound), median of 5."""
    a, ts = torch.randn(100, device=device), []
    for _ in range(5):
        ts.append(timed(lambda: [a + a for _ in range(reps)], device) / reps * 1e6)
    return statistics.median(ts)


def set_threads(n):
    """``torch.set_num_threads(n)`` and forget compiled code.

    Inductor's CPU kernels are specialised on the thread count (dynamo guards on it and
    recompiles); starting afresh keeps each table's graphs under dynamo's recompile limit (one
    graph per chain count and thread count per transition would otherwise reach it).
    """
    torch.set_num_threads(n)
    torch._dynamo.reset()


def bench(args):
    sizes = args.sizes or ([100, 1000, 10_000] if args.quick else [100, 1000, 10_000, 100_000])
    rows = []
    before = calibration(torch.device(args.device))
    breakdown = {}
    for threads in args.threads:
        set_threads(threads)
        for name in ["ULA", "MALA", "HMC"]:
            for n in sizes:
                for compiled in [False] + ([True] if args.compile else []):
                    rows.append(measure(name, n, compiled, "per-coordinate", args))
        if args.compile and args.layouts:
            # the broadcast-layout energy, compiled: library and hand loop alike
            rows.append(measure("MALA", max(sizes), True, "broadcast", args))
        breakdown[threads] = evaluate_breakdown(torch.device(args.device), torch.float32)
    return rows, breakdown, dict(calibration_before=before, calibration_after=calibration(torch.device(args.device)))


def evaluate_breakdown(device, dtype, n=100, reps=3000):
    """Per-call cost at N=100 of the closed form alone vs through ``Energy.evaluate``."""
    energy = Ring(device, dtype)
    means, var = ring_params(device, dtype)
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


def targets_for(rows, threads):
    """The issue's targets evaluated on the rows measured with ``threads`` threads (``None``: not measured)."""
    mine = [r for r in rows if r["threads"] == threads and r["layout"] == "per-coordinate"]
    big = [r for r in mine if r["n_chains"] >= 10_000 and not r["compiled"]]
    small = [r for r in mine if r["n_chains"] == 100 and not r["compiled"]]
    cm = next((r for r in mine if r["sampler"] == "MALA" and r["n_chains"] == 100_000 and r["compiled"]), None)
    return {
        "eager within 10% of hand loop at N>=1e4 (wall)": all(r["ratio_lib_over_hand_time"] <= 1.10 for r in big) if big else None,
        "eager within 10% of hand loop at N>=1e4 (cpu)": all(r["ratio_lib_over_hand_cpu"] <= 1.10 for r in big) if big else None,
        "overhead <= 30 us/step at N=100 (wall)": all(r["overhead_us_per_step"] <= 30 for r in small) if small else None,
        "overhead <= 30 us/step at N=100 (cpu)": all(r["overhead_cpu_us_per_step"] <= 30 for r in small) if small else None,
        "compiled MALA >= 1e7 chain-steps/s at N=1e5 (wall)": (cm["lib_chain_steps_per_s"] >= 1e7) if cm else None,
    }


def _verdict(v):
    return "met" if v else ("not met" if v is not None else "not measured")


def output_stem(device):
    """``sampler_speed`` for the CPU, ``sampler_speed_<type>`` for other devices (one file each)."""
    kind = torch.device(device).type
    return "sampler_speed" if kind == "cpu" else f"sampler_speed_{kind}"


def write(rows, breakdown, cal, args):
    meta = dict(
        device=args.device, torch=torch.__version__, threads=list(args.threads),
        cpu_count=os.cpu_count(), platform=platform.platform(), quick=args.quick,
        repeats=_repeats(args), repeats_small_n=_repeats(args, SMALL_N), processes=args.processes, n_leapfrog=N_LEAPFROG, step_size=STEP,
        target="8-Gaussian ring, radius 4, std 0.3, closed-form energy and gradient",
        malloc=_malloc_mode(), glibc_tunables=os.environ.get("GLIBC_TUNABLES"),
    )
    if torch.device(args.device).type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    targets = {str(t): targets_for(rows, t) for t in args.threads}
    out, stem = Path(args.out) if args.out else RESULTS, output_stem(args.device)
    write_json(
        out / f"{stem}.json",
        dict(
            meta=meta, rows=rows, targets=targets,
            calibration=cal,
            evaluate_us_per_call_n100={str(t): breakdown[t] for t in args.threads},
        ),
    )
    lines = [
        "# Sampler speed: library kernels vs minimal hand-written torch loops",
        "",
        f"Target: {meta['target']}. Device `{meta['device']}`"
        + (f" ({meta['gpu']})" if "gpu" in meta else "")
        + f", torch {meta['torch']}, {meta['cpu_count']} CPUs; "
        f"median of {meta['repeats']} interleaved repeats ({meta['repeats_small_n']} shorter ones at N = {SMALL_N}, "
        "where the overhead is a few per cent of a step and the machine's jitter is not; a ± is the standard error "
        f"of that median ratio or overhead); eager CPU rows at N >= 1e4 spread their pairs over {meta['processes']} fresh "
        "process(es) and pool them (`benchmarks/speed_processes.py`: one process's memory layout biases its ratio by "
        "several per cent; their ± resamples the processes, so that bias counts in it); "
        f"HMC with {N_LEAPFROG} leapfrog steps (chain-steps count "
        "transitions). Ratio = library / baseline time (1.00 = no overhead), baseline = the eager hand loop for "
        "eager rows and the same hand loop compiled as one `torch.compile` graph per step for compiled rows; the "
        "library and its baseline call the same energy function. Each repeat times both back to back (order "
        "alternating); ratios and overheads are medians of the per-pair values, chain-steps/s medians of each side. `wall` columns are wall-clock medians; `cpu` "
        "columns are this process's CPU-time medians (with one thread they measure the work done and are robust "
        "when other jobs share the machine).",
        "",
        "Compiled library rows run each transition (energy evaluation included) as one graph "
        "(`samplers.compile`); the baseline is one graph per step too, as a user would write it.",
        "",
        "Allocator: "
        + ("steady (`GLIBC_TUNABLES` keep freed memory in the heap: no page faults from the allocator's "
           "mmap/trim churn, which otherwise made N = 1e5 pairs range from 0.46 to 1.29)"
           if meta["malloc"] == "steady" else "the system's defaults (`--malloc system`)")
        + ".",
        "",
        "Energy layout: the rows use the per-coordinate form (`ring_energy_and_grad`); the `broadcast` row runs "
        "the same energy written with a `(B, K, 2)` broadcast, `logsumexp` and `softmax` "
        "(`ring_energy_and_grad_broadcast`), which torch's inductor compiles into a per-chain OpenMP region when "
        "it has more than one thread.",
        "",
        "Machine speed during the run (before / after): a small eager torch op took "
        f"{cal['calibration_before']['torch_op_us']:.2f} / {cal['calibration_after']['torch_op_us']:.2f} us and a Python loop "
        f"iteration {cal['calibration_before']['python_ns']:.0f} / {cal['calibration_after']['python_ns']:.0f} ns. The us overhead columns scale with these "
        "(a shared machine varies several-fold between hours), the ratios much less."
        + (
            f" On the GPU a small op queued back to back took {cal['calibration_before']['device_op_us']:.2f} / "
            f"{cal['calibration_after']['device_op_us']:.2f} us (launch-bound)."
            if "device_op_us" in cal["calibration_before"] else ""
        ),
    ]
    for threads in args.threads:
        mine = [r for r in rows if r["threads"] == threads]
        lines += [
            "",
            f"## {threads} thread{'s' if threads > 1 else ''}",
            "",
            "| sampler | N | mode | energy layout | library chain-steps/s | baseline chain-steps/s | ratio wall | "
            "ratio cpu | overhead us/step wall | overhead us/step cpu |",
            "|---|---:|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in mine:
            lines.append(
                f"| {r['sampler']} | {r['n_chains']:,} | {'compiled' if r['compiled'] else 'eager'} | {r['layout']} | "
                f"{r['lib_chain_steps_per_s']:.3g} | {r['hand_chain_steps_per_s']:.3g} | "
                f"{r['ratio_lib_over_hand_time']:.3f} ± {r['ratio_se']:.3f} | {r['ratio_lib_over_hand_cpu']:.3f} | "
                f"{r['overhead_us_per_step']:.1f} ± {r['overhead_se_us_per_step']:.1f} | {r['overhead_cpu_us_per_step']:.1f} |"
            )
        ops = [r for r in mine if "lib_ops_per_step" in r]
        if ops:
            lines += ["", f"Tensor ops per eager step at N = {SMALL_N} (aten ops counted by a dispatch mode; "
                      "deterministic, so this is the part of the overhead that does not depend on the machine):", ""]
            lines += [f"- {r['sampler']}: library {r['lib_ops_per_step']:.0f}, hand loop {r['hand_ops_per_step']:.0f}" for r in ops]
            op_us = 0.5 * (cal["calibration_before"]["torch_op_us"] + cal["calibration_after"]["torch_op_us"])
            lines += ["", f"Eager overhead at N = {SMALL_N} in units of this run's small-op time ({op_us:.2f} us; "
                      "comparable across machines): "
                      + ", ".join(f"{r['sampler']} {r['overhead_us_per_step'] / op_us:.0f}" for r in ops) + "."]
        kern = [r for r in mine if "lib_kernels_per_step" in r]
        if kern:
            lines += ["", f"GPU kernels per step at N = {SMALL_N} (counted by `torch.profiler`; small batches on a GPU "
                      "are bound by launches):", ""]
            lines += [
                f"- {r['sampler']} {'compiled' if r['compiled'] else 'eager'}: library {r['lib_kernels_per_step']:.1f}, "
                f"baseline {r['hand_kernels_per_step']:.1f}" for r in kern
            ]
        lines += ["", "Per-call cost at N = 100 (us):", ""]
        lines += [f"- {k}: {v:.1f}" for k, v in breakdown[threads].items()]
        lines += ["", "Targets:" if torch.device(args.device).type == "cpu" else
                  "Targets (the issue sets them for a 2-core CPU; shown here for reference only):", ""]
        lines += [f"- {k}: {_verdict(v)}" for k, v in targets[str(threads)].items()]
    write_text(out / f"{stem}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def _thread_counts(text):
    try:
        counts = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads takes comma-separated integers, got {text!r}")
    if not counts or any(c < 0 for c in counts):
        raise argparse.ArgumentTypeError(f"--threads takes positive integers (0: all CPUs), got {text!r}")
    return list(dict.fromkeys(c or os.cpu_count() or 1 for c in counts))


#: glibc settings for ``--malloc steady``: serve every allocation below 256 MiB from the heap
#: (not a fresh ``mmap``) and keep up to 1 GiB of freed heap instead of returning it to the OS.
#: With glibc's defaults the ``(N, K)`` temporaries of an N = 1e5 step are mapped and unmapped,
#: or trimmed, depending on the heap's history: every new page then faults (hundreds per step),
#: and single library/hand-loop pairs at N = 1e5 ranged from 0.46 to 1.29 within one process.
#: Both loops run under the same allocator, so this removes noise, not overhead.
STEADY_MALLOC = "glibc.malloc.mmap_threshold=268435456:glibc.malloc.trim_threshold=1073741824"


def _malloc_mode():
    """``"steady"`` when this process runs under :data:`STEADY_MALLOC`, else ``"system"``."""
    return "steady" if STEADY_MALLOC in os.environ.get("GLIBC_TUNABLES", "") else "system"


def _rerun_with_steady_malloc(argv):
    """Run this benchmark again in a child process with :data:`STEADY_MALLOC` (glibc reads its
    tunables at start-up only); returns the child's exit code."""
    tunables = ":".join(v for v in (os.environ.get("GLIBC_TUNABLES"), STEADY_MALLOC) if v)
    env = dict(os.environ, GLIBC_TUNABLES=tunables)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(v for v in (root, env.get("PYTHONPATH")) if v)
    return subprocess.call([sys.executable, "-m", "benchmarks.sampler_speed", *argv], env=env)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="short run (N up to 1e4, fewer steps)")
    ap.add_argument("--repeats", type=int, default=None, help="timed pairs per row (default: 9, 3 with --quick)")
    ap.add_argument(
        "--threads", type=_thread_counts, default=_thread_counts("1,0"),
        help="comma-separated torch intra-op thread counts, one table each (0: all CPUs; default: 1 and all)",
    )
    ap.add_argument(
        "--processes", type=int, default=None,
        help="fresh processes the pairs of each eager CPU row at N >= 1e4 are spread over, pooled "
        "(default 6, 2 with --quick; 1: this process)",
    )
    ap.add_argument("--sizes", type=lambda v: [int(n) for n in v.split(",")], default=None, help="chain counts (default: 1e2..1e5)")
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile rows")
    ap.add_argument("--no-layouts", dest="layouts", action="store_false", help="skip the broadcast-layout row")
    ap.add_argument("--no-write", dest="write", action="store_false")
    ap.add_argument(
        "--out", default=None,
        help="folder for the JSON and markdown (default benchmarks/results/; the file is "
        "sampler_speed.* on the CPU, sampler_speed_cuda.* on a GPU)",
    )
    ap.add_argument(
        "--malloc", choices=["steady", "system"], default="steady",
        help="steady (default, Linux/glibc): rerun under GLIBC_TUNABLES that keep freed memory in the "
        "heap, so N = 1e5 rows measure the loops and not the allocator's page faults; system: as started",
    )
    args = ap.parse_args(argv)
    if args.processes is None:
        args.processes = 2 if args.quick else 6
    if args.processes < 1:
        ap.error(f"--processes must be at least 1, got {args.processes}")
    if args.malloc == "steady" and _malloc_mode() != "steady" and platform.libc_ver()[0] == "glibc":
        return _rerun_with_steady_malloc(argv)
    before = torch.get_num_threads()
    try:
        rows, breakdown, cal = bench(args)
    finally:
        set_threads(before)
    if args.write:
        write(rows, breakdown, cal, args)
    return 0


if __name__ == "__main__":
    main()
