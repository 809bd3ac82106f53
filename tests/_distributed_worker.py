"""The program the distributed tests launch with ``torchrun`` (and the runs they compare it with).

``python _distributed_worker.py OUT``: every rank runs :func:`runs` through ``ec.distributed``
(including :func:`smc_runs`, one SMC population resampled globally across the ranks);
rank 0 writes each result to ``OUT/<name>.npy``. Then every rank runs :func:`fail`, where block 1
raises and rank 0 would write ``OUT/failed/samples.npy`` through ``staged_output`` only if every
rank succeeded; each rank writes the error it ended with to ``OUT/error-<rank>.txt``.
Last, :func:`fail_mid_smc`: a sharded SMC population whose energy raises on rank 1 only, at its
fourth evaluation (between two of the run's collectives); each rank writes the error it ended
with to ``OUT/smc-error-<rank>.txt`` (the launch would hang, and time out, if rank 0 were left
waiting in a collective).
(One launch for all: starting two processes costs tens of seconds on a loaded machine.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

import ebmcompose as ec

ROOT = Path(__file__).resolve().parents[1]
N, BLOCK, SEED = 10, 3, 7  # 4 blocks (3, 3, 3, 1): rank 0 runs blocks 0 and 2, rank 1 blocks 1 and 3
SCHEDULE = ec.VPSchedule.cosine()


def target():
    import toy

    return toy.GaussianMixture(torch.tensor([[-1.5, 0.0], [1.5, 0.5]]), stds=torch.tensor([0.5, 0.7]))


def start(m, g):
    return 2.0 * torch.randn(m, 2, generator=g)


def runs(s: ec.distributed.Session) -> dict:
    """name -> array: sampler runs, SMC as one sharded population, and SMC resampling collectives on a
    fixed population."""
    from samplers import MALA, ULA, ReverseDiffusion

    gm = target()
    static = ec.EnergyFunction(lambda x: -gm.log_prob(x))
    out = {}
    for name, sampler in [("ula", ULA(step_size=0.1, n_steps=15)), ("mala", MALA(step_size=0.3, n_steps=15))]:
        res = ec.distributed.sample(sampler, static, N, seed=SEED, init=start, block=BLOCK, session=s,
                                    on_divergence="ignore")
        out[name] = res.samples
        out[name + "_acceptance"] = torch.tensor([b.acceptance for b in res.blocks], dtype=torch.float64)
    res = ec.distributed.sample(ReverseDiffusion(SCHEDULE, n_steps=12), gm.diffused(SCHEDULE), N, seed=SEED,
                                event_shape=(2,), block=BLOCK, session=s)
    out["reverse_diffusion"] = res.samples

    out.update(smc_runs(s))

    plan = ec.distributed.BlockPlan.of(N, BLOCK, s)
    pop = torch.Generator().manual_seed(3)
    x, lw = torch.randn(N, 2, generator=pop), 2.0 * torch.randn(N, generator=pop)
    local_x, local_lw = x[plan.rows], lw[plan.rows]
    for method in ("systematic", "multinomial"):
        g = ec.distributed.shared_generator(SEED, "resample")
        glw = ec.distributed.gather_rows(local_lw, plan, s)
        idx = ec.distributed.resample_indices(glw, g, method)
        new_local = ec.distributed.take_rows(local_x, idx, plan, s)
        out["resampled_" + method] = ec.distributed.gather_rows(new_local, plan, s)
    return out


def smc_runs(s: ec.distributed.Session, n: int = N, block: int = BLOCK) -> dict:
    """name -> array: SMC as one population of ``n`` particles over the blocks (global resampling),
    on the exact diffused mixture times a broad tilt, with energy weights (MALA rejuvenation, its step
    size searched and adapted per block) and with FKC weights (ULA rejuvenation, stratified
    resampling, ``t_min > 0``); samples, ``log_z``, per-level ESS, resampling events."""
    import toy
    from samplers import MALA, SMC, ULA

    gm = target()
    tilt = toy.GaussianMixture(torch.tensor([[1.0, 0.0]]), stds=1.5)
    smc = SMC(SCHEDULE, 12, rejuvenate=MALA(n_steps=2), ess_threshold=0.95, t_max=0.9)
    product = gm.diffused(SCHEDULE) + tilt.diffused(SCHEDULE)
    linear = ec.VPSchedule.linear()
    runs_ = {
        "smc": (smc, product, block),
        "smc_one_block": (smc, product, n),  # one block: rank 1 holds no particle but joins every collective
        "smc_fkc": (SMC(linear, 20, weights="fkc", rejuvenate=ULA(step_size=0.05, n_steps=1), resampling="stratified",
                        ess_threshold=0.9, t_max=0.9, t_min=0.01), gm.diffused(linear) + tilt.diffused(linear), block),
    }
    out = {}
    for name, (sampler, energy, b) in runs_.items():
        res = ec.distributed.sample(sampler, energy, n, seed=SEED, event_shape=(2,), block=b, session=s,
                                    on_divergence="ignore")
        pop = res.population
        out[name] = res.samples
        out[name + "_log_z"] = torch.tensor([pop["log_z"]], dtype=torch.float64)
        out[name + "_ess"] = pop["ess"]
        out[name + "_resampled"] = pop["resampled"].to(torch.int64)
    return out


def fail(s: ec.distributed.Session, out: Path) -> None:
    from samplers import ULA

    from ebmcompose.cli.outputs import staged_output

    def start_or_break(m, g):
        if g.initial_seed() == ec.distributed.block_seed(SEED, 1):
            raise ValueError("block 1 is broken on purpose")
        return start(m, g)

    gm = target()
    static = ec.EnergyFunction(lambda x: -gm.log_prob(x))
    with staged_output(out, "worker") if s.is_main else _nothing() as staging:
        res = ec.distributed.sample(ULA(step_size=0.1, n_steps=5), static, N, seed=SEED, init=start_or_break,
                                    block=BLOCK, session=s)
        if s.is_main:
            np.save(staging / "samples.npy", res.samples.numpy())


def fail_mid_smc(s: ec.distributed.Session) -> None:
    """A sharded SMC run whose energy raises on rank 1 at its fourth call (module notes)."""
    from samplers import SMC

    gm = target().diffused(SCHEDULE)
    calls = []

    def energy_fn(x, t):
        calls.append(1)
        if s.rank == 1 and len(calls) == 4:
            raise ValueError("rank 1's energy broke mid-run on purpose")
        return gm.energy(x, t)

    energy = ec.EnergyFunction(energy_fn, time_dependent=True)
    ec.distributed.sample(SMC(SCHEDULE, 12, ess_threshold=1.0), energy, N, seed=SEED, event_shape=(2,),
                          block=BLOCK, session=s)


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def torchrun(args, nproc: int = 2, timeout: float = 240.0) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=nproc ARGS`` on the CPU (one thread per rank)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def main(argv) -> None:
    out = Path(argv[0])
    torch.set_num_threads(1)
    with ec.distributed.session("cpu") as s:
        results = runs(s)
        if s.is_main:
            out.mkdir(parents=True, exist_ok=True)
            for name, v in results.items():
                np.save(out / f"{name}.npy", v.numpy())
        try:
            fail(s, out / "failed")
        except Exception as exc:
            notes = "".join("\n" + n for n in getattr(exc, "__notes__", []))
            (out / f"error-{s.rank}.txt").write_text(f"{type(exc).__name__}: {exc}{notes}")
        try:
            fail_mid_smc(s)
        except Exception as exc:
            notes = "".join("\n" + n for n in getattr(exc, "__notes__", []))
            (out / f"smc-error-{s.rank}.txt").write_text(f"{type(exc).__name__}: {exc}{notes}")


if __name__ == "__main__":
    main(sys.argv[1:])
