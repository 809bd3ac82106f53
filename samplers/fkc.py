"""Feynman–Kac corrector (FKC) weights: SMC down the noise ladder from scores alone.

Skreta et al., "Feynman-Kac Correctors in Diffusion: Annealing, Guidance, and Product of
Experts" (ICML 2025, arXiv 2503.02819). For a *linear* composition ``E = Σ_i β_i E_i`` of leaves
(products/AND, temperatures ``w * a``, NOT ``a − b``, classifier-free guidance
``u + w (c − u)``) the target at diffusion time ``t`` is the geometric combination of the noised
leaves ``π_t ∝ Π_i q_i(x, t)^{β_i}``, whose score is ``S = Σ_i β_i s_i`` (``s_i = −∇E_i``): what
every score-based sampler already follows. Reverse diffusion driven by ``S`` does not keep the
particles distributed as ``π_t`` (noising does not commute with products); importance weights
that only need the leaves' scores do.

Derivation (VP SDE ``dx = −½ β(t) x dt + sqrt(β(t)) dW``, ``g² = β``). Each noised leaf obeys the
Fokker–Planck equation, so ``∂_t log q_i = ½ β d + ½ β x·s_i + ½ β (∇·s_i + |s_i|²)``. The proposal
is the reverse SDE ``dx = [½ β x + β S] dτ + sqrt(β) dW̄`` in reverse time ``τ = 1 − t``. The
Feynman–Kac formula then reweights it to ``π̃_τ = Π q_i^{β_i}`` with the log-weight rate

    G(x, t) = ∂_τ log π̃ − (L*π̃)/π̃ = ½ β(t) (|S|² − Σ_i β_i |s_i|²) − ½ β(t) d (Σ_i β_i − 1)

(the ``∇·s`` and ``x·s`` terms cancel; the last term is constant in ``x``). It is the same for
every noise level ``λ`` of the family ``dx = [½βx + ½(1+λ²)β S] dτ + λ sqrt(β) dW̄``, so both
proposal variances of :class:`~samplers.SMC` use it. Checks: a product ``(1, 1)`` gives
``β ⟨s_1, s_2⟩`` and annealing ``q^γ`` gives ``½ γ (γ − 1) β |s|²`` (the paper's
product-of-experts and annealing correctors, up to the constant term).

Discretisation, per ladder step ``t → s`` (``s < t``): ``∫_s^t β(u) du = log(ᾱ_s / ᾱ_t) =: Δ``
and the trapezoid rule on the rate at the two ends,

    log w += Δ · [r(x, t) + r(x', s)] / 2 − ½ d Δ (Σ_i β_i − 1),   r = ½ (|S|² − Σ_i β_i |s_i|²).

Both ends' scores are evaluated anyway (each feeds a proposal, or the final denoising step), so
the weights cost no extra evaluation. Start: every sampler draws ``x ~ N(0, I)``, i.e. assumes
``q_i(·, t_max) = N(0, I)``; then ``π̃_{t_max} = N(0, I)^{Σβ}`` and the start weight is
``log w_0 = −(Σβ − 1) (|x|²/2 + (d/2) log 2π)`` (needs ``Σ_i β_i > 0``).

Shapes: ``x`` ``(B, *event)``, ``t`` ``(B,)``, scores ``(n_leaves, B, *event)``, rates ``(B,)``.
"""

from __future__ import annotations

import math
import warnings
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor

import ebmcompose as ec
from ebmcompose.energy import GRAD

__all__ = ["linear_leaves", "fkc_applies", "leaf_scores", "FKCScores", "step_integrals", "fkc_start", "fkc_increment"]

_LOG_2PI = math.log(2.0 * math.pi)


