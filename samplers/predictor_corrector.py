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
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

import ebmcompose as ec

from .adaptation import DualAveraging
from .annealed_langevin import level_state, level_summary, run_level, step_size_exponent
from .base import (
    MCMCKernel,
    Recorder,
    SampleResult,
    check_generator,
    check_positive_int,
    check_step_size,
    finite_rows,
    prior_sample,
    progress_bar,
    raise_if_nonfinite,
    require_energy,
)
from .reverse_diffusion import ddim_coefficients, ddim_update

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
            raise ValueError(
                f"unknown predictor {predictor!r}; use one of {sorted(PREDICTORS)} or a DDIM eta >= 0 "
                "(1: DDPM ancestral, 0: DDIM)"
            )
        return PREDICTORS[key]
    if isinstance(predictor, bool) or not isinstance(predictor, (int, float)) or not math.isfinite(predictor) or predictor < 0:
        raise ValueError(f"predictor must be 'ddpm', 'ddim' or a DDIM eta >= 0, got {predictor!r}")
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
        ``ULA(step_size, n_steps=K)``, ``MALA(...)`` or ``HMC(...)``; its ``step_size`` is the
        base of ``step_rule`` and its ``n_steps`` the default ``corrector_steps``.
    predictor : {"ddpm", "ddim"} or float
        The predictor's DDIM η (``"ddpm"`` = 1, ``"ddim"`` = 0).
    corrector_steps : int, optional
        ``K`` transitions per corrected level (default ``corrector.n_steps``; 0 disables correction).
    window : (float, float)
        ``(t_lo, t_hi)`` in ``[0, 1]``: correction runs at the levels ``t_{i+1}`` with
        ``t_lo <= t <= t_hi`` (the start ``ts[0]`` is never corrected; ``t = 0`` see below).
    step_rule : {"sigma2", "beta", "fixed", "adapt"}
        Corrector step size at level ``t`` (``h`` = ``corrector.step_size``):
        ``"sigma2"``: ``h · sigma(t)²``; ``"beta"``: ``h · beta(t)`` (the continuous rate
        ``−d log alpha_bar/dt``); ``"fixed"``: ``h``; ``"adapt"``: dual averaging per level towards
        ``corrector.target_accept`` (Hoffman & Gelman 2014), starting from ``h · sigma(t)²`` (or a
        doubling/halving search when ``h`` is ``None``) and carried to the next level scaled by
        the ``sigma²`` ratio. For HMC (a leapfrog *length*) the rule's factor enters as its square
        root. At ``t = 0`` the rule is evaluated at the previous level (``sigma(0) = 0``).
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
    log_weights : bool
        Accumulate annealed-importance log-weights ``−(E_{t_{i+1}}(x) − E_{t_i}(x))`` at each
        level change, evaluated at the state *before* the predictor moves it (one extra
        energy-only evaluation per step, counted in ``nfe``). Needs energies and a Metropolis
        corrector. **Exact only for MCMC between levels** (:class:`~samplers.AnnealedLangevin`);
        the predictor's move is not accounted for, so here they are a diagnostic, not unbiased
        importance weights.
    """

    schedule: ec.VPSchedule
    n_steps: int
    corrector: Optional[MCMCKernel] = None
    predictor: Union[str, float] = "ddpm"
    corrector_steps: Optional[int] = None
    window: Tuple[float, float] = (0.0, 1.0)
    step_rule: str = "sigma2"
    final_correction: Optional[bool] = None
    clip_x0: Optional[float] = None
    log_weights: bool = False
    t_max: float = 1.0

    def __post_init__(self):
        if not isinstance(self.schedule, ec.VPSchedule):
            raise TypeError(f"schedule must be an ebmcompose.VPSchedule, got {type(self.schedule).__name__}")
        check_positive_int(self.n_steps, "n_steps")
        if not (isinstance(self.t_max, (int, float)) and 0.0 < float(self.t_max) <= 1.0):
            raise ValueError(f"t_max must be in (0, 1], got {self.t_max!r}")
        if self.corrector is None:
            raise TypeError(
                "PredictorCorrector needs a corrector kernel, e.g. corrector=MALA(step_size=0.1, n_steps=5) "
                "or ULA(...) for score-only models"
            )
        for attr in ("init", "step", "run", "needs_energy", "n_steps"):
            if not hasattr(self.corrector, attr):
                raise TypeError(
                    f"corrector must be an MCMC kernel such as ULA(...), MALA(...) or HMC(...) (with "
                    f".{attr}), got {type(self.corrector).__name__}"
                )
        _predictor_eta(self.predictor)
        if self.corrector_steps is not None:
            check_positive_int(self.corrector_steps, "corrector_steps", allow_zero=True)
        try:
            lo, hi = (float(v) for v in self.window)
        except (TypeError, ValueError):
            raise ValueError(f"window must be a pair (t_lo, t_hi) of times in [0, 1], got {self.window!r}") from None
        if not (0.0 <= lo <= hi <= 1.0):
            raise ValueError(f"window must satisfy 0 <= t_lo <= t_hi <= 1, got {self.window!r}")
        object.__setattr__(self, "window", (lo, hi))
        if self.step_rule not in STEP_RULES:
            raise ValueError(f"unknown step_rule {self.step_rule!r}; valid: {', '.join(STEP_RULES)}")
        if self.step_rule == "adapt":
            check_step_size(self.corrector.step_size)
        else:
            check_step_size(self.corrector.step_size, name="corrector.step_size", allow_none=False)
        if self.clip_x0 is not None and not (isinstance(self.clip_x0, (int, float)) and self.clip_x0 > 0):
            raise ValueError(f"clip_x0 must be None (no clipping) or a positive number, got {self.clip_x0!r}")
        if self.log_weights and not self.corrector.needs_energy:
            raise ValueError(
                "log_weights=True needs a Metropolis corrector (MALA or HMC): AIS weights are "
                "exact only when each level's transitions leave that level's target invariant"
            )

    # ------------------------------------------------------------------ pieces
    @property
    def eta(self) -> float:
        """The predictor's DDIM η."""
        return _predictor_eta(self.predictor)

    @property
    def n_corrector_steps(self) -> int:
        """``K``: corrector transitions per corrected level."""
        return self.corrector.n_steps if self.corrector_steps is None else self.corrector_steps

    def ladder(self) -> Tensor:
        """The ladder ``(n_steps + 1,)`` (float64, ``t_max`` → 0)."""
        return self.schedule.timesteps(self.n_steps, t_max=float(self.t_max), dtype=torch.float64)

    def corrected_levels(self, energy: Optional[ec.Energy] = None) -> List[bool]:
        """``(n_steps + 1,)`` flags: whether correction runs at ``ts[i]`` (``ts[0]`` never)."""
        ts = self.ladder().tolist()
        lo, hi = self.window
        final = self.final_correction
        if final is None:
            final = energy is not None and not energy.time_dependent
        out = [False]
        for i, t in enumerate(ts[1:], start=1):
            ok = self.n_corrector_steps > 0 and lo <= t <= hi
            if i == len(ts) - 1:
                ok = ok and bool(final)
            out.append(ok)
        return out

    def rule_factors(self) -> List[float]:
        """``(n_steps + 1,)`` factors multiplying ``corrector.step_size`` per level (see ``step_rule``)."""
        ts = self.ladder()
        ts_rule = ts.clone()
        ts_rule[-1] = ts[-2]  # sigma(0) = 0: the final level uses the previous level's factor
        if self.step_rule == "fixed":
            f = torch.ones_like(ts)
        elif self.step_rule == "beta":
            f = self.schedule.beta(ts_rule)
        else:  # sigma2, adapt (the carry rule)
            f = self.schedule.sigma(ts_rule) ** 2
        return (f ** step_size_exponent(self.corrector)).tolist()

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
        callback: Optional[Callable[[int, Tensor, float], Any]] = None,
        trace_every: int = 0,
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
            ``callback(i, x, t)`` after predictor step ``i`` and its correction, ``x`` at ``t = ts[i+1]``.
        trace_every : int
            Keep ``x`` after every ``trace_every``-th step (``info["trace"]`` ``(T, B, *event)``,
            ``info["trace_t"]``).

        Returns
        -------
        SampleResult
            ``samples`` ``(B, *event)`` at ``t = 0``; ``info``: ``"nfe"``, ``"n_steps"``, ``"ts"``
            ``(n_steps + 1,)``, ``"corrected"`` ``(n_steps + 1,)`` bool, ``"acceptance"`` and
            ``"step_size"`` ``(n_steps + 1,)`` per level (NaN where not corrected),
            ``"acceptance_per_chain"`` ``(B,)``, ``"divergences"``, ``"corrector_steps"`` (total
            transitions) and ``"log_weights"`` ``(B,)`` when requested.

        Raises
        ------
        ec.ScoreOnlyError
            Metropolis corrector with a score-only energy (use a ULA corrector).
        NonFiniteStateError
            The state became NaN/inf; names the level.
        """
        check_positive_int(trace_every, "trace_every", allow_zero=True)
        kernel = self.corrector
        corrected = self.corrected_levels(energy)
        if kernel.needs_energy and (any(corrected) or self.log_weights):
            require_energy(energy, f"the {type(kernel).__name__} corrector of PredictorCorrector")
        x = prior_sample(x0, shape, generator, device, dtype, "PredictorCorrector")
        check_generator(generator, x)
        ts_t = self.ladder()
        ts = ts_t.tolist()
        steps = ddim_coefficients(self.schedule, ts_t, self.eta)
        factors = self.rule_factors()
        adapt = DualAveraging(kernel.target_accept) if self.step_rule == "adapt" else None
        K = self.n_corrector_steps
        weights = self.log_weights

        nfe = 0
        finite: List[Tensor] = []
        recorders: List[Optional[Recorder]] = [None]
        used: List[Optional[Union[float, Tensor]]] = [None]
        trace, trace_t = [], []
        log_w = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype) if weights else None
        h_carry: Optional[Union[float, Tensor]] = None  # adapted step size and the level it belongs to
        h_level = 0

        samples: Tensor = x
        state, n, ok = level_state(kernel, energy, x, ts[0], validate=True, need_energy=weights)
        nfe += n
        finite.append(ok)
        for i in progress_bar(len(steps), progress, "predictor-corrector"):
            j = i + 1  # the level this step lands on
            if weights:  # AIS increment at the pre-predictor state (diagnostic: see class notes)
                tt = torch.full((x.shape[0],), ts[j], device=x.device, dtype=x.dtype)
                ev = energy.evaluate(state.x, tt, energy=True, grad=False, validate=False)
                nfe += ev.nfe
                log_w = log_w - (ev.energy - state.energy)
            x_new = ddim_update(state.x, state.grad, steps[i], generator, self.clip_x0)
            last = j == len(ts) - 1
            if last and not corrected[j]:
                finite.append(finite_rows(x_new).all())
                samples, state = x_new, None  # landed on t = 0 without evaluating the model there
                recorders.append(None)
                used.append(None)
            else:
                need_e = kernel.needs_energy if corrected[j] else weights
                state, n, ok = level_state(kernel, energy, x_new, ts[j], previous=state, need_energy=need_e)
                nfe += n
                if corrected[j]:
                    if adapt is None:
                        h = kernel.step_size * factors[j]
                    elif h_carry is None:
                        if kernel.step_size is None:
                            probe = Recorder(x.shape[0])
                            h = kernel.initial_step_size(energy, state, generator, probe)
                            nfe += probe.nfe
                        else:
                            h = kernel.step_size * factors[j]
                    else:
                        h = h_carry * (factors[j] / factors[h_level])
                    used.append(h)
                    state, h_out, rec = run_level(kernel, energy, state, K, h, generator, adapt)
                    if adapt is not None:
                        h_carry, h_level = h_out, j
                    recorders.append(rec)
                else:
                    recorders.append(None)
                    used.append(None)
                finite.append(ok & finite_rows(state.x).all())
                samples = state.x
            if trace_every and j % trace_every == 0:
                trace.append(samples.detach().clone())
                trace_t.append(ts[j])
            if callback is not None:
                callback(i, samples, ts[j])
        raise_if_nonfinite(finite, ts, "PredictorCorrector", _NONFINITE_HINT)

        done = [r for r in recorders if r is not None]
        nan = float("nan")
        info = {
            "nfe": nfe + sum(r.nfe for r in done),
            "n_steps": len(steps),
            "ts": ts_t,
            "eta": self.eta,
            "corrected": torch.tensor(corrected),
            "corrector_steps": sum(r.n_steps for r in done),
            "step_size": torch.tensor(
                [nan if h is None else float(h) for h in used], dtype=torch.float64
            ),
        }
        acc = [r if r is not None else Recorder(x.shape[0]) for r in recorders]
        info["acceptance"] = level_summary(acc, x)
        steps_done = sum(r.n_steps for r in done)
        if steps_done:
            info["acceptance_per_chain"] = sum(r.acc_sum for r in done if r.acc_sum is not None) / steps_done
            info["divergences"] = int(sum(r.divergent.sum() for r in done if r.divergent is not None))
        if log_w is not None:
            info["log_weights"] = log_w
        if trace:
            info["trace"] = torch.stack(trace)
            info["trace_t"] = torch.tensor(trace_t, dtype=torch.float64)
        return SampleResult(samples=samples, info=info, state=state)
