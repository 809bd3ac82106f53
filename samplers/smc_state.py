"""What :class:`~samplers.SMC` carries down the ladder and reports: its state, per-level info and summary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor

from .ladder import LadderState, LevelInfo
from .result import LadderSummary

__all__ = ["SMCState", "SMCLevelInfo", "SMCSummary"]


@dataclass(frozen=True)
class SMCState(LadderState):
    """:class:`~samplers.ladder.LadderState` plus the particle weights.

    Attributes
    ----------
    log_weights : Tensor
        ``(B,)`` running log weights since the last resampling (float32 or wider).
    log_z : Tensor
        ``(G,)`` ``log Ẑ`` of each population accumulated at its resampling events so far (``log Ẑ``
        of the level is ``log_z + log mean exp(log_weights)`` over the population).
    fkc_rate : Tensor or None
        ``(B,)`` FKC rate ``r(x, t) = ½(|S|² − Σ β_i |s_i|²)`` at the particles (``weights="fkc"``
        only; :mod:`samplers.fkc`).
    """

    log_z: Optional[Tensor] = None
    fkc_rate: Optional[Tensor] = None


@dataclass(frozen=True)
class SMCLevelInfo(LevelInfo):
    """:class:`~samplers.ladder.LevelInfo` plus ``ess`` (0-d, after reweighting, before resampling)
    and ``resampled`` (0-d bool)."""

    ess: Optional[Tensor] = None
    resampled: Optional[Tensor] = None


@dataclass(frozen=True, eq=False)
class SMCSummary(LadderSummary):
    """:class:`~samplers.result.LadderSummary` of an SMC run, plus:

    Attributes
    ----------
    log_z : float or None
        ``log Ẑ`` of the final target ``∫ exp(−E(x, t_min)) dx`` (module notes); with FKC weights
        an estimate of ``log ∫ Π_i q_i(x, t_min)^{β_i} dx`` that is consistent only as the steps
        shrink (module notes: "Score-only energies"). ``None`` with several populations.
    log_z_populations : Tensor or None
        ``(G,)`` float64 ``log Ẑ`` of each population (``sample(..., populations=G)``, ``G > 1``).
    populations : int
        ``G`` (1: one population of all particles).
    weights : str
        ``"energy"`` or ``"fkc"``: the importance weights this run used.
    ess : Tensor
        ``(n_steps + 1,)`` effective sample size in ``(0, B]`` at each level after reweighting
        (level 0: the start), before resampling; ``(n_steps + 1, G)`` (in ``(0, M]``) per population.
    resampled : Tensor
        ``(n_steps + 1,)`` bool: levels where the population was resampled (``ESS < threshold · B``;
        the last level always); ``(n_steps + 1, G)`` per population.
    n_resampled : int
        Resampling events (``resampled.sum()``).
    particles : int
        ``B``.
    scheme : str
        Resampling scheme.
    """

    log_z: Optional[float] = None
    log_z_populations: Optional[Tensor] = None
    populations: Optional[int] = None
    ess: Optional[Tensor] = None
    resampled: Optional[Tensor] = None
    n_resampled: Optional[int] = None
    particles: Optional[int] = None
    scheme: Optional[str] = None
    weights: Optional[str] = None
