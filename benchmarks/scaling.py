"""Weak scaling of ``ec.distributed.sample`` over P processes (``torchrun``): efficiency vs 1 process.

Each process runs one block of ``per_rank`` chains of MALA on the 8-Gaussian ring, so P processes
draw ``P * per_rank`` samples. Efficiency at P is ``T_1 / T_P`` (equivalently: time per sample at
1 process over P times the time per sample at P); 1.0 is perfect. The timed region is one call of
``ec.distributed.sample`` after a warm-up call: sampling, gathering the samples on every rank and
agreeing on errors; process start-up and imports are not timed. The 1-process baseline is the plain
process (no process group); P > 1 runs under ``torchrun --standalone`` (gloo on the CPU, NCCL on
CUDA, one GPU per process). Block 0 is the same in every run (same seed and block size), and its
SHA-256 is recorded to show the samples do not depend on P.

Usage::

    python -m benchmarks.scaling                  # P = 1, 2; per_rank 1024, 16384, 131072; writes benchmarks/results/
    python -m benchmarks.scaling --quick --out D  # small, for tests
    python -m benchmarks.scaling --device cuda --procs 1,2,4,8

Target (issue 16): efficiency >= 0.8 for large batches. On a CPU the processes must have a core
each (``OMP_NUM_THREADS=1``); on a busy machine the numbers measure the contention, not the code.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ebmcompose as ec  # noqa: E402
from ebmcompose.io import write_json, write_text  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SEED = 0


def ring_energy(device):
    """The 8-Gaussian ring (radius 4, std 0.3): a closed-form ``ec.Energy`` on ``device``."""
    import toy

    ring = toy.ring(8, 4.0, 0.3)
    return ring if torch.device(device).type == "cpu" else ring.to(device)


def start(m, g):
    return 4.0 * torch.randn(m, 2, generator=g, device=g.device)


def worker(per_rank: int, n_steps: int, repeats: int, device: str) -> dict:
    """On every rank: time ``repeats`` sharded runs (after one warm-up); rank 0's record."""
    from samplers import MALA

    torch.set_num_threads(1)
    with ec.distributed.session(device) as s:
        energy = ring_energy(s.device)
        kernel = MALA(step_size=0.05, n_steps=n_steps)
        n = per_rank * s.world_size

        def run():
            return ec.distributed.sample(kernel, energy, n, seed=SEED, init=start, block=per_rank, session=s,
                                         device=s.device, on_divergence="ignore")

        run()
        times = []
        for _ in range(repeats):
            _barrier(s)
            if s.device.type == "cuda":
                torch.cuda.synchronize(s.device)
            t0 = time.perf_counter()
            res = run()
            if s.device.type == "cuda":
                torch.cuda.synchronize(s.device)
            times.append(time.perf_counter() - t0)
        worst = ec.distributed.all_gather_objects(times, s)  # a run lasts as long as its slowest rank
        times = [max(ts) for ts in zip(*worst)]
        block0 = res.samples[:per_rank].detach().cpu().contiguous().numpy().tobytes()
        return dict(procs=s.world_size, per_rank=per_rank, n=n, n_steps=n_steps, seconds=times,
                    median_seconds=statistics.median(times), block0_sha256=hashlib.sha256(block0).hexdigest())


def _barrier(s) -> None:
    if s.distributed:
        import torch.distributed as dist

        dist.barrier()


def launch(procs: int, per_rank: int, n_steps: int, repeats: int, device: str, record: Path) -> dict:
    """Run :func:`worker` on ``procs`` processes (plain Python for 1, torchrun otherwise)."""
    args = ["-m", "benchmarks.scaling", "--worker", "--per-rank", str(per_rank), "--steps", str(n_steps),
            "--repeats", str(repeats), "--device", device, "--record", str(record)]
    cmd = [sys.executable, *args] if procs == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", "--no-python",
         "--", sys.executable, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(record.read_text())


