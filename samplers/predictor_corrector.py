"""Predictor–corrector sampling down a VP noise ladder (Song et al. 2021, score SDE, Algorithm 1).

For each step of the ladder ``ts = schedule.timesteps(n_steps)`` (1 → 0):

1. **predictor**: one reverse-diffusion step ``t_i → t_{i+1}`` (DDPM ancestral, DDIM or DDIM-η,
   :func:`samplers.reverse_diffusion.ddim_update`);
2. **corrector**: ``K`` transitions of an MCMC kernel (:class:`~samplers.ULA`,
   :class:`~samplers.MALA`, :class:`~samplers.HMC`) targeting ``p_{t_{i+1}} ∝ exp(−E(x, t_{i+1}))``.

This is how Du et al. (2023, "Reduce, Reuse, Recycle") fix compositions: the sum of noised
energies of ``a`` and ``b`` is *not* the noised energy of the product, so the predictor alone
samples the product with a bias, while correctors whose stationary distribution is the composed
energy at each level pull the samples back.

Caching. The corrector's final state holds ``∇x E(x, t_{i+1})``, exactly what the next predictor
step needs, so it is reused (no re-evaluation at the same ``x`` and ``t``). NFE without
adaptation or weights::

    nfe = n_steps                                       (one evaluation per predictor step, at ts[:-1])
        + K · nfe_per_transition · (#corrected levels)  (1 for ULA/MALA, n_leapfrog for HMC)
        + 1 if the final level t = 0 is corrected       (its initial evaluation feeds no predictor)

The final level ``t = 0``: the last predictor step lands there with the x0-prediction and the
model is not evaluated at ``t = 0`` — unless ``final_correction`` is on, which needs an energy
that is well defined at ``t = 0``: a static energy (auto), or an analytic diffused energy (pass
``final_correction=True``); ε-networks divide by ``σ_0 = 0`` there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

import ebmcompose as ec

from . import health
from .adaptation import DualAveraging
from .annealed_langevin import step_size_exponent
from .base import MCMCKernel, check_positive_int, require_energy
from .ladder import (LadderState, check_kernel, check_time_dependent, correct, level_info, level_state, prior_sample,
                     step_factors,
                     run_ladder, summarise)
from .result import SampleResult
from .reverse_diffusion import ddim_coefficients, ddim_update
from .run import search_step_size

__all__ = ["PredictorCorrector", "STEP_RULES", "PREDICTORS"]

#: Valid ``step_rule`` values.
STEP_RULES = ("sigma2", "beta", "fixed", "adapt")
#: Named predictors and their DDIM η.
PREDICTORS = {"ddpm": 1.0, "ddim": 0.0}

_NONFINITE_HINT = (
    "use a smaller corrector step_size (or step_rule='adapt'), more steps, or clip the x0 "
    "prediction (clip_x0=...)"
)


def _predictor_eta(predictor) -> float:
    if isinstance(predictor, str):
        key = predictor.lower()
        if key not in PREDICTORS:
            raise ec.InputError(
                f"unknown predictor {predictor!r}; use one of {sorted(PREDICTORS)} or a DDIM eta >= 0 "
                "(1: DDPM ancestral, 0: DDIM)"
            )
        return PREDICTORS[key]
    if isinstance(predictor, bool) or not isinstance(predictor, (int, float)) or not math.isfinite(predictor) or predictor < 0:
        raise ec.InputError(f"predictor must be 'ddpm', 'ddim' or a DDIM eta >= 0, got {predictor!r}")
    return float(predictor)


@dataclass(frozen=True)
class PredictorCorrector:
    """Reverse-diffusion predictor + MCMC corrector at every noise level (Song et al. 2021, Alg. 1).

    Parameters
    ----------
    schedule : ec.VPSchedule
        Noise schedule the energy's ``t`` refers to.
    n_steps : int
        Predictor steps; ladder ``schedule.timesteps(n_steps, t_max)`` ``(n_steps + 1,)`` from
        ``t_max`` to 0.
    corrector : MCMCKernel
        ``ULA(...)``, ``MALA(...)`` or ``HMC(...)``; its ``step_size`` is the base of
        ``step_rule`` (``None``: searched and adapted, see ``step_rule``).
    predictor : {"ddpm", "ddim"} or float
        The predictor's DDIM η (``"ddpm"`` = 1, ``"ddim"`` = 0).
    n_corrector_steps : int, optional
        ``K`` corrector transitions per corrected level (0 disables correction). Default: the old
        spelling ``corrector_steps`` if given, else ``corrector.n_steps``; resolved at construction.
    window : (float, float)
        ``(t_lo, t_hi)`` in ``[0, 1]``: correction runs at the levels ``t_{i+1}`` with
        ``t_lo <= t <= t_hi`` (the start ``ts[0]`` is never corrected; ``t = 0`` see below).
    step_rule : {"sigma2", "beta", "fixed", "adapt"} or None
        Corrector step size at level ``t`` (``h`` = ``corrector.step_size``):
        ``"sigma2"``: ``h · sigma(t)²``; ``"beta"``: ``h · beta(t)`` (the continuous rate
        ``−d log alpha_bar/dt``); ``"fixed"``: ``h``; ``"adapt"``: dual averaging per level towards
        ``corrector.target_accept`` (Hoffman & Gelman 2014), starting from ``h · sigma(t)²`` — or,
        when ``h`` is ``None``, from a doubling/halving search at the first corrected level started
        at the dimension-aware guess ``0.1 · sigma(t)² · d^(-1/3)`` (``d`` = event size) — and
        carried to the next level scaled by the ``sigma²`` ratio. For HMC (a leapfrog *length*)
        the factors enter as their square roots. At ``t = 0`` the rule is evaluated at the previous
        level (``sigma(0) = 0``). ``None`` (default): ``"sigma2"``, or ``"adapt"`` when the
        corrector has no step size.
    final_correction : bool, optional
        Correct at the final level ``t = 0``. ``None`` (default): only for static energies
        (``energy.time_dependent`` false); ``True`` for energies that are exact at ``t = 0``
        (analytic diffused densities); never for ε-networks.
    clip_x0 : float, optional
        Clamp the predictor's x0-prediction (see :class:`~samplers.ReverseDiffusion`).
    t_max : float
        Start of the ladder (default 1.0). With the cosine schedule (``alpha_bar(1)`` ≈ 1e-8) a
        composition whose score does not match the ``N(0, I)`` prior at ``t_max`` is thrown far
        out by the first predictor step (see :class:`~samplers.ReverseDiffusion`); start lower
        (e.g. ``t_max=0.98``) or use ``clip_x0``.
    corrector_steps : int, optional
        Old spelling of ``n_corrector_steps``.
    static_ok : bool
        Accept a static energy (one that reads no ``t``); refused by default, since the predictor
        steps through noised densities that a static energy does not describe.
    """

    schedule: ec.VPSchedule
    n_steps: int
    corrector: Optional[MCMCKernel] = None
    predictor: Union[str, float] = "ddpm"
    n_corrector_steps: Optional[int] = None
    window: Tuple[float, float] = (0.0, 1.0)
    step_rule: Optional[str] = None
    final_correction: Optional[bool] = None
    clip_x0: Optional[float] = None
    t_max: float = 1.0
    corrector_steps: Optional[int] = None
    static_ok: bool = False

    def __post_init__(self):
        if not isinstance(self.schedule, ec.VPSchedule):
            raise TypeError(f"schedule must be an ebmcompose.VPSchedule, got {type(self.schedule).__name__}")
        check_positive_int(self.n_steps, "n_steps")
        if not (isinstance(self.t_max, (int, float)) and 0.0 < float(self.t_max) <= 1.0):
            raise ec.InputError(f"t_max must be in (0, 1], got {self.t_max!r}")
        if self.corrector is None:
            raise TypeError(
                "PredictorCorrector needs a corrector kernel, e.g. corrector=MALA(n_steps=5) "
                "or ULA(...) for score-only models"
            )
        check_kernel(self.corrector, "corrector")
        _predictor_eta(self.predictor)
        for name in ("n_corrector_steps", "corrector_steps"):
            if getattr(self, name) is not None:
                check_positive_int(getattr(self, name), name, allow_zero=True)
        k, old = self.n_corrector_steps, self.corrector_steps
        if k is not None and old is not None and k != old:
            raise ec.InputError(f"n_corrector_steps={k} and its old spelling corrector_steps={old} disagree; pass one")
        object.__setattr__(self, "n_corrector_steps", k if k is not None else old if old is not None else self.corrector.n_steps)
        try:
            lo, hi = (float(v) for v in self.window)
        except (TypeError, ValueError):
            raise ec.InputError(f"window must be a pair (t_lo, t_hi) of times in [0, 1], got {self.window!r}") from None
        if not (0.0 <= lo <= hi <= 1.0):
            raise ec.InputError(f"window must satisfy 0 <= t_lo <= t_hi <= 1, got {self.window!r}")
        object.__setattr__(self, "window", (lo, hi))
        rule = self.step_rule
        if rule is None:
            rule = "adapt" if self.corrector.step_size is None else "sigma2"
            object.__setattr__(self, "step_rule", rule)
        if rule not in STEP_RULES:
            raise ec.InputError(f"unknown step_rule {rule!r}; valid: {', '.join(STEP_RULES)}")
        if rule != "adapt" and self.corrector.step_size is None:
            raise ec.InputError(
                f"step_rule={rule!r} scales corrector.step_size, which is None; give the corrector a "
                "step_size or use step_rule='adapt' (the default for a corrector without one)"
            )
        if self.clip_x0 is not None and not (isinstance(self.clip_x0, (int, float)) and self.clip_x0 > 0):
            raise ec.InputError(f"clip_x0 must be None (no clipping) or a positive number, got {self.clip_x0!r}")

    # ------------------------------------------------------------------ pieces
    @property
    def eta(self) -> float:
        """The predictor's DDIM η."""
        return _predictor_eta(self.predictor)

    def ladder(self) -> Tensor:
        """The ladder ``(n_steps + 1,)`` (float64, ``t_max`` → 0)."""
        return self.schedule.timesteps(self.n_steps, t_max=float(self.t_max), dtype=torch.float64)

    def corrected_levels(self, energy: Optional[ec.Energy] = None) -> List[bool]:
        """``(n_steps + 1,)`` flags: whether correction runs at ``ts[i]`` (``ts[0]`` never)."""
        ts = self.ladder().tolist()
        lo, hi = self.window
        final = self.final_correction
        if final is None:
            final = energy is not None and energy.is_static
        out = [False]
        for i, t in enumerate(ts[1:], start=1):
            ok = self.n_corrector_steps > 0 and lo <= t <= hi
            if i == len(ts) - 1:
                ok = ok and bool(final)
            out.append(ok)
        return out

    def rule_factors(self) -> List[float]:
        """``(n_steps + 1,)`` factors multiplying ``corrector.step_size`` per level (see ``step_rule``)."""
        return step_factors(self.schedule, self.ladder(), self.step_rule, self.corrector)

    # ------------------------------------------------------------------ the loop
    def sample(
        self,
        energy: ec.Energy,
        x0: Optional[Tensor] = None,
        *,
        generator: Optional[torch.Generator] = None,
        shape: Optional[Sequence[int]] = None,
        device=None,
        dtype: Optional[torch.dtype] = None,
        progress: bool = False,
        callback: Optional[Callable] = None,
        trace_every: int = 0,
        on_divergence: str = "warn",
    ) -> SampleResult:
        """Run predictor and corrector down the ladder to ``t = 0``.

        Parameters
        ----------
        energy : ec.Energy
            Time-dependent energy (or score-only model with a ULA corrector).
        x0 : Tensor, optional
            Starting noise ``x_T`` ``(B, *event)``, used as given; when omitted ``x_T ~ N(0, I)``
            of ``shape`` is drawn from ``generator`` (on the generator's device, or ``device``).
        generator : torch.Generator, optional
            Source of all randomness (same seed → identical samples).
        progress : bool
            tqdm bar over levels.
        callback : callable, optional
            ``callback(i, state, info)`` after predictor step ``i`` and its correction: a
            :class:`~samplers.ladder.LadderState` (``state.x`` at ``state.t = ts[i+1]``) and a
            :class:`~samplers.ladder.LevelInfo`.
        trace_every : int
            Keep ``x`` after every ``trace_every``-th step (``info["trace"]`` ``(T, B, *event)``,
            ``info["trace_t"]``).
        on_divergence : {"warn", "raise", "ignore"}
            What to do when the run diverged or looks wrong: ``info.warnings`` lists it in every
            case (see :func:`samplers.health.finish`).

        Returns
        -------
        SampleResult
            ``samples`` ``(B, *event)`` at ``t = 0``; ``info`` a
            :class:`~samplers.result.LadderSummary`: ``nfe``, ``n_steps``, ``ts``
            ``(n_steps + 1,)``, ``corrected`` ``(n_steps + 1,)`` bool, ``acceptance`` and
            ``step_size`` ``(M,)`` for the ``M`` corrected levels, ``acceptance_per_chain``
            ``(B,)``, ``divergences``, ``corrector_steps`` (total transitions), ``eta``.

        Raises
        ------
        ec.ScoreOnlyError
            Metropolis corrector with a score-only energy (use a ULA corrector).
        NonFiniteStateError
            The state became NaN/inf; names the level.
        """
        check_positive_int(trace_every, "trace_every", allow_zero=True)
        health.check_on_divergence(on_divergence)
        check_time_dependent(energy, "PredictorCorrector", self.static_ok)
        kernel, K = self.corrector, self.n_corrector_steps
        corrected = self.corrected_levels(energy)
        if kernel.needs_energy and any(corrected):
            require_energy(energy, f"the {type(kernel).__name__} corrector of PredictorCorrector")
        x = prior_sample(x0, shape, generator, device, dtype, "PredictorCorrector")
        ts_t = self.ladder()
        ts = ts_t.tolist()
        energy.check_input(x, ts[0])
        steps = ddim_coefficients(self.schedule, ts_t, self.eta)
        factors = self.rule_factors()
        adapt = DualAveraging(kernel.target_accept) if self.step_rule == "adapt" else None
        d = max(int(x[:1].numel()), 1)
        guess_scale = kernel.initial_step_size_guess * d ** (-step_size_exponent(kernel) / 3.0)
        last = len(ts) - 1

        def move(i: int, ls: LadderState):
            j = i + 1  # the level this step lands on
            prev = ls.kernel_state
            x_new = ddim_update(prev.x, prev.grad, steps[i], generator, self.clip_x0)
            if j == last and not corrected[j]:  # t = 0 reached without evaluating the model there
                return LadderState(x=x_new, t=ts[j], level=j), level_info(ts[j], 0)
            state, nfe = level_state(kernel, energy, x_new, ts[j], previous=prev,
                                     need_energy=kernel.needs_energy and corrected[j])
            if not corrected[j]:
                return LadderState(x=x_new, t=ts[j], level=j, kernel_state=state, step_size=ls.step_size), level_info(ts[j], nfe)
            if adapt is not None and ls.step_size is not None:  # carried, per unit rule factor
                h = ls.step_size * factors[j]
            elif kernel.step_size is None:
                h, n = search_step_size(kernel, energy, state, generator, guess=guess_scale * factors[j])
                nfe += n
            else:
                h = kernel.step_size * factors[j]
            state, k_out, rec = correct(kernel.with_step_size(h), energy, state, K, generator, adapt)
            carry = k_out.step_size / factors[j] if adapt is not None else None
            return (LadderState(x=state.x, t=ts[j], level=j, kernel_state=state, step_size=carry),
                    level_info(ts[j], nfe, rec, h))

        start, nfe0 = level_state(kernel, energy, x, ts[0], need_energy=False)
        final, infos, trace, trace_t = run_ladder(
            "PredictorCorrector", len(steps), LadderState(x=x, t=ts[0], level=0, kernel_state=start), move,
            progress=progress, callback=callback, trace_every=trace_every, hint=_NONFINITE_HINT,
        )
        info = summarise(ts, infos, len(steps), trace, trace_t, corrected=corrected, extra_nfe=nfe0,
                         corrector_steps=0, eta=self.eta)
        return health.finish(SampleResult(samples=final.x, info=info, state=final.kernel_state), x,
                             sampler="PredictorCorrector", on_divergence=on_divergence,
                             metropolis=kernel.needs_energy, adapted=self.step_rule == "adapt", moves_every_chain=True)
