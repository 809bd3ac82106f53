"""Reverse diffusion down a VP noise ladder: DDPM ancestral sampling, DDIM and everything between.

One step from ``t`` to ``s < t`` (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit
Models", eqs. 12 and 16), written with ``alpha_bar`` of :class:`ebmcompose.VPSchedule`::

    ε̂      = sigma_t · ∇x E(x, t)                       (score = −ε/sigma_t, so only the score is used)
    x̂0     = (x − sigma_t ε̂) / sqrt(alpha_bar_t)          (x0-prediction, optionally clipped)
    σ_η    = η · sqrt((1 − alpha_bar_s)/(1 − alpha_bar_t)) · sqrt(1 − alpha_bar_t/alpha_bar_s)
    x_s    = sqrt(alpha_bar_s) x̂0 + sqrt(1 − alpha_bar_s − σ_η²) ε̂ + σ_η z,    z ~ N(0, I)

``η = 1`` is DDPM's ancestral sampler with the posterior variance ``β̃`` (Ho et al. 2020, eq. 7;
diffusers' ``variance_type="fixed_small"``), ``η = 0`` is deterministic DDIM. The model is
evaluated at ``ts[:-1]`` of the ladder ``schedule.timesteps(n_steps)`` only; the last step lands
on ``t = 0`` where ``alpha_bar = 1`` and ``σ_η = 0``, so it returns the x0-prediction.

A diffusers scheduler can be used as the stepping rule instead
(:meth:`ReverseDiffusion.from_diffusers`): timestep ``k`` of a scheduler trained with ``N`` steps
is time ``t = (k + 1) / N`` (see :meth:`ebmcompose.VPSchedule.from_diffusers`); fractional
timesteps (LMS, Euler) are kept as they are, and σ-space schedulers (Euler, Euler-ancestral, LMS)
get their input scaling from ``scheduler.scale_model_input``.
"""

from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

import ebmcompose as ec
from ebmcompose.pipelines.schedulers import epsilon_scheduler

from . import health
from .base import check_positive_int, evaluate, randn_like
from .ladder import LadderState, check_time_dependent, level_info, prior_sample, run_ladder, summarise
from .result import SampleResult

__all__ = ["ReverseDiffusion", "DiffusionStep", "ddim_coefficients", "ddim_update", "dynamic_threshold"]

_NONFINITE_HINT = (
    "use more steps (n_steps), a smaller eta, clip the x0 prediction (clip_x0=...), or check "
    "that the model's score is finite at every t of the ladder"
)


@dataclass(frozen=True)
class DiffusionStep:
    """Coefficients of one DDIM/DDPM step from ``t`` to ``s`` (Python floats, float64 accuracy).

    Attributes
    ----------
    t, s : float
        Current and next time (``s < t``).
    alpha_t, sigma_t, alpha_s, sigma_s : float
        ``sqrt(alpha_bar)`` and ``sqrt(1 - alpha_bar)`` at ``t`` and ``s``.
    noise_std : float
        ``σ_η`` of DDIM eq. 16 (0 for deterministic steps and for the step landing on ``t=0``).
    eps_coef : float
        ``sqrt(1 − alpha_bar_s − σ_η²)``, the weight of ε̂ ("direction pointing to x_t").
    """

    t: float
    s: float
    alpha_t: float
    sigma_t: float
    alpha_s: float
    sigma_s: float
    noise_std: float
    eps_coef: float