def efficiency(rows: list) -> list:
    """Each row gets ``efficiency = T_1 / T_P`` and ``seconds_per_sample``, against P = 1 of its size."""
    base = {r["per_rank"]: r["median_seconds"] for r in rows if r["procs"] == 1}
    for r in rows:
        r["seconds_per_sample"] = r["median_seconds"] / r["n"]
        r["efficiency"] = base[r["per_rank"]] / r["median_seconds"]
    return rows


def markdown(rows: list, meta: dict) -> str:
    lines = ["| chains per process | processes | chains | median time (s) | µs per sample | efficiency | block 0 |",
             "|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['per_rank']} | {r['procs']} | {r['n']} | {r['median_seconds']:.3f} | "
                     f"{1e6 * r['seconds_per_sample']:.2f} | {r['efficiency']:.2f} | `{r['block0_sha256'][:12]}` |")
    same = "identical" if meta["block0_identical"] else "DIFFERENT (a bug)"
    return (
        f"# Weak scaling of ec.distributed.sample ({meta['device']})\n\n"
        f"MALA, {meta['n_steps']} steps, on the 8-Gaussian ring; each process runs one block of the given "
        f"number of chains. Efficiency = T(1 process) / T(P processes) at the same chains per process "
        f"(1 = perfect; target >= 0.8 for large batches). Median of {meta['repeats']} timed runs after a "
        f"warm-up, slowest rank per run. Block 0's samples across runs: {same}.\n\n"
        f"Machine: {meta['cpu_count']} CPUs, {meta['platform']}, torch {meta['torch']}; "
        f"load average at start {meta['load_average']}.\n\n" + "\n".join(lines) + "\n"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes and few steps (for tests)")
    ap.add_argument("--procs", default="1,2", help="process counts (default: %(default)s)")
    ap.add_argument("--sizes", default=None, help="chains per process (default: 1024,16384,131072; quick: 64)")
    ap.add_argument("--steps", type=int, default=None, help="MALA steps (default: 100; quick: 5)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per row (default: 5; quick: 2)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="output folder (default: benchmarks/results)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--per-rank", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--record", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    steps = args.steps or (5 if args.quick else 100)
    repeats = args.repeats or (2 if args.quick else 5)
    if args.worker:
        rec = worker(args.per_rank, steps, repeats, args.device)
        if int(os.environ.get("RANK", "0")) == 0:
            write_json(args.record, rec)
        return 0
    procs = [int(p) for p in args.procs.split(",")]
    if 1 not in procs:
        raise SystemExit("--procs must include 1 (the baseline of the efficiency)")
    sizes = [int(v) for v in (args.sizes or ("64" if args.quick else "1024,16384,131072")).split(",")]
    out = Path(args.out) if args.out else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(device=args.device, n_steps=steps, repeats=repeats, quick=args.quick, cpu_count=os.cpu_count(),
                platform=platform.platform(), torch=torch.__version__,
                load_average=[round(v, 2) for v in os.getloadavg()])
    if torch.device(args.device).type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name()
    rows = []
    for per_rank in sizes:
        for p in procs:
            rows.append(launch(p, per_rank, steps, repeats, args.device, out / f".scaling-{p}-{per_rank}.json"))
            (out / f".scaling-{p}-{per_rank}.json").unlink()
            print(f"[scaling] {p} process(es) x {per_rank} chains: {rows[-1]['median_seconds']:.3f} s", flush=True)
    efficiency(rows)
    meta["block0_identical"] = all(len({r["block0_sha256"] for r in rows if r["per_rank"] == s}) == 1 for s in sizes)
    stem = "scaling" if torch.device(args.device).type == "cpu" else f"scaling_{torch.device(args.device).type}"
    write_json(out / f"{stem}.json", dict(meta=meta, rows=rows))
    write_text(out / f"{stem}.md", markdown(rows, meta))
    print(f"[scaling] wrote {out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