def linear_leaves(energy: ec.Energy) -> List[Tuple[float, ec.Energy]]:
    """Flatten ``energy`` into ``[(β_i, leaf_i), ...]`` with ``E = Σ_i β_i E_i``.

    Nested sums multiply out; a leaf appearing several times (the base of AND/NOT/CFG) appears
    once with its coefficients added; leaves whose coefficients cancel to 0 are dropped. Order:
    first appearance.

    Raises
    ------
    ec.InputError
        The expression is not linear in its leaves (a :class:`~ebmcompose.Mixture` ``a | b``, or a
        node this function does not know; :class:`ec.ScoreOnlyError`, a subclass, when the
        expression also has score-only leaves), or its coefficients sum to ``≤ 0`` (no proper
        start density): the message names the fix.
    """
    coefs: Dict[int, float] = {}
    order: List[ec.Energy] = []
    err = ec.InputError if energy.has_energy else ec.ScoreOnlyError  # ScoreOnlyError is an InputError

    def walk(e: ec.Energy, c: float) -> None:
        if isinstance(e, ec.Sum):
            for w, child in zip(e.weights, e.terms):
                walk(child, c * float(w))
        elif isinstance(e, ec.Mixture):
            raise err(
                f"FKC weights need a linear composition (sums, weights, AND/NOT, guidance), but {e!r} contains "
                "a mixture (a | b), whose score is not a linear combination of its components' scores: use an "
                "energy-parameterised model (ec.DiffusionEnergy or an exact diffused density) with "
                "SMC(weights='energy'), or drop the mixture"
            )
        elif list(e.leaves()) == [e]:
            if id(e) not in coefs:
                order.append(e)
                coefs[id(e)] = 0.0
            coefs[id(e)] += c
        else:
            raise err(
                f"FKC weights need an expression of sums of leaves; {type(e).__name__} ({e!r}) is neither: use "
                "SMC(weights='energy') with an energy-parameterised model"
            )

    walk(energy, 1.0)
    out = [(coefs[id(e)], e) for e in order if coefs[id(e)] != 0.0]
    total = sum(c for c, _ in out)
    if not out or total <= 0.0:
        raise ec.InputError(
            f"FKC weights need coefficients with a positive sum (the start density N(0, I/Σβ)), but {energy!r} has "
            f"Σβ = {total:g}: add a positive term (e.g. the unconditional model, as classifier-free guidance does)"
        )
    return out


def leaf_scores(leaves: Sequence[ec.Energy], x: Tensor, t: Tensor) -> Tuple[Tensor, int]:
    """Every leaf's score ``s_i = −∇E_i`` at ``(x, t)``: ``(n_leaves, B, *event)`` and the NFE.

    Leaves of one network (same :meth:`~ebmcompose.Energy.leaf_group`) run in **one** batched
    forward through the group's public ``evaluate_leaves``; other leaves once each. The NFE is
    counted as :meth:`ebmcompose.Energy.evaluate` counts it for the composed expression.
    ``t`` is ``(B,)``; ``x`` is not validated (samplers check their start once).
    """
    out: List[Tensor] = [None] * len(leaves)  # type: ignore[list-item]
    groups: Dict[object, List[int]] = {}
    nfe = 0
    for i, leaf in enumerate(leaves):
        group = leaf.leaf_group()
        if group is not None:
            groups.setdefault(group, []).append(i)
            continue
        ev = leaf.evaluate(x, t, energy=False, grad=True, validate=False)
        out[i] = -ev.grad
        nfe += ev.nfe
    for group, idx in groups.items():
        res, n = group.evaluate_leaves([leaves[i] for i in idx], [GRAD] * len(idx), x, t, False)
        for i, (_, g) in zip(idx, res):
            out[i] = -g
        nfe += n
    return torch.stack(out, 0), nfe


def fkc_applies(energy: ec.Energy) -> bool:
    """Whether FKC weights apply to ``energy``: a linear composition of leaves (:func:`linear_leaves`
    accepts it; a mixture ``a | b`` is not one)."""
    try:
        linear_leaves(energy)
    except ec.InputError:
        return False
    return True


