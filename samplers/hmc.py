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

import math
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

import ebmcompose as ec

from .base import (
    MCMCKernel,
    State,
    _PLAIN_STATE_TYPES,
    StepInfo,
    compiled,
    compiled_transition,
    evaluate,
    init_state,
    per_chain,
    randn_like,
    split_compiled,
    uniform,
)
from .mala import _sum_event, metropolis_accept

__all__ = ["HMC", "HMCState", "leapfrog", "kinetic_energy"]


@dataclass(frozen=True)
class HMCState(State):
    """:class:`State` plus the momentum ``(B, *event)`` carried to the next step.

    Only partial refresh (``refresh < 1``) carries a momentum over; with a full refresh it is
    ``None`` (the next step draws a fresh one), as it is before the first step.
    """

    momentum: Optional[Tensor] = None


_PLAIN_STATE_TYPES.add(HMCState)


def kinetic_energy(momentum: Tensor, inv_mass=1.0) -> Tensor:
    """``(B,)`` kinetic energy ``½ pᵀ M⁻¹ p`` for a diagonal ``M`` (``inv_mass`` scalar or like the event)."""
    sq = momentum.square()
    if not (isinstance(inv_mass, float) and inv_mass == 1.0):
        sq = sq * inv_mass
    return 0.5 * _sum_event(sq)


