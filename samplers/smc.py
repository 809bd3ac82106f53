"""Sequential Monte Carlo down the diffusion path: importance weights and resampling.

A population of ``B`` particles moves down the ladder ``ts = schedule.timesteps(n_steps, t_max,
t_min)`` (``t_0 = t_max > … > t_L = t_min``) through the sequence of *composed* intermediate
targets ``π_k(x) ∝ exp(−E(x, t_k))`` (an SMC sampler, Del Moral, Doucet & Jasra 2006). Summing
noised energies does not give the noised product, so reverse diffusion alone samples the
composition with a bias; the weights below remove it, and resampling moves mass between modes
that local MCMC at one noise level cannot (Thornton et al. 2025; Skreta et al. 2025).

Start. ``x ~ N(0, I)`` with log weight ``log w_0 = −E(x, t_0) − log N(x; 0, I)``.

Proposal ``M_k(x' | x)``, from ``t = t_k`` to ``s = t_{k+1}``: the reverse-diffusion step
(:func:`samplers.reverse_diffusion.ddim_update`), a Gaussian ``N(x'; m(x), σ² I)`` with ``m(x)``
the noise-free DDPM update from ``∇x E(x, t)`` (the posterior mean ``q(x_s | x_t, x̂0)``).
``proposal_variance="large"`` (default): ``σ² = b² = 1 − ᾱ_t/ᾱ_s`` (DDPM's "fixed_large",
Ho et al. 2020), right where the data spread exceeds the noise (low ``t``); ``"small"``: DDIM-η's
``σ_η²`` (``η = 1``: the posterior variance ``β̃``), which collapses the weights at low ``t``
(its variance is far below the true reverse variance there) and is exact only for point masses.
The step landing on ``s = 0`` has ``β̃ = 0``; it always uses ``b² = 1 − ᾱ_t``.

Backward kernel ``L_k(x | x')``: the forward noising kernel
``q(x_t | x_s) = N(x_t; a x_s, b² I)`` with ``a = sqrt(ᾱ_t / ᾱ_s)``, ``b² = 1 − ᾱ_t / ᾱ_s``.
The incremental weight of an SMC sampler with backward kernel ``L_k = q`` (Del Moral, Doucet &
Jasra 2006) is then, with ``x' = m(x) + σ ξ`` and ``d`` the event size::

    log w_k = [−E(x', s) + log q(x | x')] − [−E(x, t) + log M_k(x' | x)]
            = E(x, t) − E(x', s) − |x − a x'|² / (2 b²) + |ξ|² / 2 + d · log(σ / b)

(the Gaussians' ``(2π)^{d/2}`` cancel; with the default ``σ = b`` the last term is 0).

It needs energy values (one evaluation of ``E`` and ``∇E`` at ``(x', s)`` per level: the same
evaluation feeds the next proposal), never a Jacobian. The product over levels of the mean
incremental weights is unbiased for ``Z_L = ∫ exp(−E(x, t_L)) dx`` (the start density ``N(0, I)``
is normalised); ``info.log_z`` is
``log Ẑ_L`` (with normalised components, ``t_min = 0`` and an exact energy, the log of the
product's normaliser ``∫ Π_i p_i(x) dx``).

Rejuvenation (optional): after reweighting (and resampling), ``K`` transitions of an MCMC kernel
targeting ``π_{k+1}``. MALA and HMC leave it invariant, so the weights stay valid; ULA does not
(its bias is not in the weights: use it only as a heuristic).

Resampling. When ``ESS / B < ess_threshold`` after a level's reweighting, ancestors are drawn
(:mod:`samplers.resampling`, systematic by default), the weights reset to equal and ``log Ẑ``
takes the level's ``log mean w``. The decision is made on the device (no synchronisation): the
scheme is drawn every level and applied where the ESS is low. The last level is always
resampled, *before* its rejuvenation (so the MCMC moves spread the duplicates resampling makes),
and ``samples`` are equally weighted.

Several processes (``ec.distributed.sample(SMC(...), energy, N, seed=..., block=...)``,
:meth:`SMC.sample_sharded`): the same algorithm on one population cut into blocks, each block with
its own random streams, resampled globally across the ranks (:mod:`samplers.population`); the
result depends on the seed and the block size, not on the number of processes.

Score-only energies (ε-networks) have no energy values, so the weights above are unavailable.
``weights="fkc"`` (or ``"auto"``, which picks it when ``energy.has_energy`` is false) uses instead
the Feynman–Kac corrector weights of Skreta et al. (2025, :mod:`samplers.fkc`), which need only
the leaves' scores: for a *linear* composition ``E = Σ_i β_i E_i`` (sums, weights, AND/NOT,
classifier-free guidance) the target at level ``t`` is ``π_t ∝ Π_i q_i(x, t)^{β_i}``, the proposal
is the same reverse-diffusion step driven by ``S = Σ_i β_i s_i``, and each step ``t → s`` adds::

    log w += Δ (r(x, t) + r(x', s)) / 2 − ½ d Δ (Σβ − 1),   r = ½ (|S|² − Σ_i β_i |s_i|²),
    Δ = log(ᾱ_s / ᾱ_t) = ∫_s^t β(u) du,

with start weight ``−(Σβ − 1)(|x|²/2 + (d/2) log 2π)`` (each ``q_i(·, t_max)`` taken as
``N(0, I)``). Each level evaluates every leaf once (leaves of one network in one batched forward),
the same NFE as evaluating the composition. These weights discretise a continuous-time identity,
so unlike the energy weights they are exact only as the steps shrink: every step needs a small
``Δ`` (the cosine schedule's ``β`` diverges at ``t = 1``: pass ``t_max ≈ 0.9`` or use
``VPSchedule.linear()``, and ~100 steps or more), and ``info.log_z`` is then a consistent (not
unbiased) estimate of ``log ∫ Π_i q_i(x, t_min)^{β_i} dx`` (normalised leaves: the product's
normaliser), further off when ``t_max`` is far from pure noise. Rejuvenation: ULA (the composed
score targets ``π_t``; a heuristic as above, and the leaves are re-evaluated after it) or none;
MALA/HMC need energies. A mixture ``a | b`` is not linear and raises :class:`ec.InputError`
(:class:`ec.ScoreOnlyError` when it has score-only leaves) naming the fix. With the default
``weights="energy"`` a score-only energy raises :class:`ec.ScoreOnlyError` naming ``weights="fkc"``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch
from torch import Tensor

import ebmcompose as ec

from . import health
from .adaptation import DualAveraging
from .annealed_langevin import step_size_exponent
from .base import MCMCKernel, State, check_positive_int, evaluate, randn_like, require_energy, sum_event
from .fkc import FKCScores, fkc_increment, fkc_start, step_integrals
from .ladder import (check_kernel, check_time_dependent, correct, level_info, run_ladder, step_factors,
                     summarise)
from .population import (STEP_JOIN, OneGenerator, Population, ShardedPopulation, each_block, rejuvenate_blocks, rows, slice_rows,
                         take_state, whole)
from .resampling import SCHEMES, ess as _ess
from .result import SampleResult
from .reverse_diffusion import DiffusionStep, ddim_coefficients, ddim_update
from .run import search_step_size
from .smc_state import SMCLevelInfo, SMCState, SMCSummary

__all__ = ["SMC", "SMCState", "SMCLevelInfo", "SMCSummary", "smc_steps", "STEP_RULES", "WEIGHTS"]

#: Valid ``step_rule`` values of the rejuvenation kernel.
STEP_RULES = ("sigma2", "fixed", "adapt")
#: Valid ``weights`` values: energy-value weights, Feynman–Kac corrector weights, or by ``has_energy``.
WEIGHTS = ("energy", "fkc", "auto")
_LOG_2PI = math.log(2.0 * math.pi)
_FKC_KERNEL = (
    "{} rejuvenation needs energy values, which FKC weights do without: with weights='fkc' rejuvenate with "
    "ULA(...) (a heuristic) or not at all, or use weights='energy' with an energy-parameterised model"
)
_NONFINITE_HINT = (
    "use more steps (n_steps), a smaller rejuvenation step_size (or step_rule='adapt'), and check that "
    "the energy is finite at every t of the ladder (ε-networks and DiffusionEnergy are not at t = 0: pass t_min > 0)"
)


def smc_steps(schedule: ec.VPSchedule, ts: Tensor, eta: float, variance: str = "large") -> List[DiffusionStep]:
    """The proposal's steps along ``ts``: DDIM-η coefficients (the mean), with the noise std
    ``sqrt(1 − ᾱ_t/ᾱ_s)`` for ``variance="large"`` and on the step landing on ``t = 0``."""
    out = []
    for st in ddim_coefficients(schedule, ts, eta):
        if variance == "large" or st.sigma_s == 0.0:
            st = dataclasses.replace(st, noise_std=math.sqrt(-math.expm1(2.0 * (math.log(st.alpha_t) - math.log(st.alpha_s)))))
        out.append(st)
    return out


def _backward(schedule: ec.VPSchedule, ts: Tensor):
    """Per step ``(a, log b, 1 / (2 b²))`` of the forward kernel ``q(x_t | x_s) = N(a x_s, b² I)``."""
    log_ab = schedule.log_alpha_bar(ts.detach().to("cpu", torch.float64)).tolist()
    out = []
    for i in range(len(log_ab) - 1):
        b2 = -math.expm1(log_ab[i] - log_ab[i + 1])
        out.append((math.exp(0.5 * (log_ab[i] - log_ab[i + 1])), 0.5 * math.log(b2), 0.5 / b2))
    return out


@dataclass(frozen=True)
class SMC:
    """Sequential Monte Carlo down the noise ladder with valid importance weights (module notes).

    Parameters
    ----------
    schedule : ec.VPSchedule
        Noise schedule the energy's ``t`` refers to.
    n_steps : int
        Proposal steps; the ladder ``schedule.timesteps(n_steps, t_max, t_min)`` ``(n_steps + 1,)``.
    rejuvenate : MCMCKernel, optional
        ``MALA(...)`` or ``HMC(...)`` (``ULA(...)`` as a heuristic: its bias is not weighted)
        run after each level's reweighting and resampling; ``None`` (default): none.
    n_rejuvenate : int, optional
        Transitions per level (default: ``rejuvenate.n_steps``).
    ess_threshold : float
        Resample when ``ESS / B`` falls below it, in ``[0, 1]`` (0: only the final resampling;
        1: every level). Default 0.5.
    resampling : {"systematic", "stratified", "multinomial"}
        Scheme (:mod:`samplers.resampling`).
    eta : float
        DDIM η ``> 0`` of the proposal's ``"small"`` variance (1: DDPM ancestral).
    proposal_variance : {"large", "small"}
        The proposal's noise (module notes): ``"large"`` (default) ``1 − ᾱ_t/ᾱ_s`` around DDPM's
        posterior mean; ``"small"`` DDIM-η's ``σ_η²``.
    step_rule : {"sigma2", "fixed", "adapt"} or None
        Rejuvenation step size at level ``t`` (``h = rejuvenate.step_size``): ``h σ(t)²``, ``h``,
        or dual averaging per level towards ``rejuvenate.target_accept`` carried down the ladder
        (as :class:`~samplers.PredictorCorrector`); for HMC the factors enter as square roots.
        ``None``: ``"adapt"`` for a kernel without a step size, else ``"sigma2"``.
    t_max : float
        Start of the ladder (default 1.0).
    t_min : float
        Final target time (default 0: the energy must be finite at ``t = 0``, as exact diffused
        energies are). ``t_min > 0`` (networks): the weights target ``π(t_min)`` and, after the
        final resampling, the samples take one noise-free x0-prediction step to ``t = 0`` (no
        extra evaluation; ``log_z`` is that of ``π(t_min)``).
    static_ok : bool
        Accept a static energy (refused by default: the ladder steps through noised densities).
    weights : {"energy", "fkc", "auto"}
        Importance weights (module notes): ``"energy"`` (default) from energy values, exact at any
        step count; ``"fkc"`` Feynman–Kac corrector weights from the leaves' scores alone, for
        linear compositions (score-only leaves allowed; rejuvenation only by ULA or none);
        ``"auto"``: ``"energy"`` when ``energy.has_energy``, else ``"fkc"``.

    Notes
    -----
    NFE: ``n_steps + 1`` evaluations (energy and gradient; with FKC weights the leaves' scores,
    counted the same way) plus the kernel's NFE per transition
    (1 for MALA/ULA, ``n_leapfrog`` for HMC) ``× n_rejuvenate × n_steps``, plus a step-size search
    at the first level when the kernel has no step size, plus one per level after ULA transitions
    (ULA's state holds no energy). Memory and time are those of ``B`` chains.

    Examples
    --------
    >>> res = SMC(ec.VPSchedule.cosine(), 100, rejuvenate=MALA(step_size=0.5, n_steps=1)).sample(
    ...     energy, shape=(2000, 2), generator=torch.Generator().manual_seed(0))
    >>> res.samples.shape, res.info.log_z, res.info.ess.shape
    """

    schedule: ec.VPSchedule
    n_steps: int
    rejuvenate: Optional[MCMCKernel] = None
    n_rejuvenate: Optional[int] = None
    ess_threshold: float = 0.5
    resampling: str = "systematic"
    eta: float = 1.0
    proposal_variance: str = "large"
    step_rule: Optional[str] = None
    t_max: float = 1.0
    t_min: float = 0.0
    static_ok: bool = False
    weights: str = "energy"

    def __post_init__(self):
        if not isinstance(self.schedule, ec.VPSchedule):
            raise TypeError(f"schedule must be an ebmcompose.VPSchedule, got {type(self.schedule).__name__}")
        check_positive_int(self.n_steps, "n_steps")
        for name in ("t_max", "t_min"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ec.InputError(f"{name} must be a number in [0, 1], got {v!r}")
        if not 0.0 <= float(self.t_min) < float(self.t_max) <= 1.0:
            raise ec.InputError(f"need 0 <= t_min < t_max <= 1, got t_min={self.t_min!r}, t_max={self.t_max!r}")
        e = self.ess_threshold
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0.0 <= e <= 1.0:
            raise ec.InputError(f"ess_threshold must be a fraction in [0, 1] (resample when ESS/B falls below it), got {e!r}")
        if self.resampling not in SCHEMES:
            raise ec.InputError(f"unknown resampling {self.resampling!r}; use one of {', '.join(SCHEMES)}")
        eta = self.eta
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not (0.0 < eta < float("inf")):
            raise ec.InputError(
                f"eta must be > 0 (1: DDPM ancestral); SMC weights need a stochastic proposal with a density, "
                f"so deterministic DDIM (eta=0) cannot be weighted; got {eta!r}"
            )
        if self.weights not in WEIGHTS:
            raise ec.InputError(f"weights must be one of {', '.join(map(repr, WEIGHTS))}, got {self.weights!r}")
        if self.proposal_variance not in ("large", "small"):
            raise ec.InputError(f"proposal_variance must be 'large' or 'small', got {self.proposal_variance!r}")
        if self.proposal_variance == "large" and float(eta) != 1.0:
            raise ec.InputError("eta sets the 'small' proposal variance; pass proposal_variance='small' with eta != 1")
        k = self.rejuvenate
        if k is not None:
            check_kernel(k, "rejuvenate")
            n = self.n_rejuvenate if self.n_rejuvenate is not None else k.n_steps
            check_positive_int(n, "n_rejuvenate", allow_zero=True)
            object.__setattr__(self, "n_rejuvenate", n)
            rule = self.step_rule or ("adapt" if k.step_size is None else "sigma2")
            if rule not in STEP_RULES:
                raise ec.InputError(f"unknown step_rule {rule!r}; valid: {', '.join(STEP_RULES)}")
            if rule != "adapt" and k.step_size is None:
                raise ec.InputError(
                    f"step_rule={rule!r} scales rejuvenate.step_size, which is None; give the kernel a "
                    "step_size or use step_rule='adapt'"
                )
            object.__setattr__(self, "step_rule", rule)
            if self.weights == "fkc" and k.needs_energy and n:
                raise ec.InputError(_FKC_KERNEL.format(type(k).__name__))
        else:
            if self.n_rejuvenate:
                raise ec.InputError("n_rejuvenate > 0 needs a kernel: pass rejuvenate=MALA(...) or HMC(...)")
            object.__setattr__(self, "n_rejuvenate", 0)

    # ------------------------------------------------------------------ pieces
    def ladder(self) -> Tensor:
        """The ladder ``(n_steps + 1,)`` (float64, ``t_max`` → ``t_min``)."""
        return self.schedule.timesteps(self.n_steps, t_max=float(self.t_max), t_min=float(self.t_min),
                                       dtype=torch.float64)

    def rule_factors(self) -> List[float]:
        """``(n_steps + 1,)`` factors multiplying ``rejuvenate.step_size`` per level (``sigma(0) = 0``: the previous level's)."""
        return step_factors(self.schedule, self.ladder(), self.step_rule, self.rejuvenate)

    # ------------------------------------------------------------------ the loop
    def sample(
        self,
        energy: ec.Energy,
        x0: Optional[Tensor] = None,
        *,
        generator: Optional[torch.Generator] = None,
        shape: Optional[Sequence[int]] = None,
        device=None,
        dtype: Optional[torch.dtype] = None,
        progress: bool = False,
        callback: Optional[Callable] = None,
        trace_every: int = 0,
        on_divergence: str = "warn",
        populations: int = 1,
    ) -> SampleResult:
        """Move ``B`` weighted particles down the ladder; return them equally weighted.

        Parameters
        ----------
        energy : ec.Energy
            Time-dependent energy with energy values (exact diffused densities, ``DiffusionEnergy``
            and their compositions); with ``weights="fkc"`` a linear composition of leaves that
            may be score-only (ε-networks, ``ScoreFunction``).
        x0 : Tensor, optional
            ``(B, *event)`` starting particles, weighted as draws from ``N(0, I)``; when omitted they
            are drawn from ``generator`` with ``shape`` (on the generator's device, or ``device``).
        generator : torch.Generator, optional
            Source of all randomness (start, proposals, resampling, rejuvenation): same seed →
            same samples.
        shape : tuple of int, optional
            ``(B, *event)`` when ``x0`` is not given.
        progress, callback, trace_every, on_divergence
            As :meth:`samplers.PredictorCorrector.sample`; the callback gets an :class:`SMCState`
            and an :class:`SMCLevelInfo`.
        populations : int
            ``G``: the particles form ``G`` independent populations of ``M = B / G`` consecutive
            rows (rows ``[g M, (g + 1) M)``), each with its own weights, ESS, resampling decisions
            and ``log Ẑ``; resampling never moves a particle to another population. For batches whose
            rows carry their own conditions: ``M`` particles per request, each request's conditions
            repeated ``M`` times (``cond.repeat_interleave(M, 0)``). Default 1.

        Returns
        -------
        SampleResult
            ``samples`` ``(B, *event)`` at ``t = 0``, equally weighted (within each population);
            ``info`` an :class:`SMCSummary` (``log_z``, per-level ``ess`` and ``resampled``, ``nfe``,
            rejuvenation acceptance and step sizes like :class:`~samplers.result.LadderSummary`;
            with ``G > 1``: ``log_z_populations`` ``(G,)``, ``ess`` and ``resampled`` ``(L + 1, G)``).

        Raises
        ------
        ec.ScoreOnlyError
            ``weights="energy"`` and the energy has no energy values (score-only ε-network); or
            FKC weights with MALA/HMC rejuvenation or a mixture of a score-only energy.
        ec.InputError
            FKC weights for a non-linear composition (a mixture) or coefficients with ``Σβ ≤ 0``.
        NonFiniteStateError
            A particle's position, energy or gradient became NaN/inf; names the level.
        """
        check_positive_int(populations, "populations")
        return self._run(energy, OneGenerator(generator), x0, shape, device, dtype, progress, callback, trace_every,
                         on_divergence, populations)

    def sample_sharded(
        self,
        energy: ec.Energy,
        plan,
        session,
        *,
        seed: int,
        event_shape: Optional[Sequence[int]] = None,
        init: Optional[Callable[[int, torch.Generator], Tensor]] = None,
        device=None,
        dtype: Optional[torch.dtype] = None,
        progress: bool = False,
        callback: Optional[Callable] = None,
        trace_every: int = 0,
        on_divergence: str = "warn",
    ) -> SampleResult:
        """Collective: one population of ``plan.n`` particles split into the blocks of ``plan`` over the ranks.

        Called by ``ec.distributed.sample(SMC(...), energy, n, seed=..., block=..., session=...)``
        (which recognises a sampler with this method) on every rank with the same arguments. The
        algorithm is that of :meth:`sample` (:mod:`samplers.population`): block ``b`` (rows
        ``plan.bounds(b)``) draws its start, proposal noise and rejuvenation transitions from
        ``ec.distributed.block_generator(seed, b)``, and its energies, weight increments and MCMC
        transitions are computed block by block; the ESS, the resampling decision and ``log Ẑ``
        use the all-gathered ``(N,)`` log weights; ancestors come from
        ``ec.distributed.resample_indices`` with ``shared_generator(seed, "resample")`` and every
        per-particle tensor moves with ``take_rows``. The result depends on ``seed`` and
        ``plan.block``, never on the number of processes (bitwise on the CPU), but differs from
        :meth:`sample` with one generator. Rejuvenation step sizes (search, ``step_rule="adapt"``)
        are found per block.

        Parameters
        ----------
        energy : ec.Energy
            As :meth:`sample`, on the run's device.
        plan : ec.distributed.BlockPlan
            ``N = plan.n`` particles in blocks of ``plan.block``; this rank holds ``plan.rows``.
        session : ec.distributed.Session
            The process group (``Session()``: every block in this process).
        seed : int
            The run's seed.
        event_shape : sequence of int, optional
            Shape of one particle; blocks start from ``N(0, I)`` draws of their generator.
        init : callable, optional
            Instead: ``init(m, g) -> (m, *event)`` a block's starting particles (weighted as ``N(0, I)`` draws).
        device, dtype
            Where and in which dtype the start is drawn (default: the session's device, torch's dtype).
        progress, callback, trace_every, on_divergence
            As :meth:`sample` (callbacks and traces see this rank's rows).

        Returns
        -------
        SampleResult
            ``samples`` ``(m, *event)`` this rank's particles in its local order (``plan.rows``:
            its blocks one after another), equally weighted; ``info`` an :class:`SMCSummary` whose
            ``log_z``, ``ess``, ``resampled``, ``n_resampled`` and ``particles`` (``N``) describe the
            whole population (the same on every rank), and whose acceptance, step sizes, divergences
            and NFE are this rank's (mean acceptance and step size over its blocks, weighted by size;
            NFE the most any of its particles went through).
        """
        if (event_shape is None) == (init is None):
            raise ec.InputError("pass exactly one of event_shape=(...) (start from N(0, I)) or init=fn(m, g) -> x0")
        dev = torch.device(device) if device is not None else session.device
        pop = ShardedPopulation(plan, session, seed, dev, init)
        shape = None if event_shape is None else (plan.n, *event_shape)
        return self._run(energy, pop, None, shape, dev, dtype, progress, callback, trace_every, on_divergence)

    def _run(self, energy, pop: Population, x0, shape, device, dtype, progress, callback, trace_every,
             on_divergence, populations: int = 1) -> SampleResult:
        """The algorithm (module notes) on the population ``pop`` (:mod:`samplers.population`)."""
        check_positive_int(trace_every, "trace_every", allow_zero=True)
        health.check_on_divergence(on_divergence)
        check_time_dependent(energy, "SMC", self.static_ok)
        mode = self.weights if self.weights != "auto" else ("energy" if energy.has_energy else "fkc")
        if mode == "energy" and not energy.has_energy:
            raise ec.ScoreOnlyError(
                f"SMC with weights='energy' needs energy values for its importance weights (E(x, t) at every "
                f"level), but {energy.label} provides scores only: pass weights='fkc' (Feynman-Kac corrector "
                "weights from scores, for sums/products/guidance of score models), use an energy-parameterised "
                "model (ec.DiffusionEnergy, an exact diffused density), or a score-based sampler "
                "(ReverseDiffusion, PredictorCorrector with a ULA corrector)"
            )
        kernel, K = self.rejuvenate, self.n_rejuvenate
        fkc = FKCScores(energy) if mode == "fkc" else None  # raises for non-linear compositions
        if kernel is not None and kernel.needs_energy and K:
            if fkc is not None:
                raise (ec.InputError if energy.has_energy else ec.ScoreOnlyError)(_FKC_KERNEL.format(type(kernel).__name__))
            require_energy(energy, f"the {type(kernel).__name__} rejuvenation of SMC")
        x = pop.start(x0, shape, device, dtype)
        ts_t = self.ladder()
        ts = ts_t.tolist()
        if x.shape[0] or not pop.sharded:  # an idle rank (no block) holds an empty batch
            energy.check_input(x, ts[0])
        steps = smc_steps(self.schedule, ts_t, float(self.eta), self.proposal_variance)
        back = _backward(self.schedule, ts_t)
        deltas = step_integrals(self.schedule, ts_t) if fkc is not None else None
        factors = self.rule_factors() if kernel is not None else None
        adapt = DualAveraging(kernel.target_accept) if kernel is not None and self.step_rule == "adapt" else None
        b = pop.size(x)
        blocks = pop.blocks(x)
        d = math.prod(x.shape[1:])
        wdtype = torch.promote_types(x.dtype, torch.float32)
        if b % populations:
            raise ec.InputError(f"{b} particles cannot form {populations} populations of equal size: "
                                "give a multiple of populations (M particles for each of the G populations)")
        G, M = populations, b // populations
        log_m = math.log(M)
        thr = float(self.ess_threshold) * M
        per = (lambda v: v[0]) if G == 1 else (lambda v: v)  # one population: 0-d ESS and decision per level
        state_type = kernel.state_type if kernel is not None else State
        guess_scale = (kernel.initial_step_size_guess * d ** (-step_size_exponent(kernel) / 3.0)
                       if kernel is not None else None)

        def at(xs: Tensor, t: float, previous: Optional[State] = None):
            """``(state, nfe, rate)``: energy and gradient, or (FKC) the composed gradient and the rate ``(B,)``."""
            tt = torch.full((xs.shape[0],), float(t), device=xs.device, dtype=xs.dtype)
            if fkc is None:
                e, g, nfe = evaluate(energy, xs, tt, True)
                rate = None
            else:
                e = None
                g, rate, nfe = fkc(xs, tt, wdtype)
            if previous is None:
                return state_type(x=xs, energy=e, grad=g, t=tt), nfe, rate
            return previous.replace(x=xs, energy=e, grad=g, t=tt), nfe, rate

        def begin(g, xs: Tensor):
            """One block's start: ``(state, log_w, rate, nfe)``."""
            st0, nfe0, rate0 = at(xs, ts[0])
            if fkc is None:
                xf = xs.reshape(xs.shape[0], d).to(wdtype)
                log_w0 = -st0.energy.to(wdtype) + 0.5 * xf.square().sum(1) + 0.5 * d * _LOG_2PI
            else:
                log_w0 = fkc_start(xs, fkc.total, wdtype)
            return st0, log_w0, rate0, nfe0

        def reweight(st: State, log_w: Tensor, log_z: Tensor, force: bool = False, rate: Optional[Tensor] = None):
            """ESS and adaptive resampling of each population: ``(state, log_w, log_z, ess, resampled, rate)``."""
            log_w = torch.nan_to_num(log_w, nan=-math.inf, posinf=-math.inf)
            lw_all = pop.gather(log_w).view(G, M)
            e = _ess(lw_all)  # (G,)
            do = torch.ones_like(e, dtype=torch.bool) if force else e < thr
            idx = pop.ancestors(lw_all, do, self.resampling)
            lse = torch.logsumexp(lw_all, -1) - log_m
            log_z = torch.where(do, log_z + lse, log_z)
            log_w = torch.where(do.repeat_interleave(M) if G > 1 else do, torch.zeros_like(log_w), log_w)
            return (take_state(st, idx, pop.take), log_w, log_z, per(e), per(do),
                    None if rate is None else pop.take(rate, idx))

        def propose(g, prev: State, log_w: Tensor, rate_prev: Optional[Tensor], i: int):
            """One block's proposal step ``i`` and weight: ``(state, log_w, rate, nfe)``."""
            step = steps[i]
            a, log_bb, inv_2b2 = back[i]
            mean = ddim_update(prev.x, prev.grad, dataclasses.replace(step, noise_std=0.0), None)
            xi = randn_like(prev.x, g)
            x_new = mean + step.noise_std * xi
            st, nfe, rate = at(x_new, ts[i + 1], prev)
            if fkc is None:
                log_q = -inv_2b2 * sum_event((prev.x - a * x_new).square()).to(wdtype)
                log_m = -0.5 * sum_event(xi.square()).to(wdtype)
                inc = (prev.energy.to(wdtype) - st.energy.to(wdtype) + log_q - log_m
                       + d * (math.log(step.noise_std) - log_bb))
            else:
                inc = fkc_increment(rate_prev, rate, deltas[i], fkc.total, d)
            return st, log_w + inc, rate, nfe

        def rejuvenate(g, st: State, rate: Optional[Tensor], carry, j: int):
            """One block's ``K`` transitions at level ``j``: ``(state, rate, carry, recorder, step size, nfe)``."""
            nfe = 0
            if adapt is not None and carry is not None:
                h = carry * factors[j]
            elif kernel.step_size is None:
                h, nfe = search_step_size(kernel, energy, st, g, guess=guess_scale * factors[j])
            else:
                h = kernel.step_size * factors[j]
            st, k_out, rec = correct(kernel.with_step_size(h), energy, st, K, g, adapt)
            if adapt is not None:
                carry = k_out.step_size / factors[j]
            if st.energy is None:  # ULA keeps no energy; the next weight needs E(x, t) (FKC: the rate)
                st, n, rate = at(st.x, ts[j], st)
                nfe += n
            return st, rate, carry, rec, h, nfe

        def move(i: int, ls: SMCState):
            j = i + 1
            st, log_w, rate, nfe = each_block(blocks, lambda g, p, w, r: propose(g, p, w, r, i),
                                               (ls.kernel_state, ls.log_weights, ls.fkc_rate),
                                               split=(rows, slice_rows, slice_rows), join=STEP_JOIN)
            st, log_w, log_z, e, do, rate = reweight(st, log_w, ls.log_z, force=j == len(steps), rate=rate)
            carry, base = ls.step_size, None
            if kernel is not None and K:
                if whole(blocks):
                    st, rate, carry, rec, h, n = rejuvenate(blocks[0][2], st, rate, carry, j)
                    base = level_info(ts[j], nfe + n, rec, h)
                else:  # block by block, each with its generator and its own (adapted) step size
                    st, rate, carry, base = rejuvenate_blocks(blocks, lambda g, *a: rejuvenate(g, *a, j), st, rate,
                                                              carry, ts[j], nfe, adapt is not None)
            if base is None:
                base = level_info(ts[j], nfe)
            info = SMCLevelInfo(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)}, ess=e, resampled=do)
            return SMCState(x=st.x, t=ts[j], level=j, kernel_state=st, step_size=carry, log_weights=log_w,
                            log_z=log_z, fkc_rate=rate), info

        st0, log_w0, rate0, nfe0 = each_block(blocks, begin, (x,), split=(slice_rows,), join=STEP_JOIN)
        st0, log_w0, log_z0, ess0, do0, rate0 = reweight(st0, log_w0, torch.zeros(G, device=x.device, dtype=wdtype),
                                                         rate=rate0)
        start = SMCState(x=st0.x, t=ts[0], level=0, kernel_state=st0, log_weights=log_w0, log_z=log_z0,
                         fkc_rate=rate0)
        final, infos, trace, trace_t = run_ladder(
            "SMC", len(steps), start, move, progress=progress, callback=callback, trace_every=trace_every,
            hint=_NONFINITE_HINT,
        )
        st, log_z = final.kernel_state, final.log_z  # the last level was resampled: equal weights
        x_out = st.x
        if ts[-1] > 0.0:  # noise-free x0-prediction from t_min to 0 (cached gradient)
            last = ddim_coefficients(self.schedule, torch.tensor([ts[-1], 0.0], dtype=torch.float64), 0.0)[0]
            x_out, = each_block(blocks, lambda g, s_: (ddim_update(s_.x, s_.grad, last, None),), (st,), split=(rows,),
                                join=(torch.cat,))
        ess_all = torch.stack([ess0] + [i.ess for i in infos]).detach().to("cpu", torch.float64)
        res_all = torch.stack([do0] + [i.resampled for i in infos]).detach().cpu()
        corrected = [False] + [i.n_transitions > 0 for i in infos] if kernel is not None else None
        base = summarise(ts, infos, len(steps), trace, trace_t, corrected=corrected, extra_nfe=nfe0,
                         corrector_steps=0 if kernel is not None else None, eta=float(self.eta))
        info = SMCSummary(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)},
                          log_z=float(log_z[0]) if G == 1 else None, ess=ess_all, resampled=res_all,
                          n_resampled=int(res_all.sum()), particles=b, scheme=self.resampling, weights=mode,
                          populations=G, log_z_populations=None if G == 1 else log_z.detach().to("cpu", torch.float64))
        out = SampleResult(samples=x_out, info=info, state=st)
        if x.shape[0] == 0:  # an idle rank of a sharded population: nothing of its own to assess
            return out
        return health.finish(out, x, sampler="SMC", on_divergence=on_divergence,
                             metropolis=kernel is not None and kernel.needs_energy and K > 0,
                             adapted=self.step_rule == "adapt", moves_every_chain=True)

