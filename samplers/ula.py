"""Unadjusted Langevin algorithm (Euler–Maruyama discretisation of the Langevin diffusion).

``x' = x - h ∇E(x) + sqrt(2h) ξ`` with no Metropolis correction: needs only the gradient (works
with score-only models) and is biased for any ``h > 0``. For ``N(0, s²)`` the chain is an AR(1)
process with stationary variance ``2h / (1 - (1 - h/s²)²) = s² / (1 - h/(2 s²))``.

Step-size rule when ``step_size`` is ``None``: dual averaging on a *MALA-equivalent acceptance
proxy* computed from gradients only, ``min(1, exp(log r̃))`` with the energy difference replaced by
the trapezoid rule ``E(x') - E(x) ≈ ½ (∇E(x) + ∇E(x'))·(x' - x)`` (exact for quadratic energies),
targeting ``target_accept = 0.99`` — far above MALA's 0.57 because ULA's bias grows with ``h``:
on an isotropic Gaussian ``N(0, s² I)`` the proxy is 0.99 at ``h ≈ 0.13 s²`` in 1-D, ``0.1 s²`` in
2-D, ``0.03 s²`` in 10-D, i.e. a variance inflation ``1/(1 - h/(2s²))`` of at most ~7 %,
shrinking with dimension. While adapting, ``info.acceptance`` reports the proxy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

import ebmcompose as ec

from .base import (
    MCMCKernel,
    State,
    StepInfo,
    compiled,
    compiled_transition,
    evaluate,
    finite_rows,
    per_chain,
    randn_like,
    split_compiled,
    surely_finite,
)
from .mala import _sum_event, langevin_proposal

__all__ = ["ULA", "ula_acceptance_proxy"]


def ula_acceptance_proxy(x, grad, x_new, grad_new, noise, step_size) -> Tensor:
    """``(B,)`` MALA acceptance with ``E(x') - E(x)`` replaced by the trapezoid rule on gradients (exact for Gaussians)."""
    d_energy = 0.5 * _sum_event((grad + grad_new) * (x_new - x))
    log_q_fwd = -0.5 * _sum_event(noise.square())
    log_q_bwd = -_sum_event((x - x_new + step_size * grad_new).square()) / (4.0 * step_size)
    log_ratio = -d_energy + log_q_bwd - log_q_fwd
    return torch.nan_to_num(log_ratio.clamp(max=0.0).exp(), nan=0.0)


def _ula_update(x, grad, x_new, grad_new):
    """Take the proposal where its gradient is finite, keep the chain elsewhere; ``(x, grad, ok)``.

    ``ok`` is the ``(B,)`` bool mask of chains that moved, or ``None`` when every chain did
    (decided by :func:`surely_finite`: eager CPU only, without per-row work).
    """
    if surely_finite(grad_new):
        return x_new, grad_new, None
    ok = finite_rows(grad_new)
    ok_x = per_chain(ok, x)
    return torch.where(ok_x, x_new, x), torch.where(ok_x, grad_new, grad), ok


def _ula_move(energy, x, g, t, noise, step_size):
    """The proposal and its gradient: ``(x_new, g_new, nfe)``."""
    x_new = langevin_proposal(x, g, step_size, noise)
    _, g_new, nfe = evaluate(energy, x_new, t, False)
    return x_new, g_new, nfe


def _ula_transition(energy, x, g, t, noise, step_size, proxy: bool):
    """A whole ULA transition given its noise (compiled as one graph with ``compile=True``)."""
    x_new, g_new, nfe = _ula_move(energy, x, g, t, noise, step_size)
    x_out, g_out, ok = _ula_update(x, g, x_new, g_new)  # ok is a tensor while compiling
    acceptance = ok.to(x.dtype)
    if proxy:
        acceptance = torch.where(ok, ula_acceptance_proxy(x, g, x_new, g_new, noise, step_size), acceptance)
    return x_out, g_out, ok, acceptance, ~ok, nfe  # ~ok in the graph: one launch less per step on a GPU


@dataclass(frozen=True)
class ULA(MCMCKernel):
    """Unadjusted Langevin kernel ``x' = x - h ∇E(x) + sqrt(2h) ξ`` (Roberts & Tweedie 1996, eq. 1.2).

    Parameters
    ----------
    step_size : float, 0-d Tensor or None
        ``h``. ``None``: dual averaging on the gradient-only acceptance proxy (module docstring)
        during warm-up, towards ``target_accept``.
    n_steps : int
        Transitions after warm-up.
    target_accept : float
        Target of the acceptance proxy when adapting (default 0.99, see the module docstring).
    n_warmup : int or None
        Default ``max(100, n_steps // 2)`` when adapting, else 0.
    compile : bool
        ``torch.compile`` the whole transition (energy evaluation included) when the energy can
        be captured in one graph, else the update math only (see :class:`samplers.mala.MALA`).

    Notes
    -----
    Needs only gradients (``State.energy`` is ``None``): works with :class:`ec.ScoreFunction`.
    A proposal with a non-finite gradient is not taken (``info.divergent``; ``acceptance`` is 1
    otherwise, 0 there). 1 NFE per step. ``run`` as in :class:`samplers.base.MCMCKernel`.
    """

    step_size: Optional[Union[float, Tensor]] = None
    n_steps: int = 100
    target_accept: float = 0.99
    n_warmup: Optional[int] = None
    compile: bool = False

    needs_energy = False

    def __post_init__(self):
        self._check_config()

    def _step(self, state, energy, step_size, generator, proxy: bool):
        x = state.x
        out = None
        if self.compile:
            if not isinstance(step_size, Tensor):
                step_size = torch.tensor(step_size, device=x.device, dtype=x.dtype)
            noise = randn_like(x, generator)
            if not split_compiled(x):
                out = compiled_transition(_ula_transition)(energy, x, state.grad, state.t, noise, step_size, proxy)
            if out is None:  # large x (see split_compiled), or the whole transition not capturable
                moved = compiled_transition(_ula_move)(energy, x, state.grad, state.t, noise, step_size)
                if moved is None:  # energy not capturable in a graph: compile the update math only
                    x_new = compiled(langevin_proposal)(x, state.grad, step_size, noise)
                    _, g_new, nfe = evaluate(energy, x_new, state.t, False)
                else:
                    x_new, g_new, nfe = moved
                x_out, g_out, ok = compiled(_ula_update)(x, state.grad, x_new, g_new)
        else:
            noise = randn_like(x, generator)
            x_new, g_new, nfe = _ula_move(energy, x, state.grad, state.t, noise, step_size)
            x_out, g_out, ok = _ula_update(x, state.grad, x_new, g_new)
        if out is not None:
            x_out, g_out, ok, acceptance, divergent, nfe = out
        elif ok is None and not proxy:  # every chain moved: no per-chain tensors to make
            return state.replace(x=x_out, energy=None, grad=g_out), StepInfo.every_chain_accepted(x, nfe), None
        else:
            if ok is None:
                ok = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
            acceptance = ok.to(x.dtype)
            if proxy:  # report the proxy as the acceptance while adapting
                acceptance = torch.where(ok, ula_acceptance_proxy(x, state.grad, x_new, g_new, noise, step_size), acceptance)
            divergent = ~ok
        stat = acceptance.mean() if proxy else None
        info = StepInfo(acceptance=acceptance, accepted=ok, divergent=divergent, energy_error=None, nfe=nfe)
        return state.replace(x=x_out, energy=None, grad=g_out), info, stat

    def step(
        self, state: State, energy: ec.Energy, step_size, generator: Optional[torch.Generator]
    ) -> Tuple[State, StepInfo]:
        """One ULA transition from ``state`` (``x`` ``(B, *event)``)."""
        s, info, _ = self._step(state, energy, step_size, generator, False)
        return s, info

    # the loop's transition is the step itself (the acceptance proxy is reported while adapting)
    _transition = _step