def leapfrog(
    energy: ec.Energy,
    x: Tensor,
    momentum: Tensor,
    grad: Tensor,
    t: Optional[Tensor],
    step_size,
    n_leapfrog: int,
    inv_mass=1.0,
):
    """Leapfrog (Störmer–Verlet) integration of Hamilton's equations, half momentum steps at both ends.

    Parameters
    ----------
    energy : Energy
        Potential ``E``.
    x, momentum, grad : Tensor
        ``(B, *event)`` start position, momentum and ``∇E(x)``.
    t : Tensor or None
        Diffusion time (fixed).
    step_size : float or 0-d Tensor
        ``h``.
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
    half = 0.5 * step_size
    drift = step_size * inv_mass  # h M⁻¹ (scalar or like the event), computed once
    nfe = 0
    e = None
    if isinstance(step_size, float) and isinstance(drift, float):
        # Python-number step: fused ``a + alpha * b`` updates (one op each instead of two)
        p = torch.add(momentum, grad, alpha=-half)
        for i in range(n_leapfrog):
            x = torch.add(x, p, alpha=drift)
            last = i == n_leapfrog - 1
            e, grad, n = evaluate(energy, x, t, last)
            nfe += n
            p = torch.add(p, grad, alpha=-(half if last else step_size))
        return x, p, e, grad, nfe
    p = momentum - half * grad
    for i in range(n_leapfrog):
        x = x + drift * p
        last = i == n_leapfrog - 1
        e, grad, n = evaluate(energy, x, t, last)
        nfe += n
        p = p - (half if last else step_size) * grad
    return x, p, e, grad, nfe


def _refresh(momentum: Tensor, noise: Tensor, sqrt_mass, refresh: float) -> Tensor:
    """Partial refresh ``sqrt(1 - ρ²) p + ρ M^{1/2} ξ``."""
    return math.sqrt(1.0 - refresh * refresh) * momentum + refresh * (sqrt_mass * noise)


def _hamiltonian_change(energy, energy_new, p0, p_new, inv_mass) -> Tensor:
    """``(B,)`` ``ΔH = E(x') - E(x) + ½ Σ M⁻¹ (p'² - p0²)`` (one reduction for both kinetic energies)."""
    if isinstance(inv_mass, float):
        # fused in-place ops on fresh temporaries (5 ops instead of 9 for the two kinetic energies)
        dk = torch.mul(p_new, p_new).addcmul_(p0, p0, value=-1.0)
        return torch.sub(energy_new, energy).add_(_sum_event(dk), alpha=0.5 * inv_mass)
    return energy_new - energy + 0.5 * _sum_event((p_new.square() - p0.square()) * inv_mass)


def _hmc_correct(x, energy, grad, p0, x_new, energy_new, grad_new, p_new, inv_mass, u, keep_momentum: bool = True):
    """Per-chain Metropolis test on ``ΔH``; rejected chains keep ``x`` and negate the momentum.

    ``keep_momentum=False`` (full refresh: the next step draws a fresh momentum) returns ``None``
    for the momentum instead of selecting it.
    """
    delta = _hamiltonian_change(energy, energy_new, p0, p_new, inv_mass)
    # non-finite energy/gradient anywhere on the trajectory ends in delta: rejected, divergent
    acceptance, accepted, divergent, log_ratio = metropolis_accept(delta.neg_(), u)
    acc_x = per_chain(accepted, x)
    return (
        torch.where(acc_x, x_new, x),
        torch.where(accepted, energy_new, energy),
        torch.where(acc_x, grad_new, grad),
        torch.where(acc_x, p_new, -p0) if keep_momentum else None,
        acceptance,
        accepted,
        divergent,
        log_ratio.neg_(),
    )


def _hmc_transition(energy, x, e, g, t, p0, u, step_size, n_leapfrog: int, inv_mass, keep_momentum: bool = True):
    """A whole HMC transition given the starting momentum and ``u`` (one graph with ``compile=True``)."""
    x_new, p_new, e_new, g_new, nfe = leapfrog(energy, x, p0, g, t, step_size, n_leapfrog, inv_mass)
    return _hmc_correct(x, e, g, p0, x_new, e_new, g_new, p_new, inv_mass, u, keep_momentum) + (nfe,)


@dataclass(frozen=True)
class HMC(MCMCKernel):
    """Hamiltonian Monte Carlo kernel with leapfrog, diagonal mass and optional partial momentum refresh.

    Parameters
    ----------
    step_size : float, 0-d Tensor or None
        Leapfrog step ``h``; ``None``: dual averaging towards ``target_accept`` during warm-up.
    n_leapfrog : int
        Leapfrog steps per transition (NFE per step).
    n_steps : int
        Transitions after warm-up.
    mass : float or Tensor
        Diagonal mass ``M``: a scalar or a tensor shaped like the event (e.g. ``(2,)`` or
        ``(C, H, W)``); moved to the chains' device/dtype.
    refresh : float
        ``ρ`` in ``(0, 1]``: momentum refresh ``p ← sqrt(1 - ρ²) p + ρ M^{1/2} ξ``; 1 = full
        resample (standard HMC), < 1 = partial refresh (generalised HMC, momentum persists in
        :class:`HMCState` and is negated on rejection).
    target_accept : float
        Adaptation target (0.65, Beskos et al. 2013).
    n_warmup : int or None
        Default ``max(100, n_steps // 2)`` when adapting, else 0.
    compile : bool
        ``torch.compile`` the whole transition (leapfrog with its energy evaluations, Metropolis
        test) when the energy can be captured in one graph, else the refresh and Metropolis math
        only (see :class:`samplers.mala.MALA`).

    Notes
    -----
    ``init`` returns an :class:`HMCState` (momentum ``None`` until the first step, and always
    with ``refresh=1``, which never reuses it); ``step`` accepts any :class:`State` (a plain one
    starts with a fresh momentum). ``run`` as in
    :class:`samplers.base.MCMCKernel`.
    """

    step_size: Optional[Union[float, Tensor]] = None
    n_leapfrog: int = 10
    n_steps: int = 100
    mass: Union[float, Tensor] = 1.0
    refresh: float = 1.0
    target_accept: float = 0.65
    n_warmup: Optional[int] = None
    compile: bool = False

    needs_energy = True
    step_size_exponent = 0.5  # the leapfrog step is a length: scales like σ, not σ²

    def __post_init__(self):
        self._check_config()
        if isinstance(self.n_leapfrog, bool) or not isinstance(self.n_leapfrog, int) or self.n_leapfrog < 1:
            raise ValueError(f"n_leapfrog must be an integer >= 1, got {self.n_leapfrog!r}")
        if not (isinstance(self.refresh, (int, float)) and 0.0 < self.refresh <= 1.0):
            raise ValueError(f"refresh must be in (0, 1] (1 = full momentum resample), got {self.refresh!r}")
        m = self.mass
        ok = bool((m > 0).all() and torch.isfinite(m).all()) if isinstance(m, Tensor) else (
            isinstance(m, (int, float)) and 0 < m < float("inf")
        )
        if not ok:
            raise ValueError(f"mass must be positive and finite (scalar or shaped like the event), got {m!r}")

    def _init(self, energy, x, t=None):
        state, nfe = init_state(energy, x, t, True, "HMC")
        return HMCState(x=state.x, energy=state.energy, grad=state.grad, t=state.t), nfe

    def _mass(self, x: Tensor):
        m = self.mass
        if isinstance(m, Tensor):
            m = m.to(device=x.device, dtype=x.dtype)
            if m.dim() > 0 and tuple(m.shape) != tuple(x.shape[1:]):
                raise ValueError(f"mass of shape {tuple(m.shape)} does not match the event shape {tuple(x.shape[1:])}")
            return 1.0 / m, m.sqrt()
        return 1.0 / m, math.sqrt(m)

    def step(
        self, state: State, energy: ec.Energy, step_size, generator: Optional[torch.Generator]
    ) -> Tuple[State, StepInfo]:
        """One HMC transition from ``state`` (``x`` ``(B, *event)``); ``n_leapfrog`` NFE."""
        if state.energy is None:
            raise ValueError("HMC.step needs a state with energies: create it with HMC().init(energy, x, t)")
        x = state.x
        inv_mass, sqrt_mass = self._mass(x)
        refresh = compiled(_refresh) if self.compile else _refresh
        if self.compile and not isinstance(step_size, Tensor):
            step_size = torch.tensor(step_size, device=x.device, dtype=x.dtype)
        noise = randn_like(x, generator)
        p_old = getattr(state, "momentum", None)
        if p_old is None or self.refresh == 1.0:
            p0 = noise if isinstance(sqrt_mass, float) and sqrt_mass == 1.0 else sqrt_mass * noise
        else:
            p0 = refresh(p_old, noise, sqrt_mass, float(self.refresh))
        # with a full refresh the next step draws a fresh momentum: nothing to carry over
        keep = self.refresh != 1.0
        out = moved = None
        if self.compile:
            # u before the trajectory: the same stream as the eager path (the energy never
            # touches the generator)
            u = uniform(x.shape[:1], x, generator)
            if not split_compiled(x):
                out = compiled_transition(_hmc_transition)(
                    energy, x, state.energy, state.grad, state.t, p0, u, step_size, self.n_leapfrog, inv_mass, keep
                )
            else:  # large x: trajectory and Metropolis test as two graphs (see split_compiled)
                moved = compiled_transition(leapfrog)(energy, x, p0, state.grad, state.t, step_size, self.n_leapfrog, inv_mass)
        if out is None:
            if moved is None:
                moved = leapfrog(energy, x, p0, state.grad, state.t, step_size, self.n_leapfrog, inv_mass)
            x_new, p_new, e_new, g_new, nfe = moved
            if not self.compile:
                u = uniform(x.shape[:1], x, generator)
            correct = compiled(_hmc_correct) if self.compile else _hmc_correct
            out = correct(x, state.energy, state.grad, p0, x_new, e_new, g_new, p_new, inv_mass, u, keep) + (nfe,)
        x, e, g, p, acceptance, accepted, divergent, delta, nfe = out
        new = HMCState(x=x, energy=e, grad=g, t=state.t, momentum=p)
        return new, StepInfo(acceptance=acceptance, accepted=accepted, divergent=divergent, energy_error=delta, nfe=nfe)
