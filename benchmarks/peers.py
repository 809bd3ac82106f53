"""ebmcompose's HMC and MALA side by side with BlackJAX (and torchebm) on the same targets.

Every peer runs the same targets (:mod:`benchmarks.peer_targets`, float64), the same chains
from the same start points (one numpy draw), the same step size and leapfrog count per target,
and the same number of steps: ``--warmup`` plain steps (discarded) then ``--steps`` recorded
ones. Peers:

- ``ebmcompose``: ``samplers.HMC`` / ``samplers.MALA`` on ``ebmcompose.EnergyFunction(fn)``
  (gradient by autograd), eager;
- ``ebmcompose-compiled``: the same kernels with ``compile=True``; what that does is the
  library's business (an energy it cannot trace runs eagerly, with a warning the row keeps);
- ``blackjax``: ``blackjax.hmc`` / ``blackjax.mala``, one ``jax.jit`` of ``jax.vmap`` over
  chains of a ``jax.lax.scan`` over steps, float64;
- ``torchebm``: ``torchebm.samplers.HamiltonianMonteCarlo`` (it has no MALA);
- ``torch-loop``: the same HMC / MALA written by hand in plain torch, one compiled graph per
  transition in a Python loop (:mod:`benchmarks.peer_torch_loop`): what a user gets without the
  library. With the compiler floor (:mod:`benchmarks.peer_floor`, run beside it) the gap to
  BlackJAX splits into the library's cost and the compiler's.

Every diagnostic comes from one estimator for all peers: ``samplers.diagnostics.ess`` and
``mcse_mean`` on the ``(T, B, D)`` draws (JAX arrays converted to torch). Wall times are medians
of ``--repeats`` runs interleaved across peers (the order rotates each repeat); the first call
of each peer (compilation, jit tracing) is timed apart and reported, not in the median.

Usage::

    python -m benchmarks.peers                    # all targets, HMC and MALA, every installed peer
    python -m benchmarks.peers --quick --peers ebmcompose --targets gaussian banana
    python -m benchmarks.peers --tune             # print adapted step sizes (to freeze in peer_targets)

Needs ``pip install -e .[peers]`` (jax, blackjax) for the BlackJAX rows and ``pip install
torchebm`` for torchebm's; a peer that is not installed is listed as skipped. Writes
``peers.json`` and ``peers.md`` to ``--out`` (``--quick``: the git-ignored ``outputs/peers_quick``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

import ebmcompose as ec
from ebmcompose.cli.errors import OutputError
from ebmcompose.cli.outputs import staged_output
from ebmcompose.io import write_json, write_text
from samplers import HMC, MALA, diagnostics

from .peer_floor import gradient_floor
from .peer_torch_loop import compiled_run
from .peer_targets import SETTINGS, TARGETS, TORCH, jax_log_densities, load_jax, start_points

__all__ = ["PEERS", "ALGORITHMS", "Config", "Draws", "PeerUnavailable", "measure_cell", "run", "format_markdown", "main"]

RESULTS = Path(__file__).resolve().parent / "results"
QUICK_RESULTS = Path(__file__).resolve().parents[1] / "outputs" / "peers_quick"
STEM = "peers"
PEERS = ("ebmcompose", "ebmcompose-compiled", "blackjax", "torchebm", "torch-loop")
ALGORITHMS = ("hmc", "mala")


@dataclass(frozen=True)
class Config:
    chains: int = 128
    steps: int = 1000
    warmup: int = 200
    repeats: int = 3
    threads: int = 1
    seed: int = 0
    quick: bool = False


QUICK = Config(chains=32, steps=200, warmup=50, repeats=1, quick=True)


class PeerUnavailable(Exception):
    """A peer is not installed or lacks the algorithm; the message says which, in one line."""


@dataclass
class Draws:
    """What a peer's run returns, converted: ``draws`` ``(T, B, D)`` float64 torch, mean acceptance
    over the kept steps, batched gradient evaluations of the whole run, divergences (or ``None``)."""

    draws: torch.Tensor
    acceptance: float
    n_grad: int
    divergences: Optional[int] = None
    note: str = ""


# A runner is ``(go, post)``: ``go()`` runs the whole sampler (timed; returns raw output once the
# work is done) and ``post(raw)`` converts that output into :class:`Draws` (not timed).
Runner = Tuple[Callable[[], object], Callable[[object], Draws]]


def _setting(name: str, algo: str) -> dict:
    return SETTINGS[name][algo]


def _require(module: str, hint: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise PeerUnavailable(f"{module} is not installed ({hint}): {exc}") from None


#: Keyword arguments that make ``samplers.HMC`` the plain fixed-step HMC the peers run: a kernel
#: with step-size jitter (``jitter``, per-chain random step sizes) gets it switched off.
HMC_FIXED = {"jitter": 0.0} if "jitter" in getattr(HMC, "__dataclass_fields__", {}) else {}


def ebmcompose_runner(name: str, algo: str, cfg: Config, x0: np.ndarray, compiled: bool) -> Runner:
    """``samplers.HMC``/``MALA`` at the fixed settings on ``EnergyFunction(fn)``; trace of the kept steps."""
    energy = ec.EnergyFunction(TORCH[name], name=name)
    s = _setting(name, algo)
    if algo == "hmc":
        k = HMC(step_size=s["step_size"], n_leapfrog=s["n_leapfrog"], n_steps=cfg.steps, n_warmup=cfg.warmup,
                compile=compiled, **HMC_FIXED)
    else:
        k = MALA(step_size=s["step_size"], n_steps=cfg.steps, n_warmup=cfg.warmup, compile=compiled)
    x = torch.from_numpy(x0)

    def go():
        return k.sample(energy, x, generator=torch.Generator().manual_seed(cfg.seed), trace_every=1, on_divergence="ignore")

    def post(res) -> Draws:
        i = res.info
        return Draws(i.trace, i.mean_acceptance, i.nfe, i.divergences)

    return go, post


def blackjax_runner(name: str, algo: str, cfg: Config, x0: np.ndarray) -> Runner:
    """``blackjax.hmc``/``mala``: ``jit(vmap(chain))``, each chain a ``lax.scan`` over its steps."""
    jax = load_jax(cfg.threads)
    if jax is None:
        raise PeerUnavailable("jax is not installed (pip install -e .[peers])")
    blackjax = _require("blackjax", "pip install -e .[peers]")
    jnp = jax.numpy
    logp = jax_log_densities()[name]
    s, dim = _setting(name, algo), x0.shape[1]
    if algo == "hmc":
        alg = blackjax.hmc(logp, step_size=s["step_size"], inverse_mass_matrix=jnp.ones(dim), num_integration_steps=s["n_leapfrog"])
    else:
        alg = blackjax.mala(logp, step_size=s["step_size"])

    def chain(key, x):
        k_warm, k_keep = jax.random.split(key)
        state = alg.init(x)
        state, _ = jax.lax.scan(lambda st, k: (alg.step(k, st)[0], None), state, jax.random.split(k_warm, cfg.warmup))

        def keep(st, k):
            st, info = alg.step(k, st)
            return st, (st.position, info.acceptance_rate, getattr(info, "is_divergent", jnp.asarray(False)))

        return jax.lax.scan(keep, state, jax.random.split(k_keep, cfg.steps))[1]

    fn = jax.jit(jax.vmap(chain))
    keys = jax.random.split(jax.random.PRNGKey(cfg.seed), cfg.chains)
    xj = jnp.asarray(x0)

    def go():
        return jax.block_until_ready(fn(keys, xj))

    def post(out) -> Draws:
        pos, acc, div = (np.array(a) for a in out)  # copies: writable, unlike views of JAX buffers
        per_step = s.get("n_leapfrog", 1)  # velocity Verlet reuses the state's gradient: L per HMC step
        return Draws(torch.from_numpy(pos).transpose(0, 1).contiguous(), float(acc.mean()),
                     1 + (cfg.warmup + cfg.steps) * per_step, int(div.sum()) if algo == "hmc" else None)

    return go, post


def torchebm_runner(name: str, algo: str, cfg: Config, x0: np.ndarray) -> Runner:
    """``torchebm.samplers.HamiltonianMonteCarlo`` on a ``BaseModel`` that counts its calls."""
    _require("torchebm", "pip install torchebm")
    if algo != "hmc":
        raise PeerUnavailable("torchebm has no MALA: its LangevinDynamics is unadjusted (no Metropolis step)")
    from torchebm.core import BaseModel
    from torchebm.samplers import HamiltonianMonteCarlo

    fn, s = TORCH[name], _setting(name, algo)

    class Counted(BaseModel):
        def __init__(self):
            super().__init__(dtype=torch.float64, device="cpu")
            self.calls = [0, 0]  # forward (energy) calls, gradient calls

        def forward(self, x):
            self.calls[0] += 1
            return fn(x)

        def gradient(self, x, model_kwargs=None):
            self.calls[1] += 1
            return super().gradient(x, model_kwargs)

    model = Counted()
    sampler = HamiltonianMonteCarlo(model, step_size=s["step_size"], n_leapfrog_steps=s["n_leapfrog"], dtype=torch.float64, device="cpu")
    x = torch.from_numpy(x0)

    def go():
        model.calls = [0, 0]
        traj = sampler.sample(x=x, n_steps=cfg.warmup + cfg.steps, return_trajectory=True,
                              generator=torch.Generator().manual_seed(cfg.seed))
        return traj, list(model.calls)

    def post(out) -> Draws:
        traj, (n_forward, n_grad) = out
        full = torch.cat([x[:, None], traj], 1)[:, cfg.warmup:].transpose(0, 1)  # (T + 1, B, D)
        moved = (full[1:] != full[:-1]).any(-1).double().mean()  # acceptance: proposals are continuous
        return Draws(full[1:].contiguous(), float(moved), n_grad,
                     note=f"+{n_forward - n_grad} energy-only evaluations; acceptance = fraction accepted")

    return go, post


def torch_loop_runner(name: str, algo: str, cfg: Config, x0: np.ndarray) -> Runner:
    """The hand-written compiled torch loop (:func:`benchmarks.peer_torch_loop.compiled_run`)."""
    s = _setting(name, algo)
    run_ = compiled_run(TORCH[name], algo, s["step_size"], s.get("n_leapfrog", 1))
    x = torch.from_numpy(x0)

    def go():
        return run_(x, cfg.warmup, cfg.steps, torch.Generator().manual_seed(cfg.seed))

    def post(out) -> Draws:
        trace, acceptance, n_grad = out
        return Draws(trace, acceptance, n_grad, None)

    return go, post


def runner(peer: str, name: str, algo: str, cfg: Config, x0: np.ndarray) -> Runner:
    if peer in ("ebmcompose", "ebmcompose-compiled"):
        return ebmcompose_runner(name, algo, cfg, x0, compiled=peer == "ebmcompose-compiled")
    if peer == "blackjax":
        return blackjax_runner(name, algo, cfg, x0)
    if peer == "torchebm":
        return torchebm_runner(name, algo, cfg, x0)
    if peer == "torch-loop":
        return torch_loop_runner(name, algo, cfg, x0)
    raise ValueError(f"unknown peer {peer!r}; choose from {', '.join(PEERS)}")


def _timed(go) -> Tuple[object, float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    raw = go()
    return raw, time.perf_counter() - t0, time.process_time() - c0


def summarise(d: Draws, name: str, n_chains: int) -> dict:
    """ESS (min/median over dimensions), MCSE-scaled mean error, acceptance: one estimator for all peers."""
    x = d.draws.to(torch.float64)
    ess = diagnostics.ess(x)
    out = dict(ess_min=float(ess.min()), ess_median=float(ess.quantile(0.5)), acceptance=d.acceptance,
               n_grad=d.n_grad, divergences=d.divergences,
               ess_min_per_grad=float(ess.min()) / (d.n_grad * n_chains))
    dims, mean = SETTINGS[name]["mean_dims"], SETTINGS[name]["mean"]
    if dims:
        err = x.mean((0, 1))[dims] - torch.tensor(mean, dtype=torch.float64)[: len(dims)]
        mcse = diagnostics.mcse_mean(x)[dims]
        out.update(mean_abs_err=float(err.abs().max()), mean_err_z=float((err / mcse).abs().max()))
    return out


def measure_cell(name: str, algo: str, peers: Sequence[str], cfg: Config) -> Tuple[List[dict], List[dict]]:
    """All peers on one (target, algorithm): ``(rows, skipped)``."""
    x0 = start_points(name, cfg.chains, cfg.seed)
    torch._dynamo.reset()  # each cell compiles afresh: its compile time is its own, no recompile limit
    runners, skipped = {}, []
    for peer in peers:
        try:
            runners[peer] = runner(peer, name, algo, cfg, x0)
        except PeerUnavailable as exc:
            skipped.append(dict(peer=peer, target=name, algorithm=algo, reason=str(exc)))
    rows: Dict[str, dict] = {}
    for peer, (go, post) in list(runners.items()):
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                raw, first, _ = _timed(go)
            d = post(raw)
        except Exception as exc:  # a peer that crashes is reported, not fatal to the other peers' rows
            msg = " ".join(f"{type(exc).__name__}: {exc}".split())[:400]
            print(f"[peers] {name} {algo} {peer} FAILED: {msg}", file=sys.stderr, flush=True)
            skipped.append(dict(peer=peer, target=name, algorithm=algo, reason=f"failed: {msg}", failed=True))
            del runners[peer]
            continue
        del raw
        notes = list(dict.fromkeys(" ".join(str(w.message).split())[:240] for w in caught
                                   if not issubclass(w.category, (DeprecationWarning, FutureWarning))))
        rows[peer] = dict(target=name, algorithm=algo, peer=peer, first_call_s=first, warnings=notes,
                          note=d.note, **summarise(d, name, cfg.chains), wall_all_s=[], cpu_all_s=[])
    for r in range(cfg.repeats):
        order = list(runners)[r % max(len(runners), 1):] + list(runners)[: r % max(len(runners), 1)]
        for peer in order:
            _, wall, cpu = _timed(runners[peer][0])
            rows[peer]["wall_all_s"].append(wall)
            rows[peer]["cpu_all_s"].append(cpu)
    s = _setting(name, algo)
    for row in rows.values():
        wall = statistics.median(row["wall_all_s"]) if row["wall_all_s"] else row["first_call_s"]
        row.update(wall_s=wall, cpu_s=statistics.median(row["cpu_all_s"]) if row["cpu_all_s"] else None,
                   compile_s=max(row["first_call_s"] - wall, 0.0), ess_min_per_s=row["ess_min"] / wall,
                   ess_median_per_s=row["ess_median"] / wall, step_size=s["step_size"], n_leapfrog=s.get("n_leapfrog"))
        bj = rows.get("blackjax")
        if bj is not None and row["peer"] != "blackjax" and bj["wall_all_s"]:
            row["wall_ratio_vs_blackjax"] = statistics.median(a / b for a, b in zip(row["wall_all_s"], bj["wall_all_s"]))
    for row in rows.values():
        print(f"[peers] {name:13s} {algo:4s} {row['peer']:19s} wall {row['wall_s']:7.3f} s (first {row['first_call_s']:6.2f}) "
              f"ESS min/med {row['ess_min']:8.0f}/{row['ess_median']:8.0f} acc {row['acceptance']:.3f} "
              f"grads {row['n_grad']}" + (f" ratio/bj {row['wall_ratio_vs_blackjax']:.2f}" if "wall_ratio_vs_blackjax" in row else ""),
              flush=True)
    return list(rows.values()), skipped


def _versions() -> dict:
    """Installed versions (package metadata: nothing is imported here)."""
    from importlib import metadata

    out = dict(python=platform.python_version(), torch=torch.__version__, numpy=np.__version__)
    for dist in ("jax", "jaxlib", "blackjax", "torchebm"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _source_state() -> dict:
    """The checkout measured: commit, and the library files that differ from it (work in progress)."""
    root = Path(__file__).resolve().parents[1]

    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=root, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    dirty = git("status", "--porcelain", "--", "samplers", "ebmcompose")
    return dict(commit=git("rev-parse", "--short", "HEAD"), uncommitted_library_files=dirty.splitlines() if dirty else [])


def run(cfg: Config, targets: Sequence[str], algorithms: Sequence[str], peers: Sequence[str]) -> dict:
    torch.set_num_threads(cfg.threads)
    t0, load0 = time.perf_counter(), os.getloadavg()
    rows, skipped = [], []
    for name in targets:
        for algo in algorithms:
            r, s = measure_cell(name, algo, peers, cfg)
            rows += r
            skipped += s
    floor = []  # the compilers compared on gradients alone, beside the hand-written torch loop (where it ran)
    for name in targets:
        if any(r["peer"] == "torch-loop" and r["target"] == name for r in rows):
            floor.append(gradient_floor(name, start_points(name, cfg.chains, cfg.seed), cfg.threads,
                                        n=200 if cfg.quick else 2000, repeats=max(cfg.repeats, 1)))
            print(f"[peers] {name:13s} gradient floor: torch {floor[-1]['torch_us']:.1f} us, jax {_f(floor[-1]['jax_us'])} us", flush=True)
    meta = dict(config=cfg.__dict__, targets=list(targets), algorithms=list(algorithms), peers=list(peers),
                settings={t: SETTINGS[t] for t in targets}, ebmcompose_hmc_extra_kwargs=HMC_FIXED,
                versions=_versions(), source=_source_state(), cpu_count=os.cpu_count(),
                torch_threads=torch.get_num_threads(), xla_flags=os.environ.get("XLA_FLAGS"),
                platform=platform.platform(), processor=platform.processor() or platform.machine(),
                loadavg_before=list(load0), loadavg_after=list(os.getloadavg()))
    return dict(meta=meta, rows=rows, skipped=skipped, gradient_floor=floor, total_seconds=time.perf_counter() - t0)


def _row(result: dict, target: str, algo: str, peer: str) -> Optional[dict]:
    """The row of ``(target, algo, peer)`` in ``result``, or ``None``."""
    return next((r for r in result["rows"] if (r["target"], r["algorithm"], r["peer"]) == (target, algo, peer)), None)


def _f(v, spec=".3g"):
    return "–" if v is None else format(v, spec)


def format_markdown(result: dict, command: str) -> str:
    m, cfg = result["meta"], result["meta"]["config"]
    v = m["versions"]
    lines = [
        "# ebmcompose vs BlackJAX (and torchebm, and a hand-written torch loop): HMC and MALA on the same targets",
        "",
        f"Command: `{command}` — total {result['total_seconds']:.0f} s." + (" **Quick smoke run.**" if cfg["quick"] else ""),
        "",
        f"Machine: {m['processor']}, {m['cpu_count']} CPUs, {m['platform']}; {cfg['threads']} thread "
        f"(torch `set_num_threads({m['torch_threads']})`, `XLA_FLAGS={m['xla_flags']}`); load average "
        f"{m['loadavg_before'][0]:.2f} before, {m['loadavg_after'][0]:.2f} after (another job shared the machine "
        "when the load is above 1). Versions: " + ", ".join(f"{k} {v[k] or 'not installed'}" for k in v) + ". "
        f"Checkout: {m['source']['commit']}" + (f", with uncommitted library changes in "
        f"{', '.join(f.split()[-1] for f in m['source']['uncommitted_library_files'])}"
        if m["source"]["uncommitted_library_files"] else "") + ".",
        "",
        f"Settings: {cfg['chains']} chains, float64, the same numpy start points for every peer, {cfg['warmup']} "
        f"warm-up steps (discarded) then {cfg['steps']} recorded steps, fixed step size (and leapfrog count) per "
        f"target (below). Wall time: median of {cfg['repeats']} runs interleaved across peers (order rotated each "
        "repeat), the whole run (initial evaluation, warm-up and recorded steps); `first` is the first call, which "
        "includes compilation / jit tracing; `compile` = first − median. Gradient evaluations: batched ones over the "
        "whole run (each computes all chains' gradients; counted by ebmcompose's NFE and by wrapping torchebm's "
        "model, by construction for BlackJAX and torch-loop: 1 + steps × L). ESS: `samplers.diagnostics.ess` on the recorded "
        "`(T, B, D)` draws for every peer (min and median over dimensions); ESS/grad = min ESS / (gradient "
        "evaluations × chains). Mean error: largest |mean − exact| over the coordinates with a known mean, and the "
        "same in Monte-Carlo standard errors (`mcse_mean`; |z| ≫ 3 flags a wrong sampler or an unconverged run). "
        "Ratio: wall time / BlackJAX's, median of the per-repeat ratios.",
        "",
        "| target | D | HMC h | L | MALA h | known mean |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for t, s in m["settings"].items():
        known = "none" if not s["mean_dims"] else ("all" if len(s["mean_dims"]) == s["dim"] else f"coordinates {s['mean_dims']}")
        lines.append(f"| {t} | {s['dim']} | {s['hmc']['step_size']} | {s['hmc']['n_leapfrog']} | {s['mala']['step_size']} | {known} |")
    lines += ["", "## Wall-time ratio to BlackJAX (lower is faster)", "",
              "| target | algorithm | " + " | ".join(p for p in m["peers"] if p != "blackjax") + " |",
              "|---|---|" + "---:|" * len([p for p in m["peers"] if p != "blackjax"])]
    for t in m["targets"]:
        for a in m["algorithms"]:
            cells = []
            for p in (p for p in m["peers"] if p != "blackjax"):
                r = _row(result, t, a, p)
                cells.append(_f(r.get("wall_ratio_vs_blackjax") if r else None, ".2f"))
            lines.append(f"| {t} | {a.upper()} | " + " | ".join(cells) + " |")
    lines += ["", "## All rows", "",
              "| target | alg | peer | wall s | first s | compile s | cpu s | grads | ESS min | ESS med | ESS/grad | "
              "ESS/s min | ESS/s med | acc | mean err | err/MCSE | ratio vs BlackJAX |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    floor = 0.55 * cfg["chains"]  # ESS ≈ chains/2: the autocorrelation never dropped within the run
    for r in result["rows"]:
        lines.append(
            f"| {r['target']} | {r['algorithm'].upper()} | {r['peer']} | {r['wall_s']:.3f} | {r['first_call_s']:.2f} | "
            f"{r['compile_s']:.2f} | {_f(r['cpu_s'], '.3f')} | {r['n_grad']} | {r['ess_min']:.0f}{' †' if r['ess_min'] <= floor else ''} | "
            f"{r['ess_median']:.0f}{' †' if r['ess_median'] <= floor else ''} | {r['ess_min_per_grad']:.2e} | {r['ess_min_per_s']:.3g} | "
            f"{r['ess_median_per_s']:.3g} | {r['acceptance']:.3f} | {_f(r.get('mean_abs_err'))} | "
            f"{_f(r.get('mean_err_z'), '.2f')} | {_f(r.get('wall_ratio_vs_blackjax'), '.2f')} |")
    lines += [
        "",
        f"† ESS ≈ chains / 2 = {cfg['chains'] // 2}: in that coordinate the chains' autocorrelation did not drop within the "
        "run, so Geyer's sum ran to its end (τ ≈ 2T) and the number is a floor, not a measurement (ring: chains stay in "
        "the mode they start in; Gaussian: the σ = 1 coordinates move by a fraction of σ in the run). Compare the median there.",
        "",
        "Reading the table: every peer runs the same kernel, so ESS/grad should agree between peers up to the "
        "estimator's seed-to-seed spread, which one run does not show and which is large: in a one-off check over "
        "seeds (`--seed`), banana HMC's x0 ESS ranged 747–6386 (ebmcompose), 475–7095 (BlackJAX) and 669–9825 "
        "(torchebm) over 4 seeds, and funnel HMC's ESS of v was 374 ± 67 (ebmcompose) vs 415 ± 77 (BlackJAX) over 10 "
        "seeds (mean ± sd), with the same acceptance, divergences and mean and variance of v; err/MCSE inherits the "
        "noise of its ESS. torchebm's ESS/grad is half the "
        "others' by construction (its leapfrog evaluates the gradient at both ends of every step, 2L per transition, "
        "and adds two energy-only evaluations). A mean error of several MCSE in every peer (the funnel) is the fixed "
        "step's bias, not a bug: a step that fits the funnel's mouth cannot enter its neck. ebmcompose's HMC runs with "
        + (", ".join(f"`{k}={v}`" for k, v in m["ebmcompose_hmc_extra_kwargs"].items()) + " (its default per-chain step "
           "jitter is off, so the kernel is the peers' fixed-step HMC)" if m["ebmcompose_hmc_extra_kwargs"] else "its defaults")
        + ". `ebmcompose-compiled` rows ran compiled unless a warning below says it fell back to eager; their `first` "
        "and `compile` times depend on torch inductor's on-disk cache, which persists between processes (JAX keeps no "
        "cache by default), so after an earlier run they are warm-cache times, lower than a first-ever compilation.",
    ]
    if result.get("gradient_floor"):
        lines += ["", "## Compiler floor: one batched gradient", "",
                  "The same loop of batched gradient evaluations (`benchmarks/peer_floor.py`: `x ← x − ε∇E(x)`, "
                  f"{cfg['chains']} chains, float64) compiled whole by `torch.compile` (ebmcompose's inductor options) and by "
                  "`jax.jit`; microseconds per gradient, medians of interleaved repeats. `bound`: the run's gradient "
                  "evaluations × torch's time per gradient ÷ BlackJAX's whole run, about the ratio to BlackJAX of a "
                  "`torch.compile` sampler whose every other cost were zero. An estimate, not a strict bound: the "
                  "floor loop pays its per-iteration cost (a few µs) for each gradient, while an HMC transition "
                  "shares it among its L gradients, so a compiled HMC row can come out below it. `torch-loop` above is a user's own compiled loop (one graph per transition).", "",
                  "| target | torch.compile µs | jax.jit µs | ratio | HMC bound | MALA bound |", "|---|---:|---:|---:|---:|---:|"]
        for f in result["gradient_floor"]:
            bounds = []
            for a in ("hmc", "mala"):
                bj = _row(result, f["target"], a, "blackjax")
                bounds.append(_f(bj["n_grad"] * f["torch_us"] * 1e-6 / bj["wall_s"] if bj else None, ".2f"))
            lines.append(f"| {f['target']} | {f['torch_us']:.1f} | {_f(f['jax_us'], '.1f')} | {_f(f['ratio'], '.2f')} | "
                         + " | ".join(bounds) + " |")
    notes = sorted({f"- {r['peer']} ({r['target']} {r['algorithm'].upper()}): {w}" for r in result["rows"] for w in r["warnings"]})
    notes += [f"- {r['peer']} ({r['target']} {r['algorithm'].upper()}): {r['note']}" for r in result["rows"] if r["note"]]
    skips = sorted({f"- {s['peer']}" + (f" ({s['algorithm'].upper()})" if "no MALA" in s["reason"] else "") + f": skipped — {s['reason']}"
                    for s in result["skipped"]})
    if skips:
        lines += ["", "## Skipped", ""] + skips
    if notes:
        lines += ["", "## Notes and warnings raised by the first call", ""] + notes[:40]
    return "\n".join(lines) + "\n"


def tune(cfg: Config, targets: Sequence[str], algorithms: Sequence[str]) -> None:
    """Print ebmcompose's dual-averaged step sizes per cell (to freeze in ``peer_targets.SETTINGS``)."""
    torch.set_num_threads(cfg.threads)
    for name in targets:
        x = torch.from_numpy(start_points(name, cfg.chains, cfg.seed))
        energy = ec.EnergyFunction(TORCH[name], name=name)
        for algo in algorithms:
            s = _setting(name, algo)
            k = (HMC(step_size=None, n_leapfrog=s["n_leapfrog"], n_steps=300, n_warmup=500, target_accept=0.75, **HMC_FIXED) if algo == "hmc"
                 else MALA(step_size=None, n_steps=300, n_warmup=500, target_accept=0.7))
            res = k.sample(energy, x, generator=torch.Generator().manual_seed(cfg.seed), on_divergence="ignore")
            print(f"{name:13s} {algo}: step_size {float(res.info.step_size):.4g} acceptance {res.info.mean_acceptance:.3f}", flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__.splitlines()[0])
    ap.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    ap.add_argument("--algorithms", nargs="+", choices=ALGORITHMS, default=list(ALGORITHMS))
    ap.add_argument("--peers", nargs="+", choices=PEERS, default=list(PEERS))
    ap.add_argument("--chains", type=int, default=None, help=f"chains (default {Config.chains}; --quick {QUICK.chains})")
    ap.add_argument("--steps", type=int, default=None, help=f"recorded steps (default {Config.steps}; --quick {QUICK.steps})")
    ap.add_argument("--warmup", type=int, default=None, help=f"discarded steps before them (default {Config.warmup}; --quick {QUICK.warmup})")
    ap.add_argument("--repeats", type=int, default=None, help=f"timed repeats (default {Config.repeats}; --quick {QUICK.repeats})")
    ap.add_argument("--threads", type=int, default=1, help="torch and XLA CPU threads (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="short smoke run (32 chains, 200 steps, 1 repeat)")
    ap.add_argument("--tune", action="store_true", help="print adapted ebmcompose step sizes and exit")
    ap.add_argument("--out", type=Path, default=None, help=f"output folder (default {RESULTS}; --quick: {QUICK_RESULTS})")
    args = ap.parse_args(argv)
    base = QUICK if args.quick else Config()
    given = {k: getattr(args, k) for k in ("chains", "steps", "warmup", "repeats") if getattr(args, k) is not None}
    cfg = Config(**{**base.__dict__, **given, "threads": args.threads, "seed": args.seed})
    if cfg.steps < 4 or cfg.chains < 1 or cfg.warmup < 0 or cfg.repeats < 0 or cfg.threads < 1:
        ap.error("need --steps >= 4, --chains >= 1, --warmup >= 0, --repeats >= 0, --threads >= 1")
    if args.tune:
        tune(cfg, args.targets, args.algorithms)
        return 0
    out = args.out or (QUICK_RESULTS if args.quick else RESULTS)
    try:
        if args.quick and out.expanduser().resolve() == RESULTS.resolve():
            raise OutputError(f"--out {out}: a --quick run never replaces the committed results; choose another --out")
        with staged_output(out, STEM) as staging:  # files move into --out only when the whole run succeeded
            result = run(cfg, args.targets, args.algorithms, args.peers)
            result["meta"]["command"] = command = " ".join(["python -m benchmarks.peers", *argv])
            write_json(staging / f"{STEM}.json", result)
            write_text(staging / f"{STEM}.md", format_markdown(result, command))
    except OutputError as exc:
        print(f"{ap.prog}: error: {exc}", file=sys.stderr)
        return 2
    print(f"[peers] wrote {out / (STEM + '.json')} and {out / (STEM + '.md')} in {result['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
