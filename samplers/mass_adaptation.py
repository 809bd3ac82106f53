"""Diagonal mass matrix adaptation during warm-up (as Stan's and BlackJAX's window adaptation).

HMC mixes best when its inverse mass ``M⁻¹`` matches the target's covariance: each direction then
moves on the scale of its own spread. Warm-up runs in Stan's windows (:func:`windows`): a first
buffer adapts the step size alone; then slow windows of doubling length each end by setting ``M⁻¹``
to the variance of their draws (all chains pooled), shrunk towards ``1e-3`` with weight
``5 / (n + 5)`` (Stan's regulariser), and searching the step size afresh; a last buffer adapts
the step size at the final mass. Later windows see better-mixed draws, so early transients (chains
that have not yet spread to the target's scale) wash out.

The mass is fixed after warm-up, so the kept transitions leave the target invariant.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["VarianceEstimate", "regularised_variance", "windows"]

#: Stan's shrinkage: ``n/(n+5) var + 1e-3 · 5/(n+5)``.
SHRINK_COUNT = 5.0
SHRINK_TARGET = 1e-3


class VarianceEstimate:
    """Per-entry variance of positions ``(B, *event)`` pooled over chains and steps (Welford, float64).

    ``update(x)`` adds one step of all chains; :attr:`variance` is like the event.
    """

    def __init__(self):
        self.n = 0
        self.mean: Optional[Tensor] = None
        self.m2: Optional[Tensor] = None

    def update(self, x: Tensor) -> None:
        """Add the ``B`` positions of one step (Chan et al.'s pairwise merge of a batch)."""
        x = x.detach().to(torch.float64)
        b = x.shape[0]
        mean_b = x.mean(dim=0)
        m2_b = (x - mean_b).square().sum(dim=0)
        if self.mean is None:
            self.n, self.mean, self.m2 = b, mean_b, m2_b
            return
        n = self.n + b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (b / n)
        self.m2 = self.m2 + m2_b + delta.square() * (self.n * b / n)
        self.n = n

    @property
    def variance(self) -> Tensor:
        """Sample variance like the event (``n − 1`` denominator)."""
        if self.m2 is None or self.n < 2:
            raise ValueError("VarianceEstimate needs at least two positions")
        return self.m2 / (self.n - 1)


def regularised_variance(est: VarianceEstimate, like: Tensor) -> Tensor:
    """The inverse mass ``M⁻¹`` from an estimate: shrunk variance like the event, on ``like``'s device/dtype."""
    n = float(est.n)
    var = est.variance * (n / (n + SHRINK_COUNT)) + SHRINK_TARGET * (SHRINK_COUNT / (n + SHRINK_COUNT))
    return var.to(device=like.device, dtype=like.dtype)


def windows(n_warmup: int) -> Tuple[int, List[int], int]:
    """Stan's warm-up plan ``(first buffer, slow windows, last buffer)``, summing to ``n_warmup``.

    From 150 steps: buffers of 75 and 50 and slow windows of 25, 50, 100, … (the last stretched to
    fill); below, 15 % / 75 % / 10 %.
    """
    if n_warmup >= 150:
        first, last, size = 75, 50, 25
    else:
        first, last = int(0.15 * n_warmup), int(0.1 * n_warmup)
        size = n_warmup - first - last
    slow, start, end_slow = [], first, n_warmup - last
    while start < end_slow:
        end = start + size
        if end + 2 * size > end_slow:  # the next window would not fit: stretch this one
            end = end_slow
        slow.append(end - start)
        start, size = end, 2 * size
    return first, slow, last
