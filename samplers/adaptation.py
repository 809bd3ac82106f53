"""Step-size adaptation: Nesterov dual averaging (Hoffman & Gelman 2014, Algorithm 5).

The adaptation state is a small immutable record of 0-d tensors, so a warm-up loop can feed it
the mean acceptance over chains as a tensor and never synchronise the device. The iterate
``step_size`` is used during warm-up; the averaged ``final_step_size`` is frozen afterwards.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Union

import torch
from torch import Tensor

__all__ = ["DualAveraging", "DualAveragingState", "find_initial_step_size"]


@dataclass(frozen=True)
class DualAveragingState:
    """Dual-averaging iterate (all 0-d tensors, on the chains' device).

    Attributes
    ----------
    log_step_size : Tensor
        ``log ε_m``, the step size to use for the next transition.
    log_step_size_avg : Tensor
        ``log ε̄_m``, the iterate average (the step size to freeze after warm-up).
    h_bar : Tensor
        ``H̄_m``, running average of ``target - acceptance``.
    mu : Tensor
        ``μ = log(10 ε_0)``, the shrinkage point.
    iteration : int
        ``m``, number of updates so far (a Python int: no device sync).
    """

    log_step_size: Tensor
    log_step_size_avg: Tensor
    h_bar: Tensor
    mu: Tensor
    iteration: int = 0

    @property
    def step_size(self) -> Tensor:
        """Current step size ``ε_m`` (0-d tensor)."""
        return self.log_step_size.exp()

    @property
    def final_step_size(self) -> Tensor:
        """Averaged step size ``ε̄_m`` to use after warm-up (0-d tensor); ``ε_m`` before any update."""
        if self.iteration == 0:
            return self.log_step_size.exp()
        return self.log_step_size_avg.exp()


@dataclass(frozen=True)
class DualAveraging:
    """Dual averaging of ``log step_size`` towards a target acceptance (Hoffman & Gelman 2014, Alg. 5).

    ``H̄_m = (1 - 1/(m+t0)) H̄_{m-1} + (target - α_m)/(m+t0)``;
    ``log ε_m = μ - sqrt(m)/γ · H̄_m``;
    ``log ε̄_m = m^{-κ} log ε_m + (1 - m^{-κ}) log ε̄_{m-1}``.

    Parameters
    ----------
    target_accept : float
        Target mean acceptance ``δ`` in (0, 1) (MALA 0.57, HMC 0.65).
    gamma, t0, kappa : float
        Shrinkage ``γ``, iteration offset ``t0`` and averaging exponent ``κ`` (paper defaults).

    Examples
    --------
    >>> da = DualAveraging(0.57); s = da.init(0.1)
    >>> s = da.update(s, torch.tensor(0.9)); s.step_size   # grows: acceptance above target
    """

    target_accept: float = 0.65
    gamma: float = 0.05
    t0: float = 10.0
    kappa: float = 0.75

    def __post_init__(self):
        if not 0.0 < self.target_accept < 1.0:
            raise ValueError(f"target_accept must be in (0, 1), got {self.target_accept!r}")
        if not (self.gamma > 0 and self.t0 >= 0 and 0.5 < self.kappa <= 1.0):
            raise ValueError("need gamma > 0, t0 >= 0 and kappa in (0.5, 1]")

    def init(self, step_size: Union[float, Tensor], like: Tensor = None) -> DualAveragingState:
        """Start from ``step_size`` (float or 0-d tensor); ``like`` sets device/dtype."""
        if isinstance(step_size, Tensor):
            h0 = step_size.detach().reshape(())
            if like is not None:
                h0 = h0.to(device=like.device, dtype=like.dtype)
        else:
            kw = {} if like is None else dict(device=like.device, dtype=like.dtype)
            h0 = torch.tensor(float(step_size), **kw)
        log_h = h0.log()
        return DualAveragingState(
            log_step_size=log_h,
            log_step_size_avg=torch.zeros_like(log_h),
            h_bar=torch.zeros_like(log_h),
            mu=log_h + math.log(10.0),
            iteration=0,
        )

    def update(self, state: DualAveragingState, acceptance: Tensor) -> DualAveragingState:
        """One update with the observed (mean) acceptance ``α_m`` (0-d tensor; NaN counts as 0)."""
        m = state.iteration + 1
        acc = torch.nan_to_num(torch.as_tensor(acceptance, dtype=state.h_bar.dtype, device=state.h_bar.device), nan=0.0)
        w = 1.0 / (m + self.t0)
        h_bar = (1.0 - w) * state.h_bar + w * (self.target_accept - acc)
        log_h = state.mu - (math.sqrt(m) / self.gamma) * h_bar
        eta = m ** (-self.kappa)
        log_h_avg = eta * log_h + (1.0 - eta) * state.log_step_size_avg
        return dataclasses.replace(
            state, log_step_size=log_h, log_step_size_avg=log_h_avg, h_bar=h_bar, iteration=m
        )


def find_initial_step_size(
    acceptance: Callable[[float], Tensor],
    step_size: float = 0.1,
    target: float = 0.5,
    max_iter: int = 40,
) -> float:
    """Double or halve ``step_size`` until the acceptance crosses ``target`` (Hoffman & Gelman 2014, Alg. 4).

    Parameters
    ----------
    acceptance : callable
        ``acceptance(step_size) -> 0-d Tensor``, the mean acceptance of one trial transition.
    step_size : float
        Starting guess.
    target : float
        Crossing level.
    max_iter : int
        At most this many trials (one host synchronisation each; run once before warm-up).

    Returns
    -------
    float
        The last step size on the side of ``target`` it started from.
    """
    h = float(step_size)
    a = float(acceptance(h))
    direction = 1.0 if a > target else -1.0
    for _ in range(max_iter):
        h_new = h * 2.0 ** direction
        a = float(acceptance(h_new))
        if (direction > 0 and not a > target) or (direction < 0 and a > target):
            return h_new if direction < 0 else h
        h = h_new
    return h