class FKCScores:
    """The composed score and the FKC rate of a linear composition, from one evaluation of its leaves.

    Parameters
    ----------
    energy : ec.Energy
        A linear composition (:func:`linear_leaves`); its leaves may be score-only.

    Attributes
    ----------
    coefs : Tensor
        ``(n_leaves,)`` float64 ``β_i``.
    leaves : list of ec.Energy
        The distinct leaves.
    total : float
        ``Σ_i β_i``.
    """

    def __init__(self, energy: ec.Energy):
        pairs = linear_leaves(energy)
        self.leaves = [e for _, e in pairs]
        self.coefs = torch.tensor([c for c, _ in pairs], dtype=torch.float64)
        self.total = float(self.coefs.sum())

    def __call__(self, x: Tensor, t: Tensor, wdtype: torch.dtype = torch.float32) -> Tuple[Tensor, Tensor, int]:
        """``(grad, rate, nfe)`` at ``(x, t)``: ``grad = −S`` like ``x``, ``rate = r(x, t)`` ``(B,)`` in ``wdtype``."""
        scores, nfe = leaf_scores(self.leaves, x, t)
        return (*self.combine(scores, wdtype), nfe)

    def combine(self, scores: Tensor, wdtype: torch.dtype = torch.float32) -> Tuple[Tensor, Tensor]:
        """From leaf scores ``(n, B, *event)``: ``(−S, r)`` with ``S = Σ β_i s_i`` and
        ``r = ½ (|S|² − Σ_i β_i |s_i|²)`` ``(B,)`` (in ``wdtype``, float32 or wider)."""
        n, b = scores.shape[:2]
        c = self.coefs.to(device=scores.device, dtype=scores.dtype).reshape((n,) + (1,) * (scores.dim() - 1))
        s_comp = (c * scores).sum(0)
        flat = scores.reshape(n, b, -1).to(wdtype)
        cw = self.coefs.to(device=scores.device, dtype=wdtype)
        rate = 0.5 * (s_comp.reshape(b, -1).to(wdtype).square().sum(1) - (cw[:, None] * flat.square().sum(2)).sum(0))
        return -s_comp, rate


#: The largest step integral ``Δ = ∫ β`` the weights' trapezoid rule is trusted with (a warning beyond).
MAX_STEP_INTEGRAL = 1.0


def step_integrals(schedule: ec.VPSchedule, ts: Tensor) -> List[float]:
    """Per step ``t_k → t_{k+1}`` of the ladder ``ts`` ``(L + 1,)``: ``Δ_k = ∫ β = log(ᾱ_{k+1} / ᾱ_k) ≥ 0``.

    Warns (:class:`samplers.SamplingWarning`) when a step integrates more than
    :data:`MAX_STEP_INTEGRAL`: the weights are then far from the continuous-time ones (the cosine
    schedule's first step from ``t = 1`` integrates ~10 at 100 steps).
    """
    la = schedule.log_alpha_bar(ts.detach().to("cpu", torch.float64)).tolist()
    deltas = [la[k + 1] - la[k] for k in range(len(la) - 1)]
    worst = max(range(len(deltas)), key=deltas.__getitem__)
    if deltas[worst] > MAX_STEP_INTEGRAL:
        from .health import SamplingWarning

        warnings.warn(
            f"SMC: FKC weights are exact only for small steps, but step {worst} (t = {float(ts[worst]):.3g}) integrates "
            f"beta over {deltas[worst]:.3g} > {MAX_STEP_INTEGRAL:g}: use more steps, a smaller t_max (e.g. 0.9 on the "
            "cosine schedule) or VPSchedule.linear()", SamplingWarning, stacklevel=4)
    return deltas


def fkc_start(x: Tensor, total: float, wdtype: torch.dtype = torch.float32) -> Tensor:
    """Start log weight ``−(Σβ − 1)(|x|²/2 + (d/2) log 2π)`` ``(B,)`` of ``x ~ N(0, I)`` ``(B, *event)``
    for the target ``N(0, I)^{Σβ}`` (each leaf's noised density taken as ``N(0, I)`` at ``t_max``)."""
    xf = x.reshape(x.shape[0], -1).to(wdtype)
    return -(total - 1.0) * (0.5 * xf.square().sum(1) + 0.5 * xf.shape[1] * _LOG_2PI)


def fkc_increment(rate_t: Tensor, rate_s: Tensor, delta: float, total: float, d: int) -> Tensor:
    """Log-weight increment ``(B,)`` of one step ``t → s``: ``Δ (r_t + r_s) / 2 − ½ d Δ (Σβ − 1)``.

    ``rate_t`` at the particles' ancestors ``(x, t)``, ``rate_s`` at the proposals ``(x', s)``,
    both ``(B,)``; ``delta = log(ᾱ_s / ᾱ_t)`` (:func:`step_integrals`); ``d`` the event size.
    """
    return 0.5 * delta * (rate_t + rate_s) - 0.5 * d * delta * (total - 1.0)
