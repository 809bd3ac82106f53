"""Samplers for the scene models, built by name at a given budget of network evaluations (NFE).

    sampler = build_sampler("pc-mala", schedule, nfe=100)
    res = sampler.sample(energy, shape=(n, 3, 32, 32), generator=g)

Names (:data:`SAMPLERS`):

``ddpm`` / ``ddim``
    :class:`samplers.ReverseDiffusion` with ``eta`` 1 / 0, ``nfe`` steps.
``annealed-ula``
    :class:`samplers.AnnealedLangevin` with a ULA kernel, :data:`LANGEVIN_STEPS` transitions per
    level (NFE = levels · (1 + transitions)).
``pc-ula`` / ``pc-mala`` / ``pc-hmc``
    :class:`samplers.PredictorCorrector`, a DDPM predictor and one corrector transition per
    level (HMC: :data:`HMC_LEAPFROG` leapfrog steps); NFE = ``n + K·p·(n − 1)``, ``p`` evaluations
    per transition. MALA and HMC need an energy (the energy-parameterised models).

Corrector step sizes start from ``h · σ_t²`` (ULA/MALA; ``sqrt(h) · σ_t`` for HMC's leapfrog step),
with ``h`` from :data:`STEP_SIZES`: fixed by that rule for ULA (``step_rule="sigma2"``), adapted per
level by dual averaging towards the kernel's target acceptance for MALA and HMC
(``step_rule="adapt"``; no search, so no evaluations beyond the budget); the annealed Langevin ``step_size`` is ``h · σ(t_min)²`` at its last level
(the same rule). The x0-prediction of the predictors is clipped to ``[-1, 1]`` (images). The
budget is met from below: :func:`build_sampler`'s sampler uses at most ``nfe`` evaluations.

Everything sampler-specific is in :func:`build_sampler` (one place to adapt when the samplers'
public calls change).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import ebmcompose as ec

__all__ = ["SAMPLERS", "NEEDS_ENERGY", "STEP_SIZES", "build_sampler", "sampler_nfe"]

#: Sampler names, in the order of the study's tables.
SAMPLERS = ("ddpm", "ddim", "annealed-ula", "pc-ula", "pc-mala", "pc-hmc")
#: Samplers that need energies (Metropolis corrections).
NEEDS_ENERGY = frozenset({"pc-mala", "pc-hmc"})
#: Base corrector step ``h`` (multiplied by ``σ_t²``), by sampler.
STEP_SIZES = {"annealed-ula": 0.05, "pc-ula": 0.05, "pc-mala": 0.05, "pc-hmc": 0.05}
#: ULA transitions per level of annealed Langevin, and leapfrog steps of HMC.
LANGEVIN_STEPS = 3
HMC_LEAPFROG = 2
#: Last level of annealed Langevin.
LANGEVIN_T_MIN = 0.02
#: Clip of the predictors' x0-prediction (images live in [-1, 1]).
CLIP_X0 = 1.0


def _pc_levels(nfe: int, per_level: int) -> int:
    """Largest ``n`` with ``n + per_level · (n − 1) <= nfe``."""
    return max(1, (nfe + per_level) // (1 + per_level))


def build_sampler(name: str, schedule: ec.VPSchedule, nfe: int, *, step_size: Optional[float] = None) -> Any:
    """The sampler ``name`` at a budget of ``nfe`` network evaluations.

    Parameters
    ----------
    name : str
        One of :data:`SAMPLERS`.
    schedule : VPSchedule
        The model's noise schedule.
    nfe : int
        Budget of network evaluations (each evaluates all leaves of an expression in one batch).
    step_size : float, optional
        Base corrector step ``h`` (default :data:`STEP_SIZES`).

    Raises
    ------
    ebmcompose.InputError
        Unknown name or a budget too small for the sampler.
    """
    from samplers import HMC, MALA, ULA, AnnealedLangevin, PredictorCorrector, ReverseDiffusion

    if name not in SAMPLERS:
        raise ec.InputError(f"unknown sampler {name!r}; valid samplers are {', '.join(SAMPLERS)}")
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 2:
        raise ec.InputError(f"the NFE budget must be an integer >= 2, got {nfe!r}")
    h = STEP_SIZES.get(name) if step_size is None else float(step_size)
    if name in ("ddpm", "ddim"):
        return ReverseDiffusion(schedule, nfe, eta=1.0 if name == "ddpm" else 0.0, clip_x0=CLIP_X0)
    if name == "annealed-ula":
        levels = max(1, nfe // (1 + LANGEVIN_STEPS))
        last = float(schedule.sigma(ec_tensor(LANGEVIN_T_MIN))) ** 2
        return AnnealedLangevin(schedule, levels, LANGEVIN_STEPS, step_size=h * last, kernel=ULA(step_size=h, n_steps=1),
                                t_min=LANGEVIN_T_MIN)
    if name == "pc-hmc":
        kernel = HMC(step_size=h, n_leapfrog=HMC_LEAPFROG, n_steps=1)
        per_level = HMC_LEAPFROG
    else:
        kernel = (MALA if name == "pc-mala" else ULA)(step_size=h, n_steps=1)
        per_level = 1
    n = _pc_levels(nfe, per_level)
    rule = "adapt" if kernel.needs_energy else "sigma2"
    return PredictorCorrector(schedule, n, corrector=kernel, predictor="ddpm", step_rule=rule, clip_x0=CLIP_X0)


def ec_tensor(t: float):
    """A 0-d float64 tensor (schedule arguments)."""
    import torch

    return torch.tensor(float(t), dtype=torch.float64)


def sampler_nfe(name: str, nfe: int) -> Dict[str, int]:
    """The structure :func:`build_sampler` picks for a budget: ``{"levels", "per_level", "nfe"}``."""
    if name in ("ddpm", "ddim"):
        return {"levels": nfe, "per_level": 0, "nfe": nfe}
    if name == "annealed-ula":
        levels = max(1, nfe // (1 + LANGEVIN_STEPS))
        return {"levels": levels, "per_level": LANGEVIN_STEPS, "nfe": levels * (1 + LANGEVIN_STEPS)}
    per = HMC_LEAPFROG if name == "pc-hmc" else 1
    n = _pc_levels(nfe, per)
    return {"levels": n, "per_level": per, "nfe": n + per * (n - 1)}
