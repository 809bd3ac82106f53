"""Hamiltonian Monte Carlo with a leapfrog integrator (Duane et al. 1987; Neal 2011).

Hamiltonian ``H(x, p) = E(x) + ½ pᵀ M⁻¹ p`` with a diagonal mass ``M`` (scalar or per event
entry). One transition:

1. momentum refresh ``p ← sqrt(1 - ρ²) p + ρ M^{1/2} ξ`` (``ρ = refresh``; ``ρ = 1`` is the usual
   full resample, ``ρ < 1`` is Horowitz's generalised / partial-refresh HMC, which keeps ``N(0, M)``
   invariant because ``(1 - ρ²) + ρ² = 1``);
2. ``n_leapfrog`` leapfrog steps ``p ← p - h/2 ∇E; x ← x + h M⁻¹ p; p ← p - h/2 ∇E``;
3. accept ``(x', p')`` with probability ``min(1, exp(-ΔH))``, per chain; on rejection keep ``x``
   and **negate** the momentum (``p ← -p``), which makes the partial-refresh chain reversible
   (Horowitz 1991; Neal 2011, sec. 5.3). With ``ρ = 1`` the negation is immaterial.

Costs ``n_leapfrog`` energy+gradient evaluations per step.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

import ebmcompose as ec

from .base import MCMCKernel, State, StepInfo, as_step_size, evaluate, noise_draw, normal_noise, per_chain, sum_event, uniform
from .mala import metropolis_accept
from .record import reduced

__all__ = ["HMC", "HMCState", "HMCInfo", "leapfrog", "kinetic_energy"]


@dataclass(frozen=True)
class HMCState(State):
    """:class:`State` plus the momentum ``(B, *event)`` carried to the next step.

    Only partial refresh (``refresh < 1``) carries a momentum over; with a full refresh it is
    ``None`` (the next step draws a fresh one), as it is before the first step.
    """

    momentum: Optional[Tensor] = None


@dataclass(frozen=True)
class HMCInfo(StepInfo):
    """:class:`~samplers.base.StepInfo` plus ``energy_error`` ``(B,)``: the change of the
    Hamiltonian ``ΔH`` along the trajectory (0 where it diverged)."""

    energy_error: Tensor = None


def kinetic_energy(momentum: Tensor, inv_mass=1.0) -> Tensor:
    """``(B,)`` kinetic energy ``½ pᵀ M⁻¹ p`` for a diagonal ``M`` (``inv_mass`` scalar or like the event)."""
    return 0.5 * sum_event(momentum.square() * inv_mass)


def leapfrog(energy: ec.Energy, x: Tensor, momentum: Tensor, grad: Tensor, t: Optional[Tensor], step_size,
             n_leapfrog: int, inv_mass=1.0):
    """Leapfrog (Störmer–Verlet) integration of Hamilton's equations, half momentum steps at both ends.

    Parameters
    ----------
    energy : Energy
        Potential ``E``.
    x, momentum, grad : Tensor
        ``(B, *event)`` start position, momentum and ``∇E(x)``.
    t : Tensor or None
        Diffusion time (fixed).
    step_size : Tensor or float
        ``h``: 0-d, or per chain ``(B, 1, ...)`` (jittered steps).
    n_leapfrog : int
        Number of steps ``L``.
    inv_mass : float or Tensor
        Diagonal ``M⁻¹`` (scalar or like the event).

    Returns
    -------
    x, momentum : Tensor
        End point ``(B, *event)``.
    energy, grad : Tensor
        ``E`` ``(B,)`` and ``∇E`` at the end point.
    nfe : int
        ``L`` evaluations (the energy value only at the end).
    """
    step_size = as_step_size(step_size, x)
    drift, half = step_size * inv_mass, 0.5 * step_size  # h M⁻¹ and h/2, computed once
    p = torch.addcmul(momentum, grad, half, value=-1.0)
    nfe, e = 0, None
    for i in range(n_leapfrog):
        x = torch.addcmul(x, p, drift)
        last = i == n_leapfrog - 1
        e, grad, n = evaluate(energy, x, t, last)
        nfe += n
        p = torch.addcmul(p, grad, half if last else step_size, value=-1.0)
    return x, p, e, grad, nfe


def hmc_transition(energy, x, e, g, t, p0, u, step_size, n_leapfrog: int, inv_mass, keep_momentum: bool):
    """A whole HMC transition from momentum ``p0`` with Metropolis draw ``u`` ``(B,)``.

    Rejected chains keep ``x`` and negate the momentum; ``keep_momentum=False`` (full refresh)
    returns ``None`` for it. Returns ``(x, energy, grad, momentum, acceptance, accepted,
    divergent, ΔH, nfe)``.
    """
    x_new, p_new, e_new, g_new, nfe = leapfrog(energy, x, p0, g, t, step_size, n_leapfrog, inv_mass)
    dk = torch.mul(p_new, p_new).addcmul_(p0, p0, value=-1.0).mul_(inv_mass)  # one reduction for both kinetic energies
    delta = torch.sub(e_new, e).add_(sum_event(dk), alpha=0.5)
    # a non-finite energy or gradient anywhere on the trajectory ends in delta: rejected, divergent
    acceptance, accepted, divergent, log_ratio = metropolis_accept(-delta, u)
    acc_x = per_chain(accepted, x)
    p_out = torch.where(acc_x, p_new, -p0) if keep_momentum else None
    return (torch.where(acc_x, x_new, x), torch.where(accepted, e_new, e), torch.where(acc_x, g_new, g), p_out,
            acceptance, accepted, divergent, -log_ratio, nfe)


def hmc_body(energy, carry, draws, consts):
    """One HMC transition with its momentum refresh and step jitter (``samplers.compile.scan``).

    ``carry = (x, E, ∇E)``, with a partial refresh ``(x, E, ∇E, p, fresh)`` (``p`` the carried
    momentum, ``fresh`` a 0-d bool: no momentum yet, draw a full one); ``draws = (ξ's draw, u[, v])``
    (``samplers.tensors.noise_draw``; ``v`` ``(B,)`` uniforms of the step jitter); ``consts = (t, h, M⁻¹, M^{1/2}, L, ρ, j)``; outputs
    ``(acceptance, accepted, divergent, ΔH, nfe)``.
    """
    x, e, g = carry[:3]
    t, h, inv_mass, sqrt_mass, n_leapfrog, refresh, jitter = consts
    noise, u = normal_noise(draws[0], x), draws[1]
    p0 = sqrt_mass * noise
    if refresh != 1.0:  # partial refresh keeps N(0, M): (1 - ρ²) + ρ² = 1
        p_old, fresh = carry[3:]
        p0 = torch.where(fresh, p0, math.sqrt(1.0 - refresh ** 2) * p_old + refresh * p0)
    if jitter:  # per chain: h·U(1 - j, 1 + j), shaped (B, 1, ...)
        h = per_chain(h * draws[2].mul(2.0 * jitter).add_(1.0 - jitter), x)
    x, e, g, p, acceptance, accepted, divergent, delta, nfe = hmc_transition(
        energy, x, e, g, t, p0, u, h, n_leapfrog, inv_mass, refresh != 1.0)
    carry = (x, e, g) if refresh == 1.0 else (x, e, g, p, torch.zeros_like(fresh))
    return carry, (acceptance, accepted, divergent, delta, nfe)


@dataclass(frozen=True)
class HMC(MCMCKernel):
    """Hamiltonian Monte Carlo kernel with leapfrog, diagonal mass and optional partial momentum refresh.

    Parameters
    ----------
    step_size : float, 0-d Tensor or None
        Leapfrog step ``h``; ``None``: ``sample`` adapts it by dual averaging towards ``target_accept``.
    n_leapfrog : int
        Leapfrog steps per transition (NFE per step).
    n_steps : int
        Transitions ``sample`` keeps after warm-up.
    mass : float or Tensor
        Diagonal mass ``M``: a scalar or a tensor shaped like the event (e.g. ``(2,)`` or
        ``(C, H, W)``); moved to the chains' device/dtype.
    refresh : float
        ``ρ`` in ``(0, 1]``: momentum refresh ``p ← sqrt(1 - ρ²) p + ρ M^{1/2} ξ``; 1 = full
        resample (standard HMC), < 1 = partial refresh (generalised HMC, momentum persists in
        :class:`HMCState` and is negated on rejection).
    adapt_mass : bool
        Adapt a diagonal mass during warm-up (``samplers.mass_adaptation``: in Stan's windows,
        ``M⁻¹`` = the variance of the window's draws pooled over chains, then the step size afresh).
        Needs ``step_size=None`` (the step size is adapted with it) and ``n_warmup`` >= 20; the
        adapted kernel is ``res.info.kernel``.
    jitter : float
        ``j`` in ``[0, 1)``: each chain's leapfrog step is drawn afresh every transition, uniform in
        ``h·[1 - j, 1 + j]`` (Neal 2011, sec. 5.4.2), so the trajectory length varies and no direction
        of the target keeps returning to where it started (fixed-``L`` resonance). 0 turns it off.
    target_accept : float
        Adaptation target (0.65, Beskos et al. 2013).
    n_warmup : int or None
        Default ``max(100, n_steps // 2)`` when adapting, else 0.
    compile : bool
        One ``torch.compile`` graph per transition (leapfrog and Metropolis test) when the energy
        can be traced (``samplers.compile``).

    Notes
    -----
    ``init`` returns an :class:`HMCState`; ``step`` accepts any :class:`State` (a plain one
    starts with a fresh momentum).
    """

    step_size: Optional[Union[float, Tensor]] = None
    n_leapfrog: int = 10
    n_steps: int = 100
    mass: Union[float, Tensor] = 1.0
    refresh: float = 1.0
    jitter: float = 0.2
    adapt_mass: bool = False
    target_accept: float = 0.65
    n_warmup: Optional[int] = None
    compile: bool = False

    step_size_exponent = 0.5  # the leapfrog step is a length: scales like σ, not σ²
    state_type = HMCState

    def __post_init__(self):
        self._check_config()
        if isinstance(self.n_leapfrog, bool) or not isinstance(self.n_leapfrog, int) or self.n_leapfrog < 1:
            raise ec.InputError(f"n_leapfrog must be an integer >= 1, got {self.n_leapfrog!r}")
        if not (isinstance(self.refresh, (int, float)) and 0.0 < self.refresh <= 1.0):
            raise ec.InputError(f"refresh must be in (0, 1] (1 = full momentum resample), got {self.refresh!r}")
        if self.adapt_mass and self.n_warmup is not None and self.n_warmup < 20:
            raise ec.InputError(f"adapt_mass=True needs n_warmup >= 20 warm-up steps (got {self.n_warmup})")
        if isinstance(self.jitter, bool) or not (isinstance(self.jitter, (int, float)) and 0.0 <= self.jitter < 1.0):
            raise ec.InputError(f"jitter must be in [0, 1) (0 = a fixed step size), got {self.jitter!r}")
        m = self.mass
        ok = bool((m > 0).all() and torch.isfinite(m).all()) if isinstance(m, Tensor) else (
            isinstance(m, (int, float)) and 0 < m < float("inf")
        )
        if not ok:
            raise ec.InputError(f"mass must be positive and finite (scalar or shaped like the event), got {m!r}")

    def with_mass(self, mass: Tensor) -> "HMC":
        """The same kernel with diagonal mass ``mass`` (shaped like the event), no longer adapting it."""
        return dataclasses.replace(self, mass=mass, adapt_mass=False)

    def _mass(self, x: Tensor):
        """``(M⁻¹, M^{1/2})`` as floats or tensors on ``x``'s device, shaped like the event."""
        m = self.mass
        if isinstance(m, Tensor):
            m = m.to(device=x.device, dtype=x.dtype)
            if m.dim() > 0 and tuple(m.shape) != tuple(x.shape[1:]):
                raise ec.InputError(f"mass of shape {tuple(m.shape)} does not match the event shape {tuple(x.shape[1:])}")
            return 1.0 / m, m.sqrt()
        return 1.0 / m, math.sqrt(m)

    # one transition (``step``, inherited) and many per compiled call (``steps``): the same body
    body = hmc_body
    scan_body = reduced(hmc_body)
    uniform_draws = True  # _draws: noise_draw and uniform only

    def _draws(self, x, generator, out=(None, None, None)):
        noise, u = noise_draw(x, generator, out[0]), uniform(x, generator, out[1])
        return (noise, u, uniform(x, generator, out[2])) if self.jitter else (noise, u)

    def _carry(self, state):
        if self.refresh == 1.0:  # no momentum carried over
            return state.x, state.energy, state.grad
        p = getattr(state, "momentum", None)
        fresh = torch.full((), p is None, dtype=torch.bool, device=state.x.device)
        return state.x, state.energy, state.grad, torch.zeros_like(state.x) if p is None else p, fresh

    def _consts(self, state, h):
        inv_mass, sqrt_mass = self._mass(state.x)
        return state.t, h, inv_mass, sqrt_mass, self.n_leapfrog, float(self.refresh), float(self.jitter)

    def _state(self, state, carry):
        x, e, g = carry[:3]
        return HMCState(x=x, energy=e, grad=g, t=state.t, momentum=None if self.refresh == 1.0 else carry[3])

    def _info(self, outs):
        acceptance, accepted, divergent, delta, nfe = outs
        return HMCInfo(acceptance=acceptance, accepted=accepted, divergent=divergent, nfe=nfe, energy_error=delta)
