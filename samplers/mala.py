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
    per_chain,
    randn_like,
    split_compiled,
    sqrt_step,
    uniform,
)

__all__ = ["MALA", "langevin_proposal", "mala_log_ratio"]


def _sum_event(v: Tensor) -> Tensor:
    """Sum over all but the batch dimension: ``(B, *event) -> (B,)``."""
    if v.dim() == 2:
        return v.sum(dim=1)
    return v.reshape(v.shape[0], -1).sum(dim=1)


def langevin_proposal(x: Tensor, grad: Tensor, step_size, noise: Tensor) -> Tensor:
    """Langevin proposal ``x - h ∇E(x) + sqrt(2h) ξ`` (Euler–Maruyama step of ``dx = -∇E dt + sqrt(2) dW``); shapes ``(B, *event)``."""
    if isinstance(step_size, Tensor):
        return x - step_size * grad + sqrt_step(step_size, 2.0) * noise
    # float step size: two fused ops instead of four (same value up to rounding)
    return torch.add(x, grad, alpha=-step_size).add_(noise, alpha=math.sqrt(2.0 * step_size))


def mala_log_ratio(x, energy, x_new, energy_new, grad_new, noise, step_size) -> Tensor:
    """``(B,)`` log MH ratio ``E(x) - E(x') + log q(x|x') - log q(x'|x)`` for the proposal ``x' = x - h∇E(x) + sqrt(2h)ξ``.

    With ``d = x - x' + h ∇E(x')``, ``log q(x|x') - log q(x'|x) = ½ Σ (ξ² - d²/(2h))`` over the
    event dimensions: one reduction instead of two.
    """
    if isinstance(step_size, Tensor):
        d = x - x_new + step_size * grad_new
        return energy - energy_new + 0.5 * _sum_event(noise.square() - d.square() / (2.0 * step_size))
    # Python-number step: the same formula in fused in-place ops on fresh temporaries (7 ops
    # instead of 11; the eager cost of a step at small N is the number of ops)
    d = torch.sub(x, x_new).add_(grad_new, alpha=step_size)
    q = torch.mul(noise, noise).addcmul_(d, d, value=-0.5 / step_size)
    return torch.sub(energy, energy_new).add_(_sum_event(q), alpha=0.5)


_NEG_INF = -float("inf")


def metropolis_accept(log_ratio: Tensor, u: Tensor):
    """Per-chain Metropolis decision from a ``(B,)`` log ratio and ``U(0, 1)`` draws ``u``.

    Returns ``(acceptance, accepted, divergent, energy_error)``: ``min(1, exp(log_ratio))`` with
    non-finite ratios (a non-finite energy or gradient of the proposal) given acceptance 0 and
    flagged divergent, the decision ``u < acceptance``, and the log ratio with non-finite
    entries set to 0.
    """
    # -inf for every non-finite ratio: acceptance 0 there (one op instead of isfinite + where)
    safe = torch.nan_to_num(log_ratio, nan=_NEG_INF, posinf=_NEG_INF, neginf=_NEG_INF)
    divergent = safe == _NEG_INF  # a finite ratio stays finite, so this is ~isfinite(log_ratio)
    acceptance = safe.clamp_(max=0.0).exp_()  # in place: ``safe`` is a fresh tensor
    accepted = u < acceptance
    return acceptance, accepted, divergent, torch.nan_to_num(log_ratio, nan=0.0, posinf=0.0, neginf=0.0)


def _mala_correct(x, energy, grad, x_new, energy_new, grad_new, noise, step_size, u):
    """Per-chain Metropolis correction; non-finite proposals are rejected and flagged divergent."""
    log_ratio = mala_log_ratio(x, energy, x_new, energy_new, grad_new, noise, step_size)
    acceptance, accepted, divergent, log_ratio = metropolis_accept(log_ratio, u)
    acc_x = per_chain(accepted, x)
    x_out = torch.where(acc_x, x_new, x)
    e_out = torch.where(accepted, energy_new, energy)
    g_out = torch.where(acc_x, grad_new, grad)
    return x_out, e_out, g_out, acceptance, accepted, divergent, log_ratio


def _mala_move(energy, x, g, t, noise, step_size):
    """The proposal and its energy and gradient: ``(x_new, e_new, g_new, nfe)``."""
    x_new = langevin_proposal(x, g, step_size, noise)
    e_new, g_new, nfe = evaluate(energy, x_new, t, True)
    return x_new, e_new, g_new, nfe


