"""Annealed Langevin dynamics: an MCMC corrector run down a ladder of noise levels.

Song & Ermon 2019 ("Generative Modeling by Estimating Gradients of the Data Distribution",
Algorithm 1): for levels ``σ_1 > … > σ_L`` run ``T`` Langevin steps with step size
``α_i = ε σ_i² / σ_L²`` on ``p_{σ_i}``, each level starting where the previous one ended. Here the
levels are diffusion times ``t_1 > … > t_L`` of a :class:`ebmcompose.VPSchedule` with
``σ_i = schedule.sigma(t_i)``, and the per-level transition is any static kernel of this package
(:class:`~samplers.ULA` by default, or :class:`~samplers.MALA` / :class:`~samplers.HMC`), run at the
fixed ``t_i`` through the shared ladder driver (``samplers.ladder``).

The kernels' Langevin step is ``x' = x − h ∇E + sqrt(2h) ξ``, so Song & Ermon's ``α`` is ``2h``;
the ``σ²`` rule is the same for ``h``. HMC's ``step_size`` is a leapfrog step (a length, one
leapfrog step = MALA with ``h = step²/2``), so for HMC the rule scales it by ``σ_i / σ_L``.

AIS. With a Metropolis kernel (MALA, HMC), every transition leaves its level's target invariant,
so the increments ``−(E_{t_{i+1}}(x) − E_{t_i}(x))`` at the state reached at the end of level ``i``
are annealed-importance-sampling log-weights (Neal 2001): ``info["log_weights"]`` ``(B,)``. They
cost nothing (the new level's energy at the same ``x`` is the first evaluation of that level),
start at 0 (the starting points are treated as draws from the first level's target), and
``logsumexp(log_weights) − log B`` estimates ``log Z_{t_L} − log Z_{t_1}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import torch
from torch import Tensor

import ebmcompose as ec

from . import health
from .adaptation import DualAveraging
from .base import MCMCKernel, check_positive_int, check_step_size, require_energy
from .ladder import (LadderState, check_kernel, check_time_dependent, correct, level_info, level_state, prior_sample,
                     run_ladder, summarise)
from .result import SampleResult

__all__ = ["AnnealedLangevin", "step_size_exponent"]

_NONFINITE_HINT = (
    "use a smaller step_size, more levels, or a Metropolis kernel (MALA/HMC), and check that the "
    "model's score is finite at every t of the ladder"
)


def step_size_exponent(kernel: MCMCKernel) -> float:
    """Power of the noise *variance* a kernel's ``step_size`` scales with under a ``σ²`` rule
    (1 for Langevin steps ``h ∝ σ²``, 0.5 for HMC's leapfrog length ``∝ σ``)."""
    return float(type(kernel).step_size_exponent)


def default_kernel(kernel: Optional[MCMCKernel]) -> MCMCKernel:
    """The given kernel, or ``ULA(step_size=1.0)`` (its step size is set by the ladder's rule)."""
    if kernel is None:
        from .ula import ULA

        return ULA(step_size=1.0)
    check_kernel(kernel, "kernel")
    return kernel


# --------------------------------------------------------------------------- the sampler
@dataclass(frozen=True)
class AnnealedLangevin:
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1) with any static kernel.

    Parameters
    ----------
    schedule : ec.VPSchedule
        Noise schedule the energy's ``t`` refers to.
    n_levels : int
        Number of noise levels ``L``; the levels are ``schedule.timesteps(L − 1, t_max, t_min)``
        (``L`` times from ``t_max`` down to ``t_min``), or ``levels`` when given.
    n_steps_per_level : int
        Transitions ``T`` per level.
    step_size : float
        ``ε``: the kernel's step size at the *last* (least noisy) level; level ``i`` uses
        ``ε (σ_i² / σ_L²)`` (``ε (σ_i / σ_L)`` for HMC's leapfrog step, see module notes).
    kernel : MCMCKernel, optional
        ``ULA(...)`` (default), ``MALA(...)`` or ``HMC(...)``; its own ``step_size`` and
        ``n_steps`` are ignored (the ladder sets them), its other settings are used.
    t_max, t_min : float
        First and last level (default 1.0 and 0.01; ``t_min`` must be > 0 because the rule
        divides by ``σ_L`` and time-dependent models are not evaluated at ``t = 0``).
    levels : sequence of float, optional
        Explicit descending level times in ``(0, 1]`` instead of the ladder.
    adapt : bool
        Per-level dual averaging of the step size towards ``kernel.target_accept`` (Metropolis
        acceptance for MALA/HMC, ULA's gradient-only proxy for ULA); the first level starts at
        the rule's step size and each level's adapted step size is carried to the next one scaled
        by the rule's ratio ``σ_{i+1}² / σ_i²``.
    static_ok : bool
        Accept a static energy (one that reads no ``t``); refused by default, since every level
        would then target the same density.

    Notes
    -----
    NFE: ``L`` level evaluations (energy and gradient of the first state of each level) plus the
    kernel's NFE per transition (1 for ULA/MALA, ``n_leapfrog`` for HMC) ``× T × L``.
    """

    schedule: ec.VPSchedule
    n_levels: int
    n_steps_per_level: int
    step_size: float
    kernel: Optional[MCMCKernel] = None
    t_max: float = 1.0
    t_min: float = 1e-2
    levels: Optional[Tuple[float, ...]] = None
    adapt: bool = False
    static_ok: bool = False

    def __post_init__(self):
        if not isinstance(self.schedule, ec.VPSchedule):
            raise TypeError(f"schedule must be an ebmcompose.VPSchedule, got {type(self.schedule).__name__}")
        check_positive_int(self.n_levels, "n_levels")
        check_positive_int(self.n_steps_per_level, "n_steps_per_level")
        check_step_size(self.step_size, allow_none=False)
        default_kernel(self.kernel)
        if self.levels is not None:
            lv = tuple(float(t) for t in self.levels)
            if len(lv) != self.n_levels:
                raise ec.InputError(f"{len(lv)} levels given but n_levels={self.n_levels}")
            if any(not (0.0 < t <= 1.0) for t in lv) or any(b >= a for a, b in zip(lv, lv[1:])):
                raise ec.InputError(f"levels must be strictly decreasing times in (0, 1], got {lv}")
            object.__setattr__(self, "levels", lv)
        elif not (0.0 < float(self.t_min) < float(self.t_max) <= 1.0) and not (
            self.n_levels == 1 and 0.0 < float(self.t_min) <= 1.0
        ):
            raise ec.InputError(
                f"need 0 < t_min < t_max <= 1, got t_min={self.t_min}, t_max={self.t_max}; the "
                "last level must have t_min > 0 (sigma > 0)"
            )

    # ------------------------------------------------------------------ pieces
    def ladder(self) -> Tensor:
        """Level times ``(L,)`` (float64, descending)."""
        if self.levels is not None:
            return torch.tensor(self.levels, dtype=torch.float64)
        if self.n_levels == 1:
            return torch.tensor([float(self.t_min)], dtype=torch.float64)
        return self.schedule.timesteps(self.n_levels - 1, t_max=float(self.t_max), t_min=float(self.t_min), dtype=torch.float64)

    def step_sizes(self) -> Tensor:
        """Per-level step sizes ``(L,)`` of the ``σ²`` rule (float64)."""
        kernel = default_kernel(self.kernel)
        var = self.schedule.sigma(self.ladder()) ** 2
        if not bool((var > 0).all()):
            raise ec.InputError("every level needs sigma(t) > 0; raise t_min")
        return float(self.step_size) * (var / var[-1]) ** step_size_exponent(kernel)

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
    ) -> SampleResult:
        """Run the kernel down the ladder.

        Parameters
        ----------
        energy : ec.Energy
            Time-dependent energy whose ``t`` follows ``schedule`` (score-only models work with ULA).
        x0 : Tensor, optional
            Starting points ``(B, *event)``, used as given. When omitted, ``x ~ N(0, I)`` of
            ``shape`` is drawn from ``generator`` (the VP prior; device: the generator's).
        generator : torch.Generator, optional
            Source of all randomness (same seed → identical samples).
        shape, device, dtype
            For the drawn start when ``x0`` is omitted.
        progress : bool
            tqdm bar over levels.
        callback : callable, optional
            ``callback(i, state, info)`` at the end of level ``i``: a
            :class:`~samplers.ladder.LadderState` (``state.x``, ``state.t``) and a
            :class:`~samplers.ladder.LevelInfo`.
        trace_every : int
            Keep ``x`` at the end of every ``trace_every``-th level (``info["trace"]``
            ``(T, B, *event)``, ``info["trace_t"]``).
        on_divergence : {"warn", "raise", "ignore"}
            What to do when the run diverged or looks wrong: ``info.warnings`` lists it in every
            case (see :func:`samplers.health.finish`).

        Returns
        -------
        SampleResult
            ``samples`` ``(B, *event)`` at the last level ``t_L``; ``info``: ``"nfe"``,
            ``"n_steps"`` (transitions), ``"ts"`` ``(L,)``, ``"step_size"`` ``(L,)`` (used per
            level), ``"acceptance"`` ``(L,)`` mean acceptance per level, ``"acceptance_per_chain"``
            ``(B,)``, ``"divergences"``, and ``"log_weights"`` ``(B,)`` for Metropolis kernels.

        Raises
        ------
        ec.ScoreOnlyError
            Metropolis kernel with a score-only energy (use ULA).
        NonFiniteStateError
            The state became NaN/inf; names the level.
        """
        check_positive_int(trace_every, "trace_every", allow_zero=True)
        health.check_on_divergence(on_divergence)
        check_time_dependent(energy, "AnnealedLangevin", self.static_ok)
        kernel = default_kernel(self.kernel)
        if kernel.needs_energy:
            require_energy(energy, type(kernel).__name__ + " in AnnealedLangevin")
        x = prior_sample(x0, shape, generator, device, dtype, "AnnealedLangevin")
        ts = self.ladder().tolist()
        rule = self.step_sizes().tolist()
        energy.check_input(x, ts[0])
        adapt = DualAveraging(kernel.target_accept) if self.adapt else None
        metropolis = kernel.needs_energy
        log_w = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype) if metropolis else None

        def move(i: int, ls: LadderState):
            previous, w = ls.kernel_state, ls.log_weights
            state, nfe = level_state(kernel, energy, ls.x, ts[i], previous=previous)
            if metropolis and previous is not None:
                w = w - (state.energy - previous.energy)  # AIS increment at the same x
            if self.adapt and previous is not None:  # carry the adapted step size, scaled by the rule
                h = ls.step_size * (rule[i] / rule[i - 1])
            else:
                h = rule[i]
            state, k_out, rec = correct(kernel.with_step_size(h), energy, state, self.n_steps_per_level, generator, adapt)
            out = LadderState(x=state.x, t=ts[i], level=i, kernel_state=state, step_size=k_out.step_size, log_weights=w)
            return out, level_info(ts[i], nfe, rec, h)

        final, infos, trace, trace_t = run_ladder(
            "AnnealedLangevin", len(ts), LadderState(x=x, t=ts[0], level=0, log_weights=log_w), move,
            progress=progress, callback=callback, trace_every=trace_every, hint=_NONFINITE_HINT,
        )
        info = summarise(ts, infos, sum(i.n_transitions for i in infos), trace, trace_t,
                         corrected=[True] * len(ts), log_weights=final.log_weights)
        return health.finish(SampleResult(samples=final.x, info=info, state=final.kernel_state), x,
                             sampler="AnnealedLangevin", on_divergence=on_divergence, metropolis=metropolis,
                             adapted=self.adapt)
