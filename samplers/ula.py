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
shrinking with dimension. While adapting, ``info.proxy_acceptance`` holds the proxy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

import ebmcompose as ec

from . import compile as _compile
from .base import MCMCKernel, all_finite, finite_per_chain, State, StepInfo, evaluate, noise_draw, normal_noise, per_chain, sum_event
from .mala import langevin_proposal
from .record import reduced

__all__ = ["ULA", "ULAInfo", "ula_acceptance_proxy", "ula_transition", "ula_body"]


@dataclass(frozen=True)
class ULAInfo(StepInfo):
    """:class:`~samplers.base.StepInfo` of an unadjusted step: ``acceptance`` is 1 where the chain
    moved and 0 where the proposal's gradient was not finite (``divergent``; the chain stays).

    ``proxy_acceptance`` ``(B,)``: the gradient-only MALA acceptance proxy (module docstring),
    computed only by a kernel with ``proxy=True`` (step-size adaptation), else ``None``.
    """

    proxy_acceptance: Optional[Tensor] = None


def ula_acceptance_proxy(x, grad, x_new, grad_new, noise, step_size) -> Tensor:
    """``(B,)`` MALA acceptance with ``E(x') - E(x)`` replaced by the trapezoid rule on gradients (exact for Gaussians)."""
    d_energy = 0.5 * sum_event((grad + grad_new) * (x_new - x))
    log_q_fwd = -0.5 * sum_event(noise.square())
    log_q_bwd = -sum_event((x - x_new + step_size * grad_new).square()) / (4.0 * step_size)
    log_ratio = -d_energy + log_q_bwd - log_q_fwd
    return torch.nan_to_num(log_ratio.clamp(max=0.0).exp(), nan=0.0)


def ula_transition(energy, x, g, t, noise, step_size, proxy: bool):
    """A whole ULA transition given its noise: ``(x, grad, moved, proxy_acceptance or None, nfe)``.

    A chain whose proposal has a non-finite gradient stays where it is (``moved`` false);
    ``moved`` is ``None`` when every chain moved.
    """
    x_new = langevin_proposal(x, g, step_size, noise)
    _, g_new, nfe = evaluate(energy, x_new, t, False)
    if all_finite(g_new):  # every chain moves: no per-chain check or select (``moved`` None)
        p = ula_acceptance_proxy(x, g, x_new, g_new, noise, step_size) if proxy else None
        return x_new, g_new, None, p, nfe
    moved = finite_per_chain(g_new)
    m = per_chain(moved, x)
    p = ula_acceptance_proxy(x, g, x_new, g_new, noise, step_size) * moved if proxy else None
    return torch.where(m, x_new, x), torch.where(m, g_new, g), moved, p, nfe


def moved_flags(moved: Optional[Tensor], x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """``(acceptance, accepted, divergent)`` ``(B,)`` of a ULA step from :func:`ula_transition`'s ``moved``."""
    if moved is None:  # every chain moved (eagerly): three fills
        b = x.shape[:1]
        return x.new_ones(b), x.new_ones(b, dtype=torch.bool), x.new_zeros(b, dtype=torch.bool)
    return moved.to(x.dtype), moved, ~moved


def ula_transition_from_draw(energy, x, g, t, draw, step_size, proxy: bool):
    """:func:`ula_transition` from its noise's draw (``samplers.tensors.noise_draw``): ``ULA.step``'s graph."""
    return ula_transition(energy, x, g, t, normal_noise(draw, x), step_size, proxy)


def ula_body(energy, carry, draws, consts):
    """:func:`ula_transition` (no proxy) on ``carry = (x, ∇E)``, ``draws = (ξ's draw,)`` (``samplers.tensors.noise_draw``),
    ``consts = (t, h)``; outputs ``(acceptance, accepted, divergent, energy error (0), nfe)`` for
    :func:`~samplers.record.reduced`."""
    x, g = carry
    t, h = consts
    x, g, moved, _, nfe = ula_transition(energy, x, g, t, normal_noise(draws[0], x), h, False)
    acceptance, accepted, divergent = moved_flags(moved, x)
    return (x, g), (acceptance, accepted, divergent, torch.zeros_like(acceptance), nfe)


@dataclass(frozen=True)
class ULA(MCMCKernel):
    """Unadjusted Langevin kernel ``x' = x - h ∇E(x) + sqrt(2h) ξ`` (Roberts & Tweedie 1996, eq. 1.2).

    Parameters
    ----------
    step_size : float, 0-d Tensor or None
        ``h``. ``None``: ``sample`` adapts it by dual averaging on the gradient-only acceptance
        proxy (module docstring) during warm-up, towards ``target_accept``.
    n_steps : int
        Transitions ``sample`` keeps after warm-up.
    target_accept : float
        Target of the acceptance proxy when adapting (default 0.99, see the module docstring).
    n_warmup : int or None
        Default ``max(100, n_steps // 2)`` when adapting, else 0.
    compile : bool
        One ``torch.compile`` graph per transition when the energy can be traced (``samplers.compile``).
    proxy : bool
        Compute ``info.proxy_acceptance`` each step (switched on by adaptation).

    Notes
    -----
    Needs only gradients (``State.energy`` is ``None``): works with :class:`ec.ScoreFunction`. 1 NFE per step.
    """

    step_size: Optional[Union[float, Tensor]] = None
    n_steps: int = 100
    target_accept: float = 0.99
    n_warmup: Optional[int] = None
    compile: bool = False
    proxy: bool = False

    needs_energy = False

    def __post_init__(self):
        self._check_config()

    def for_adaptation(self) -> "ULA":
        return self if self.proxy else dataclasses.replace(self, proxy=True)

    def adaptation_statistic(self, info: ULAInfo) -> Tensor:
        return info.proxy_acceptance.mean()

    # kept transitions of a compiled run, several per graph call (``MCMCKernel.steps``); ``step`` below
    # is the same transition one at a time, with the adaptation's proxy when asked
    scan_body = reduced(ula_body)
    uniform_draws = True  # _draws: noise_draw and uniform only

    def _draws(self, x, generator, out=(None,)):
        return (noise_draw(x, generator, out[0]),)

    def _carry(self, state):
        return state.x, state.grad

    def _consts(self, state, h):
        return state.t, h

    def _state(self, state, carry):
        x, g = carry
        return state.replace(x=x, energy=None, grad=g)

    def step(self, state: State, energy: ec.Energy, generator: Optional[torch.Generator]) -> Tuple[State, ULAInfo]:
        """One ULA transition from ``state`` (``x`` ``(B, *event)``)."""
        x, h = state.x, self._step_size(state.x)
        x, g, moved, proxy, nfe = _compile.call(ula_transition_from_draw, self.compile, energy, x, state.grad, state.t,
                                                noise_draw(x, generator), h, self.proxy)
        acceptance, accepted, divergent = moved_flags(moved, x)
        info = ULAInfo(acceptance=acceptance, accepted=accepted, divergent=divergent, nfe=nfe, proxy_acceptance=proxy)
        return state.replace(x=x, energy=None, grad=g), info