def _mala_transition(energy, x, e, g, t, noise, u, step_size):
    """A whole MALA transition given its random draws (compiled as one graph with ``compile=True``)."""
    x_new, e_new, g_new, nfe = _mala_move(energy, x, g, t, noise, step_size)
    return _mala_correct(x, e, g, x_new, e_new, g_new, noise, step_size, u) + (nfe,)


@dataclass(frozen=True)
class MALA(MCMCKernel):
    """Metropolis-adjusted Langevin kernel (Roberts & Tweedie 1996), per-chain accept/reject.

    Parameters
    ----------
    step_size : float, 0-d Tensor or None
        ``h`` in ``x' = x - h ∇E(x) + sqrt(2h) ξ``. ``None``: adapted by dual averaging
        (Hoffman & Gelman 2014) towards ``target_accept`` during warm-up, then frozen.
    n_steps : int
        Transitions after warm-up.
    target_accept : float
        Target mean acceptance for adaptation (0.57, Roberts & Rosenthal 1998).
    n_warmup : int or None
        Warm-up transitions before the ``n_steps`` kept; default ``max(100, n_steps // 2)`` when
        adapting, 0 with a given ``step_size``.
    compile : bool
        ``torch.compile`` the whole transition (proposal, energy evaluation, correction) as one
        graph when the energy can be captured (closed-form energies such as
        ``toy.GaussianMixture``); otherwise (autograd inside the energy) only the proposal and
        correction math, around an eager evaluation; falls back to eager with a warning if
        compilation fails. One compilation per (shape, dtype, torch thread count); random draws
        stay eager, so compiled and eager chains use the same random stream. On CPU, the energy's
        layout decides the compiled speed more than the sampler does: see the README's "Speed".

    Notes
    -----
    Building blocks for annealed samplers: ``state = MALA().init(energy, x, t)``, then
    ``state, step_size, da = kernel.run(energy, state, n_steps, step_size, generator,
    adapt=DualAveraging(0.57), adapt_state=da, recorder=rec)`` at each noise level
    (see :class:`samplers.base.MCMCKernel`). ``step`` costs 1 NFE.

    Examples
    --------
    >>> res = MALA(step_size=0.1, n_steps=500).sample(energy, x0, generator=g)
    >>> res.samples.shape, res.info["acceptance"].mean()
    """

    step_size: Optional[Union[float, Tensor]] = None
    n_steps: int = 100
    target_accept: float = 0.57
    n_warmup: Optional[int] = None
    compile: bool = False

    needs_energy = True

    def __post_init__(self):
        self._check_config()

    def step(
        self, state: State, energy: ec.Energy, step_size, generator: Optional[torch.Generator]
    ) -> Tuple[State, StepInfo]:
        """One MALA transition from ``state`` (``x`` ``(B, *event)``); returns the new state and per-chain info."""
        if state.energy is None:
            raise ValueError("MALA.step needs a state with energies: create it with MALA().init(energy, x, t)")
        x = state.x
        if self.compile:
            if not isinstance(step_size, Tensor):
                step_size = torch.tensor(step_size, device=x.device, dtype=x.dtype)
            # both draws before the evaluation: the same stream as the eager path (the energy
            # never touches the generator)
            noise = randn_like(x, generator)
            u = uniform(x.shape[:1], x, generator)
            out = None
            if not split_compiled(x):
                out = compiled_transition(_mala_transition)(energy, x, state.energy, state.grad, state.t, noise, u, step_size)
            if out is None:  # large x (see split_compiled), or the whole transition not capturable
                moved = compiled_transition(_mala_move)(energy, x, state.grad, state.t, noise, step_size)
                if moved is None:  # energy not capturable in a graph: compile the step math only
                    x_new = compiled(langevin_proposal)(x, state.grad, step_size, noise)
                    moved = (x_new,) + tuple(evaluate(energy, x_new, state.t, True))
                x_new, e_new, g_new, nfe = moved
                out = compiled(_mala_correct)(x, state.energy, state.grad, x_new, e_new, g_new, noise, step_size, u) + (nfe,)
        else:
            noise = randn_like(x, generator)
            x_new, e_new, g_new, nfe = _mala_move(energy, x, state.grad, state.t, noise, step_size)
            u = uniform(x.shape[:1], x, generator)
            out = _mala_correct(x, state.energy, state.grad, x_new, e_new, g_new, noise, step_size, u) + (nfe,)
        x, e, g, acceptance, accepted, divergent, log_ratio, nfe = out
        return (
            state.replace(x=x, energy=e, grad=g),
            StepInfo(acceptance=acceptance, accepted=accepted, divergent=divergent, energy_error=log_ratio, nfe=nfe),
        )
