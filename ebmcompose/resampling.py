"""Resampling of weighted particles: systematic, stratified and multinomial (Douc, Cappé & Moulines 2005).

Each scheme maps ``(B,)`` log weights to ``(B,)`` ancestor indices whose expected counts are
``B · w_i`` (``w`` the normalised weights), so the resampled population is an unbiased,
equally weighted representation of the weighted one. They differ in variance: multinomial draws
``B`` independent ancestors; stratified draws one uniform in each stratum ``[(i, i+1)/B)``;
systematic shares one uniform across all strata (lowest variance in practice, the default).

All draws come from the explicit ``generator`` on the weights' device; nothing synchronises the
device. :func:`ess` is the effective sample size ``(Σ w)² / Σ w²`` of unnormalised log weights.

``samplers.SMC`` uses them (``samplers.resampling`` is this module), and so does the global
resampling of a sharded population (``ec.distributed.resample_indices``).
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
from torch import Tensor

from .errors import InputError

__all__ = ["SCHEMES", "systematic", "stratified", "multinomial", "resample", "ess", "normalise"]


def normalise(log_weights: Tensor) -> Tensor:
    """``(..., B)`` normalised weights ``softmax`` over the last dimension; non-finite log weights count as 0."""
    lw = torch.nan_to_num(log_weights, nan=-float("inf"), posinf=-float("inf"))
    return torch.softmax(lw, dim=-1)


def ess(log_weights: Tensor) -> Tensor:
    """``(...)`` effective sample size ``(Σ w)² / Σ w²`` in ``(0, B]`` of ``(..., B)`` unnormalised log
    weights (0-d for ``(B,)``)."""
    w = normalise(log_weights)
    return 1.0 / w.square().sum(-1)


def _inverse_cdf(w: Tensor, u: Tensor) -> Tensor:
    """Ancestors ``(..., B)``: for each sorted ``u`` in ``[0, 1)`` the first index whose cumulative weight exceeds it."""
    cdf = torch.cumsum(w, dim=-1)
    idx = torch.searchsorted(cdf, u.to(cdf.dtype).contiguous(), right=True)
    return idx.clamp_(max=w.shape[-1] - 1)  # rounding of the last cumulative sum below 1


def _strata(w: Tensor, u: Tensor) -> Tensor:
    """``(i + u_i) / B`` for ``i < B`` (``u`` broadcast against ``(..., B)``)."""
    b = w.shape[-1]
    return (torch.arange(b, device=w.device, dtype=w.dtype) + u) / b


def systematic(log_weights: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Systematic resampling: ``u_i = (i + U) / B`` with one ``U ~ U(0, 1)`` per population; ``(..., B)`` int64
    ancestors of ``(..., B)`` log weights (each leading index a population of its own)."""
    w = normalise(log_weights)
    u0 = torch.rand(w.shape[:-1] + (1,), generator=generator, device=w.device, dtype=w.dtype)
    return _inverse_cdf(w, _strata(w, u0))


def stratified(log_weights: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Stratified resampling: ``u_i = (i + U_i) / B`` with independent ``U_i``; ``(..., B)`` int64 ancestors."""
    w = normalise(log_weights)
    return _inverse_cdf(w, _strata(w, torch.rand(w.shape, generator=generator, device=w.device, dtype=w.dtype)))


def multinomial(log_weights: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Multinomial resampling: ``B`` independent draws from ``w`` per population; ``(..., B)`` int64 ancestors."""
    w = normalise(log_weights)
    # inverse CDF of sorted uniforms (a sort of B uniforms), so the draws follow the generator on any device
    u = torch.rand(w.shape, generator=generator, device=w.device, dtype=w.dtype).sort(dim=-1).values
    return _inverse_cdf(w, u)


#: Resampling schemes by name.
SCHEMES: Dict[str, Callable[[Tensor, Optional[torch.Generator]], Tensor]] = {
    "systematic": systematic,
    "stratified": stratified,
    "multinomial": multinomial,
}


def resample(log_weights: Tensor, scheme: str = "systematic", generator: Optional[torch.Generator] = None) -> Tensor:
    """``(B,)`` ancestor indices for ``(B,)`` log weights by the named scheme (see :data:`SCHEMES`); for
    ``(G, B)`` log weights, ``(G, B)`` indices into each row (``G`` populations resampled independently,
    with the draws of one population first when ``G = 1``)."""
    if scheme not in SCHEMES:
        raise InputError(f"unknown resampling scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
    if log_weights.dim() not in (1, 2) or log_weights.shape[-1] < 1:
        raise InputError(f"log_weights must have shape (B,) or (G, B) with B >= 1, got {tuple(log_weights.shape)}")
    return SCHEMES[scheme](log_weights, generator)
