"""Metropolis-adjusted Langevin algorithm (Roberts & Tweedie 1996).

Proposal (parameterisation used throughout this package): ``x' = x - h ∇E(x) + sqrt(2h) ξ``,
``ξ ~ N(0, I)``, i.e. ``q(x' | x) = N(x'; x - h ∇E(x), 2h I)``. The Metropolis–Hastings ratio
uses *both* drifts::

    log r = E(x) - E(x') + log q(x | x') - log q(x' | x)
    log q(a | b) = -|a - b + h ∇E(b)|² / (4h)        (+ a constant that cancels)

so ``log q(x' | x) = -|ξ|²/2``. One energy+gradient evaluation per step (the proposal's, which
becomes the state's when accepted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

from .base import MCMCKernel, StepInfo, as_step_size, evaluate, noise_draw, normal_noise, per_chain, sum_event, uniform
from .record import reduced

__all__ = ["MALA", "MALAInfo", "langevin_proposal", "mala_log_ratio", "metropolis_accept"]

_NEG_INF = -float("inf")
_SQRT2 = math.sqrt(2.0)


@dataclass(frozen=True)
class MALAInfo(StepInfo):
    """:class:`~samplers.base.StepInfo` plus ``energy_error`` ``(B,)``: the log Metropolis ratio
    (0 where the proposal diverged)."""

    energy_error: Tensor = None


def langevin_proposal(x: Tensor, grad: Tensor, step_size: Tensor, noise: Tensor) -> Tensor:
    """``x - h ∇E(x) + sqrt(2h) ξ`` (Euler–Maruyama step of ``dx = -∇E dt + sqrt(2) dW``); shapes
    ``(B, *event)``, ``step_size`` a 0-d tensor (or a float)."""
    step_size = as_step_size(step_size, x)
    return torch.addcmul(x, grad, step_size, value=-1.0).addcmul_(noise, step_size.sqrt(), value=_SQRT2)  # one 0-d op


def mala_log_ratio(x, energy, x_new, energy_new, grad_new, noise, step_size) -> Tensor:
    """``(B,)`` log MH ratio ``E(x) - E(x') + log q(x|x') - log q(x'|x)`` for ``x' = x - h∇E(x) + sqrt(2h)ξ``.

    With ``d = x - x' + h ∇E(x')``, ``log q(x|x') - log q(x'|x) = ½ Σ (ξ² - d²/(2h))`` over the
    event dimensions (one reduction).
    """
    step_size = as_step_size(step_size, x)
    d = torch.sub(x, x_new).addcmul_(grad_new, step_size)
    q = torch.addcmul(noise.square(), d.square(), step_size.reciprocal(), value=-0.5)  # ξ² - d²/(2h)
    return torch.sub(energy, energy_new).add_(sum_event(q), alpha=0.5)


def metropolis_accept(log_ratio: Tensor, u: Tensor):
    """Per-chain Metropolis decision from a ``(B,)`` log ratio and ``U(0, 1)`` draws ``u``.

    Returns ``(acceptance, accepted, divergent, energy_error)``: ``min(1, exp(log_ratio))``, with
    non-finite ratios (a non-finite energy or gradient of the proposal) given acceptance 0 and
    flagged divergent; the decision ``u < acceptance``; the log ratio with non-finite entries 0.
    """
    safe = torch.nan_to_num(log_ratio, nan=_NEG_INF, posinf=_NEG_INF, neginf=_NEG_INF)
    divergent = safe == _NEG_INF
    acceptance = safe.clamp_(max=0.0).exp_()  # in place on the fresh ``safe``
    return acceptance, u < acceptance, divergent, torch.nan_to_num(log_ratio, nan=0.0, posinf=0.0, neginf=0.0)


def mala_transition(energy, x, e, g, t, noise, u, step_size):
    """A whole MALA transition given its draws ``noise`` (like ``x``) and ``u`` ``(B,)``.

    Returns ``(x, energy, grad, acceptance, accepted, divergent, log_ratio, nfe)``.
    """
    x_new = langevin_proposal(x, g, step_size, noise)
    e_new, g_new, nfe = evaluate(energy, x_new, t, True)
    log_ratio = mala_log_ratio(x, e, x_new, e_new, g_new, noise, step_size)
    acceptance, accepted, divergent, log_ratio = metropolis_accept(log_ratio, u)
    acc_x = per_chain(accepted, x)
    return (torch.where(acc_x, x_new, x), torch.where(accepted, e_new, e), torch.where(acc_x, g_new, g),
            acceptance, accepted, divergent, log_ratio, nfe)


def mala_body(energy, carry, draws, consts):
    """:func:`mala_transition` on ``carry = (x, E, ∇E)``, ``draws = (ξ's draw, u)`` (``samplers.tensors.noise_draw``),
    ``consts = (t, h)``; outputs ``(acceptance, accepted, divergent, log ratio, nfe)``."""
    x, e, g = carry
    t, h = consts
    noise = normal_noise(draws[0], x)
    x, e, g, acceptance, accepted, divergent, log_ratio, nfe = mala_transition(energy, x, e, g, t, noise, draws[1], h)
    return (x, e, g), (acceptance, accepted, divergent, log_ratio, nfe)


@dataclass(frozen=True)
class MALA(MCMCKernel):
    """Metropolis-adjusted Langevin kernel (Roberts & Tweedie 1996), per-chain accept/reject.

    Parameters
    ----------
    step_size : float, 0-d Tensor or None
        ``h`` in ``x' = x - h ∇E(x) + sqrt(2h) ξ``. ``None``: ``sample`` adapts it by dual
        averaging (Hoffman & Gelman 2014) towards ``target_accept`` during warm-up.
    n_steps : int
        Transitions ``sample`` keeps after warm-up.
    target_accept : float
        Target mean acceptance for adaptation (0.57, Roberts & Rosenthal 1998).
    n_warmup : int or None
        Warm-up transitions; default ``max(100, n_steps // 2)`` when adapting, else 0.
    compile : bool
        Run the whole transition as one ``torch.compile`` graph when the energy can be traced
        (closed-form or autograd energies), else eagerly with one warning (``samplers.compile``).

    Examples
    --------
    >>> res = MALA(step_size=0.1, n_steps=500).sample(energy, x0, generator=g)
    >>> state, info = MALA(step_size=0.1).step(MALA().init(energy, x0), energy, g)   # info: MALAInfo
    """

    step_size: Optional[Union[float, Tensor]] = None
    n_steps: int = 100
    target_accept: float = 0.57
    n_warmup: Optional[int] = None
    compile: bool = False

    def __post_init__(self):
        self._check_config()

    # one transition (``step``, inherited) and many per compiled call (``steps``): the same body
    body = mala_body
    scan_body = reduced(mala_body)
    uniform_draws = True  # _draws: noise_draw and uniform only

    def _draws(self, x, generator, out=(None, None)):
        return noise_draw(x, generator, out[0]), uniform(x, generator, out[1])

    def _carry(self, state):
        return state.x, state.energy, state.grad

    def _consts(self, state, h):
        return state.t, h

    def _state(self, state, carry):
        x, e, g = carry
        return state.replace(x=x, energy=e, grad=g)

    def _info(self, outs):
        acceptance, accepted, divergent, log_ratio, nfe = outs
        return MALAInfo(acceptance=acceptance, accepted=accepted, divergent=divergent, nfe=nfe, energy_error=log_ratio)