def ddim_coefficients(schedule: ec.VPSchedule, ts: Tensor, eta: float) -> List[DiffusionStep]:
    """Per-step coefficients of DDIM eq. 12/16 along the descending ladder ``ts`` ``(n + 1,)``.

    Computed once on the CPU in float64 so the sampling loop never synchronises the device.
    """
    tt = ts.detach().to("cpu", torch.float64)
    log_ab = schedule.log_alpha_bar(tt)
    ab = torch.exp(log_ab)
    sig = schedule.sigma(tt)
    steps = []
    for i in range(tt.numel() - 1):
        ab_t, ab_s = float(ab[i]), float(ab[i + 1])
        var_t, var_s = float(sig[i]) ** 2, float(sig[i + 1]) ** 2
        if var_t <= 0.0:
            raise ec.InputError(
                f"the ladder evaluates the model at t={float(tt[i]):g} where sigma=0; a reverse "
                "sampler evaluates the model at ts[:-1] only, which must have t > 0"
            )
        # σ_η² = η² (1 − ᾱ_s)/(1 − ᾱ_t) (1 − ᾱ_t/ᾱ_s), with 1 − ᾱ_t/ᾱ_s = −expm1(log ᾱ_t − log ᾱ_s)
        ratio = -math.expm1(float(log_ab[i]) - float(log_ab[i + 1]))
        noise_var = eta * eta * var_s / var_t * max(ratio, 0.0)
        steps.append(
            DiffusionStep(
                t=float(tt[i]),
                s=float(tt[i + 1]),
                alpha_t=math.sqrt(ab_t),
                sigma_t=math.sqrt(var_t),
                alpha_s=math.sqrt(ab_s),
                sigma_s=math.sqrt(var_s),
                noise_std=math.sqrt(noise_var),
                eps_coef=math.sqrt(max(var_s - noise_var, 0.0)),
            )
        )
    return steps


def dynamic_threshold(x0: Tensor, ratio: float, max_value: float = 1.0) -> Tensor:
    """Dynamic thresholding of an x0-prediction (Saharia et al. 2022, Imagen; diffusers' ``thresholding``).

    Per sample, ``s`` is the ``ratio`` quantile of ``|x0|`` over its pixels, clamped to
    ``[1, max_value]``; ``x0`` is clamped to ``[-s, s]`` and divided by ``s``. ``(B, *event)`` in
    and out; the quantile is taken in float32 at least (float16 has no quantile).
    """
    wide = x0.to(torch.promote_types(x0.dtype, torch.float32)).reshape(x0.shape[0], -1)
    s = torch.quantile(wide.abs(), ratio, dim=1).clamp(1.0, max_value).unsqueeze(1)
    return (torch.maximum(torch.minimum(wide, s), -s) / s).reshape(x0.shape).to(x0.dtype)


def ddim_update(
    x: Tensor,
    grad: Tensor,
    step: DiffusionStep,
    generator: Optional[torch.Generator],
    clip_x0: Optional[float] = None,
    threshold: Optional[Tuple[float, float]] = None,
    clipped_eps: bool = True,
) -> Tensor:
    """One reverse step ``x_t -> x_s`` (DDIM eqs. 12/16) from the gradient ``∇x E(x, t)``.

    Parameters
    ----------
    x : Tensor
        ``(B, *event)`` at time ``step.t``.
    grad : Tensor
        ``∇x E(x, step.t)`` like ``x`` (ε̂ = sigma_t · grad).
    step : DiffusionStep
        Coefficients from :func:`ddim_coefficients`.
    generator : torch.Generator or None
        Source of ``z`` (drawn only when ``step.noise_std > 0``).
    clip_x0 : float, optional
        Clamp the x0-prediction to ``[-clip_x0, clip_x0]``; ε̂ is then re-derived from the
        clipped x̂0, so the step is the posterior ``q(x_s | x_t, x̂0)`` (as DDPM does).
    threshold : (ratio, max_value), optional
        :func:`dynamic_threshold` the x0-prediction instead.
    clipped_eps : bool
        Re-derive ε̂ from the clipped x̂0 (default, as above); ``False`` keeps the model's ε̂ in
        the direction term, as diffusers' ``DDIMScheduler`` does unless ``use_clipped_model_output``.

    Returns
    -------
    Tensor
        ``(B, *event)`` at time ``step.s``.
    """
    eps = step.sigma_t * grad
    x0 = (x - step.sigma_t * eps) / step.alpha_t
    if threshold is not None or clip_x0 is not None:
        x0 = dynamic_threshold(x0, *threshold) if threshold is not None else x0.clamp(-clip_x0, clip_x0)
        if clipped_eps:
            eps = (x - step.alpha_t * x0) / step.sigma_t
    out = step.alpha_s * x0 + step.eps_coef * eps
    if step.noise_std > 0.0:
        out = out + step.noise_std * randn_like(x, generator)
    return out


