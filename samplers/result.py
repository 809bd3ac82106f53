"""What ``sampler.sample`` returns: samples, the final state, and a typed, NaN-free summary.

Summaries are frozen dataclasses. They also read like the dicts they replace
(``res.info["nfe"]``, ``"log_weights" in res.info``, ``dict(res.info)``): the keys are the fields
that are set (not ``None``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["SampleResult", "KernelSummary", "LadderSummary"]


class _ReadsLikeADict(Mapping):
    """Read-only dict access to the set fields of a dataclass summary."""

    def _keys(self):
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def __getitem__(self, key: str) -> Any:
        if key in self._keys():
            return getattr(self, key)
        raise KeyError(key)

    def __iter__(self):
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())


@dataclass(frozen=True, eq=False)
class KernelSummary(_ReadsLikeADict):
    """Diagnostics of a static kernel run (ULA, MALA, HMC); per step = post-warm-up steps.

    Attributes
    ----------
    nfe : int
        Every evaluation: initial state, step-size search, warm-up and kept steps.
    n_steps : int
        Kept transitions ``T``.
    step_size : Tensor
        0-d, the step size of the kept steps (adapted or given).
    n_warmup : int
        Warm-up transitions before them.
    acceptance : Tensor or None
        ``(T,)`` mean acceptance per step (``None`` when ``T = 0``).
    acceptance_per_chain : Tensor or None
        ``(B,)`` mean acceptance per chain.
    divergences : int or None
        Divergent proposals of the kept steps: a non-finite energy or gradient, or an energy
        error above ``samplers.health.DIVERGENCE_THRESHOLD`` (1000) in magnitude.
    energy_error : Tensor or None
        ``(T,)`` mean ``|log Metropolis ratio|`` (MALA) or ``|ΔH|`` (HMC) per step.
    warmup_acceptance : Tensor or None
        0-d mean acceptance of the warm-up (``None`` without warm-up).
    trace, energy_trace : Tensor or None
        ``(K, B, *event)`` positions and ``(K, B)`` energies every ``trace_every`` kept steps.
    warnings : tuple of samplers.health.Problem
        What is wrong with the run (divergences, escaped samples, acceptance near 0 or 1, frozen
        chains); empty when nothing is. Each prints as one line; ``.kind`` names it.
    kernel : MCMCKernel or None
        The kernel of the kept steps, with its adapted step size (and HMC's adapted mass): give it
        and ``res.state`` to ``samplers.run.run_steps`` to continue without another warm-up.
    """

    nfe: int
    n_steps: int
    step_size: Tensor
    n_warmup: int = 0
    acceptance: Optional[Tensor] = None
    acceptance_per_chain: Optional[Tensor] = None
    divergences: Optional[int] = None
    energy_error: Optional[Tensor] = None
    warmup_acceptance: Optional[Tensor] = None
    trace: Optional[Tensor] = None
    energy_trace: Optional[Tensor] = None
    warnings: Tuple[Any, ...] = ()
    kernel: Any = None

    @property
    def mean_acceptance(self) -> Optional[float]:
        """Mean acceptance over the kept steps (``None`` without any); never NaN."""
        return _finite_mean(self.acceptance)


@dataclass(frozen=True, eq=False)
class LadderSummary(_ReadsLikeADict):
    """Diagnostics of a noise-ladder run (reverse diffusion, annealed Langevin, predictor–corrector).

    Attributes
    ----------
    nfe : int
        Every evaluation.
    n_steps : int
        Reverse diffusion and predictor–corrector: ladder steps; annealed Langevin: transitions.
    ts : Tensor
        ``(L,)`` the ladder's times (float64, descending).
    corrected : Tensor or None
        ``(L,)`` bool: levels where MCMC transitions ran (``None`` without a kernel).
    acceptance, step_size : Tensor or None
        ``(M,)`` mean acceptance and step size of each corrected level, in ladder order
        (``M = corrected.sum()``; levels without transitions are not listed: no NaN).
    acceptance_per_chain : Tensor or None
        ``(B,)`` mean acceptance per chain over all transitions.
    divergences : int or None
        Divergent proposals over all transitions (non-finite, or ``|energy error| > 1000``).
    corrector_steps : int or None
        Transitions over all levels.
    eta : float or None
        DDIM η of the reverse steps.
    log_weights : Tensor or None
        ``(B,)`` AIS log weights (annealed Langevin with a Metropolis kernel).
    trace, trace_t : Tensor or None
        ``(K, B, *event)`` positions every ``trace_every`` levels and their times ``(K,)``.
    timesteps : Tensor or None
        Integer timesteps of a diffusers scheduler run.
    warnings : tuple of samplers.health.Problem
        What is wrong with the run (see :class:`KernelSummary`); empty when nothing is.
    """

    nfe: int
    n_steps: int
    ts: Tensor
    corrected: Optional[Tensor] = None
    acceptance: Optional[Tensor] = None
    step_size: Optional[Tensor] = None
    acceptance_per_chain: Optional[Tensor] = None
    divergences: Optional[int] = None
    corrector_steps: Optional[int] = None
    eta: Optional[float] = None
    log_weights: Optional[Tensor] = None
    trace: Optional[Tensor] = None
    trace_t: Optional[Tensor] = None
    timesteps: Optional[Tensor] = None
    warnings: Tuple[Any, ...] = ()

    @property
    def mean_acceptance(self) -> Optional[float]:
        """Mean acceptance over the corrected levels (``None`` without any); never NaN."""
        return _finite_mean(self.acceptance)


@dataclass(frozen=True)
class SampleResult:
    """Output of ``sampler.sample``.

    Attributes
    ----------
    samples : Tensor
        ``(B, *event)`` final positions, on ``x0``'s device and dtype.
    info : KernelSummary or LadderSummary
        Typed diagnostics (readable like a dict).
    state : State or None
        The final kernel state (to continue sampling without re-evaluating), if any.
    """

    samples: Tensor
    info: Any
    state: Optional[Any] = None

    @property
    def warnings(self) -> Tuple[Any, ...]:
        """``info.warnings``: what is wrong with the run (empty when nothing is)."""
        return getattr(self.info, "warnings", ())


def _finite_mean(v: Optional[Tensor]) -> Optional[float]:
    if v is None:
        return None
    v = v.detach().double().flatten()
    v = v[torch.isfinite(v)]
    return float(v.mean()) if v.numel() else None