def _check_eta(eta) -> float:
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
        raise ec.InputError(f"eta must be a finite number >= 0 (1: DDPM ancestral, 0: DDIM), got {eta!r}")
    return float(eta)


@dataclass(frozen=True)
class ReverseDiffusion:
    """Reverse diffusion sampler: DDPM (``eta=1``), DDIM (``eta=0``) or DDIM-η in between.

    Song et al. 2021 (DDIM), eqs. 12/16; Ho et al. 2020 (DDPM), Algorithm 2 with ``σ_t² = β̃_t``.
    Uses only the score of the energy (works with score-only energies).

    Parameters
    ----------
    schedule : ec.VPSchedule
        The VP schedule the energy's ``t`` refers to.
    n_steps : int
        Number of steps; the ladder is ``schedule.timesteps(n_steps)`` ``(n_steps + 1,)`` from
        1 to 0 and the model is evaluated at its first ``n_steps`` times (never at ``t = 0``).
    eta : float
        Stochasticity ``η >= 0`` (1: DDPM ancestral, 0: deterministic DDIM).
    clip_x0 : float, optional
        Clamp the x0-prediction to ``[-clip_x0, clip_x0]`` (off by default; images in
        ``[-1, 1]`` use 1.0). Diffusers' ``clip_sample=True, clip_sample_range=r`` is ``clip_x0=r``.
    threshold : float, optional
        Dynamic thresholding of the x0-prediction at this quantile of ``|x̂0|`` (e.g. 0.995;
        :func:`dynamic_threshold`), diffusers' ``thresholding=True, dynamic_thresholding_ratio``.
        Exclusive with ``clip_x0``.
    threshold_max : float
        The largest threshold ``s`` (diffusers' ``sample_max_value``, default 1.0).
    clipped_eps : bool
        With ``clip_x0`` or ``threshold``: re-derive ε̂ from the clipped x̂0 (default; the step is
        then the posterior ``q(x_s | x_t, x̂0)``, as DDPM and GLIDE do), or keep the model's ε̂
        (``False``: diffusers' ``DDIMScheduler`` default, ``use_clipped_model_output=False``).
    t_max : float
        Start of the ladder (default 1.0).
    scheduler : object, optional
        A diffusers scheduler used as the stepping rule instead of the built-in one; build
        with :meth:`from_diffusers`. Deep-copied per call, so the caller's object is never
        mutated.
    scheduler_step_kwargs : tuple of (str, value)
        Extra keyword arguments for ``scheduler.step`` (e.g. ``(("eta", 0.5),)`` for DDIM).
    static_ok : bool
        Accept a static energy (one that reads no ``t``); refused by default (wrong samples).
    spacing : {"leading", "trailing", "linspace"}, optional
        Take the ladder of diffusers' ``timestep_spacing`` on a discrete schedule
        (:meth:`ebmcompose.VPSchedule.discrete_ladder`) instead of ``schedule.timesteps``; with
        ``steps_offset`` and ``set_alpha_to_one`` the native sampler then matches e.g. SD v1's
        ``DDIMScheduler(steps_offset=1, set_alpha_to_one=False)``.
    steps_offset : int
        Added to every timestep (with ``spacing``).
    set_alpha_to_one : bool
        With ``spacing``: end at ``alpha_bar = 1`` (``t = 0``), or at ``alphas_cumprod[0]``.

    Notes
    -----
    NFE: ``n_steps`` model evaluations (times the NFE of one evaluation of a composed energy,
    e.g. one per distinct leaf).

    Each step predicts ``x0 = (x − σ ε̂) / sqrt(alpha_bar)``, so a score that does not match the
    ``N(0, I)`` prior at ``t_max`` is amplified by ``1 / sqrt(alpha_bar(t_max))``. Compositions
    whose weights do not sum to one (``box − 0.5 * small``, tempered energies) have exactly such
    a mismatch. With the cosine schedule (``alpha_bar(1)`` clamped to ~1e-8) the first step then
    throws samples far out; use a schedule whose ``alpha_bar(t_max)`` is not tiny
    (``VPSchedule.linear()``: 4e-5 at ``t = 1``), a ``t_max`` below 1, or ``clip_x0``.
    """

    schedule: ec.VPSchedule
    n_steps: int
    eta: float = 1.0
    clip_x0: Optional[float] = None
    threshold: Optional[float] = None
    threshold_max: float = 1.0
    clipped_eps: bool = True
    t_max: float = 1.0
    scheduler: Any = None
    scheduler_step_kwargs: Tuple[Tuple[str, Any], ...] = ()
    static_ok: bool = False
    spacing: Optional[str] = None
    steps_offset: int = 0
    set_alpha_to_one: bool = True

    def __post_init__(self):
        if not isinstance(self.schedule, ec.VPSchedule):
            raise TypeError(
                f"schedule must be an ebmcompose.VPSchedule, got {type(self.schedule).__name__}; "
                "e.g. ec.VPSchedule.cosine() or ec.VPSchedule.from_diffusers(scheduler)"
            )
        check_positive_int(self.n_steps, "n_steps")
        object.__setattr__(self, "eta", _check_eta(self.eta))
        if self.clip_x0 is not None and not (isinstance(self.clip_x0, (int, float)) and self.clip_x0 > 0):
            raise ec.InputError(f"clip_x0 must be None (no clipping) or a positive number, got {self.clip_x0!r}")
        if self.threshold is not None:
            if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) or not 0 < self.threshold <= 1:
                raise ec.InputError(f"threshold must be a quantile in (0, 1] (e.g. 0.995), got {self.threshold!r}")
            if self.clip_x0 is not None:
                raise ec.InputError("give clip_x0 or threshold, not both (diffusers' clip_sample or thresholding)")
        if isinstance(self.threshold_max, bool) or not isinstance(self.threshold_max, (int, float)) or not self.threshold_max >= 1:
            raise ec.InputError(f"threshold_max must be a number >= 1 (diffusers' sample_max_value), got {self.threshold_max!r}")
        if not (0.0 < float(self.t_max) <= 1.0):
            raise ec.InputError(f"t_max must be in (0, 1], got {self.t_max!r}")
        if self.spacing is not None:
            if float(self.t_max) != 1.0:
                raise ec.InputError("spacing sets the whole ladder; leave t_max at 1.0 when you pass spacing")
            self.schedule.discrete_ladder(self.n_steps, self.spacing, self.steps_offset, self.set_alpha_to_one)
        if self.scheduler is not None:
            if self.clip_x0 is not None or self.threshold is not None:
                raise ec.InputError("clip_x0 and threshold are the native sampler's; with a diffusers scheduler set its "
                                    "clip_sample / thresholding config instead")
            for attr in ("set_timesteps", "step", "alphas_cumprod"):
                if not hasattr(self.scheduler, attr):
                    raise TypeError(
                        f"scheduler must be a diffusers scheduler (with .{attr}), got {type(self.scheduler).__name__}"
                    )

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_diffusers(cls, scheduler, n_steps: int, eta: Optional[float] = None, **kwargs) -> "ReverseDiffusion":
        """Step with a diffusers scheduler (``DDPMScheduler``, ``DDIMScheduler``, ...).

        Each sample calls ``scheduler.set_timesteps(n_steps)`` once, then for every timestep
        ``k`` of ``scheduler.timesteps`` (as the scheduler holds it: integer or fractional)
        evaluates ``ε̂ = sigma(t) ∇x E(x_in, t)`` at ``t = (k + 1) / N`` and
        ``x_in = scheduler.scale_model_input(x, k)`` (``x`` itself for DDPM/DDIM/PNDM; ``x`` in
        σ-space scaled back to the VP scale for Euler, Euler-ancestral, LMS), and takes
        ``scheduler.step(model_output=ε̂, timestep=k, sample=x, generator=g).prev_sample``.
        A scheduler configured for another ``prediction_type`` (v-prediction) is rebuilt with
        ``"epsilon"``: the energy's score is always an ε.

        Parameters
        ----------
        scheduler : diffusers scheduler
            Its ``alphas_cumprod`` defines the schedule (:meth:`ec.VPSchedule.from_diffusers`).
        n_steps : int
            Number of inference steps.
        eta : float, optional
            Passed to ``scheduler.step`` when given (DDIM's η); default: the scheduler's own.
        """
        schedule = ec.VPSchedule.from_diffusers(scheduler)
        step_kwargs = () if eta is None else (("eta", _check_eta(eta)),)
        return cls(
            schedule,
            n_steps,
            eta=1.0 if eta is None else eta,
            scheduler=scheduler,
            scheduler_step_kwargs=step_kwargs,
            **kwargs,
        )

    # ------------------------------------------------------------------ pieces
    def ladder(self, device=None, dtype=None) -> Tensor:
        """The descending ladder ``(n_steps + 1,)`` from ``t_max`` to 0 (or diffusers' spacing)."""
        if self.spacing is not None:
            return self.schedule.discrete_ladder(
                self.n_steps, self.spacing, self.steps_offset, self.set_alpha_to_one, device=device, dtype=dtype
            )
        return self.schedule.timesteps(self.n_steps, t_max=float(self.t_max), device=device, dtype=dtype)

    def coefficients(self) -> List[DiffusionStep]:
        """Per-step coefficients along :meth:`ladder` (see :func:`ddim_coefficients`)."""
        return ddim_coefficients(self.schedule, self.ladder(dtype=torch.float64), self.eta)

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
        """Run the reverse process from ``x_T`` to ``t = 0``.

        Parameters
        ----------
        energy : ec.Energy
            Time-dependent energy (or score-only model) whose ``t`` follows ``schedule``.
        x0 : Tensor, optional
            Starting noise ``x_T`` ``(B, *event)``, used as given. When omitted, ``x_T ~ N(0, I)``
            of ``shape`` is drawn from ``generator`` (times ``scheduler.init_noise_sigma`` in
            diffusers mode), on ``device`` (default: the generator's) with ``dtype`` (default:
            the dtype of the energy's parameters, e.g. a float16 UNet's, else torch's default).
        generator : torch.Generator, optional
            Source of all randomness (``x_T`` first, then the steps' noise in order).
        shape : tuple of int, optional
            ``(B, *event)`` when ``x0`` is not given.
        progress : bool
            Show a tqdm progress bar.
        callback : callable, optional
            ``callback(i, state, info)`` after step ``i``: a :class:`~samplers.ladder.LadderState`
            (``state.x`` ``(B, *event)`` now at time ``state.t``) and a :class:`~samplers.ladder.LevelInfo`.
        trace_every : int
            Keep ``x`` after every ``trace_every``-th step in ``info["trace"]``
            ``(T, B, *event)`` with times ``info["trace_t"]`` ``(T,)``.
        on_divergence : {"warn", "raise", "ignore"}
            What to do when the samples escaped: ``info.warnings`` lists it in every case
            (see :func:`samplers.health.finish`).

        Returns
        -------
        SampleResult
            ``samples`` ``(B, *event)`` at ``t = 0`` on ``x``'s device/dtype; ``info``: ``"nfe"``,
            ``"n_steps"``, ``"ts"`` (the ladder, ``(n_steps + 1,)``), ``"eta"``, and the trace.

        Raises
        ------
        NonFiniteStateError
            If the state becomes NaN/inf; names the first such level.
        """
        check_positive_int(trace_every, "trace_every", allow_zero=True)
        health.check_on_divergence(on_divergence)
        check_time_dependent(energy, "ReverseDiffusion", self.static_ok)
        scheduler = None if self.scheduler is None else epsilon_scheduler(copy.deepcopy(self.scheduler))
        if x0 is None and dtype is None:
            dtype = parameter_dtype(energy)
        x = prior_sample(x0, shape, generator, device, dtype, "ReverseDiffusion")
        if scheduler is not None:
            scheduler.set_timesteps(self.n_steps, device=x.device)
            if x0 is None:  # read after set_timesteps: σ-space schedulers set it from their first σ
                x = x * float(getattr(scheduler, "init_noise_sigma", 1.0))
        if scheduler is None:
            steps = self.coefficients()
            ts = [st.t for st in steps] + [steps[-1].s]
            thresh = None if self.threshold is None else (float(self.threshold), float(self.threshold_max))
            energy.check_input(x, ts[0])

            def move(i: int, state: LadderState):
                st = steps[i]
                _, grad, nfe = evaluate(energy, state.x, st.t, False)
                x_new = ddim_update(state.x, grad, st, generator, self.clip_x0, thresh, self.clipped_eps)
                return LadderState(x=x_new, t=st.s, level=i + 1), level_info(st.s, nfe)

            extra = dict(eta=self.eta)
        else:
            ts, timesteps, move = self._scheduler_move(scheduler, energy, x, generator)
            extra = dict(eta=dict(self.scheduler_step_kwargs).get("eta"), timesteps=timesteps.detach().cpu().clone())
        n = len(ts) - 1
        final, infos, trace, trace_t = run_ladder(
            "ReverseDiffusion", n, LadderState(x=x, t=ts[0], level=0), move, progress=progress,
            callback=callback, trace_every=trace_every, hint=_NONFINITE_HINT,
        )
        info = summarise(ts, infos, n, trace, trace_t, **extra)
        return health.finish(SampleResult(samples=final.x, info=info, state=None), x, sampler="ReverseDiffusion",
                             on_divergence=on_divergence, metropolis=False, adapted=True, moves_every_chain=True)

    def _scheduler_move(self, scheduler, energy, x, generator):
        """Ladder times, the scheduler's timesteps and the level move of a diffusers scheduler run
        (``scheduler.set_timesteps`` already called)."""
        big_n = self.schedule.num_train_timesteps
        timesteps = scheduler.timesteps
        ks = timesteps.detach().cpu().to(torch.float64).tolist()
        step_kwargs = dict(self.scheduler_step_kwargs)
        if "generator" in inspect.signature(scheduler.step).parameters:
            step_kwargs["generator"] = generator
        scale = getattr(scheduler, "scale_model_input", None)
        ts = [(k + 1) / big_n for k in ks] + [0.0]
        sigmas = self.schedule.sigma(torch.tensor(ts, dtype=torch.float64)).tolist()
        energy.check_input(x, ts[0])

        def move(i: int, state: LadderState):
            k = timesteps[i]
            model_in = scale(state.x, k) if scale is not None else state.x  # k: the scheduler's own entry
            _, grad, nfe = evaluate(energy, model_in, ts[i], False)
            x_new = scheduler.step(model_output=sigmas[i] * grad, timestep=k, sample=state.x, **step_kwargs).prev_sample
            return LadderState(x=x_new, t=ts[i + 1], level=i + 1), level_info(ts[i + 1], nfe)

        return ts, timesteps, move


def parameter_dtype(energy: ec.Energy) -> Optional[torch.dtype]:
    """The dtype of the energy's first floating-point parameter (a UNet's), or ``None``."""
    for p in energy.parameters():
        if p.is_floating_point():
            return p.dtype
    return None
