"""The noise-ladder driver shared by reverse diffusion, annealed Langevin and predictor–corrector.

A ladder sampler is a list of level times and one *move* per level,
``move(i, state) -> (state, LevelInfo)``; :func:`run_ladder` is the loop around it (progress bar,
finiteness checks without a device sync per level, traces, NFE, and the callback
``callback(i, LadderState, LevelInfo)``, the same signature as the kernels' ``callback(i, State,
StepInfo)``). Levels with MCMC transitions run them through :func:`level_state` and :func:`correct`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

import ebmcompose as ec

from .adaptation import DualAveraging
from .base import MCMCKernel, NonFiniteStateError, State, check_generator, evaluate, progress_bar
from .record import Recorder
from .result import LadderSummary
from .run import run_adaptive, run_steps

__all__ = ["LadderState", "LevelInfo", "prior_sample", "check_kernel", "check_time_dependent", "level_state", "step_factors",
           "correct", "run_ladder", "summarise"]


@dataclass(frozen=True)
class LadderState:
    """Where a ladder run is after a level.

    Attributes
    ----------
    x : Tensor
        ``(B, *event)`` positions at time ``t``.
    t : float
        The level's time.
    level : int
        Index into the ladder's times.
    kernel_state : State or None
        The MCMC state at ``(x, t)`` (cached energy/gradient), when the level evaluated one.
    step_size : float, Tensor or None
        The (adapted) step size carried to the next level's transitions.
    log_weights : Tensor or None
        ``(B,)`` running AIS log weights (annealed Langevin with a Metropolis kernel).
    """

    x: Tensor
    t: float
    level: int
    kernel_state: Optional[State] = None
    step_size: Optional[object] = None
    log_weights: Optional[Tensor] = None


@dataclass(frozen=True)
class LevelInfo:
    """What one level did.

    Attributes
    ----------
    t : float
        The level's time.
    nfe : int
        Evaluations this level cost.
    n_transitions : int
        MCMC transitions run at this level (0: none).
    acceptance : Tensor or None
        0-d mean acceptance of those transitions (``None`` without any).
    step_size : float, Tensor or None
        Their step size (``None`` without any).
    acc_sum : Tensor or None
        ``(B,)`` per-chain acceptance sum of those transitions.
    divergences : Tensor or None
        0-d count of their divergent proposals.
    """

    t: float
    nfe: int
    n_transitions: int = 0
    acceptance: Optional[Tensor] = None
    step_size: Optional[object] = None
    acc_sum: Optional[Tensor] = None
    divergences: Optional[Tensor] = None


Move = Callable[[int, LadderState], Tuple[LadderState, LevelInfo]]


def prior_sample(x0: Optional[Tensor], shape=None, generator=None, device=None, dtype=None,
                 sampler: str = "sampler") -> Tensor:
    """The starting point ``x_T``: ``x0`` itself, or ``N(0, I)`` of ``shape = (B, *event)`` from
    ``generator`` on ``device`` (default: the generator's) with ``dtype`` (default: torch's)."""
    if x0 is not None:
        if not isinstance(x0, Tensor) or not x0.is_floating_point():
            raise ec.InputError(
                f"{sampler}: x0 must be a floating-point torch.Tensor of shape (B, *event), got "
                f"{type(x0).__name__ if not isinstance(x0, Tensor) else x0.dtype}"
            )
        if shape is not None and tuple(shape) != tuple(x0.shape):
            raise ec.InputError(f"{sampler}: shape={tuple(shape)} disagrees with x0 of shape {tuple(x0.shape)}; pass one of them")
        check_generator(generator, x0)
        return x0
    if shape is None:
        raise ec.InputError(
            f"{sampler}: pass x0 (the starting noise x_T, shape (B, *event)) or shape=(B, *event) "
            "to draw x_T ~ N(0, I) from the generator"
        )
    shape = tuple(int(s) for s in shape)
    if len(shape) < 1 or any(s < 1 for s in shape):
        raise ec.InputError(f"{sampler}: shape must be (B, *event) with positive sizes, got {shape}")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=device, dtype=dtype or torch.get_default_dtype())


def check_kernel(kernel, role: str) -> None:
    """Raise a clear error unless ``kernel`` is an MCMC kernel instance (ULA, MALA, HMC)."""
    if not isinstance(kernel, MCMCKernel):
        raise TypeError(
            f"{role} must be an MCMC kernel instance such as ULA(...), MALA(...) or HMC(...), "
            f"got {type(kernel).__name__}"
        )


def check_time_dependent(energy: ec.Energy, sampler: str, static_ok: bool) -> None:
    """Refuse a static energy (no leaf reads ``t``) unless ``static_ok``: a ladder steps through noised densities.

    A static energy is the data density at every level, so a diffusion sampler would follow the
    wrong path (reverse diffusion returns wrong samples; annealing anneals nothing).
    """
    if static_ok or not isinstance(energy, ec.Energy) or not energy.is_static:
        return
    raise ec.InputError(
        f"{sampler} steps down a ladder of noised densities p_t, but the energy {energy!r} is static (no "
        "part of it reads t), so every level would see the data density and the samples would be wrong. "
        "Give it a time-dependent energy (fn(x, t), a diffused toy density such as gm.diffused(schedule), "
        f"an epsilon model), sample a static target with ULA, MALA or HMC, or pass {sampler}(..., "
        "static_ok=True) if a static energy is what you mean"
    )


def level_state(kernel: MCMCKernel, energy: ec.Energy, x: Tensor, t: float, previous: Optional[State] = None,
                need_energy: Optional[bool] = None) -> Tuple[State, int]:
    """Evaluate at ``(x, t)`` and build the kernel's state for the level; ``(state, nfe)``.

    ``previous`` (the state that ended the last level) keeps its other fields (HMC's momentum).
    """
    tt = torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)
    e, g, nfe = evaluate(energy, x, tt, kernel.needs_energy if need_energy is None else need_energy)
    if previous is None:
        return kernel.state_type(x=x, energy=e, grad=g, t=tt), nfe
    return previous.replace(x=x, energy=e, grad=g, t=tt), nfe


def correct(kernel: MCMCKernel, energy: ec.Energy, state: State, n: int, generator,
            adapt: Optional[DualAveraging] = None) -> Tuple[State, MCMCKernel, Recorder]:
    """``n`` transitions of ``kernel`` (at its step size) at the state's fixed ``t``.

    With ``adapt``, a fresh dual averaging runs during the level, shrinking towards the kernel's
    step size (``μ = log h``: the carried step size is already a good guess, unlike the cold start
    ``μ = log 10 h``). Returns the state, the kernel at the step size to carry on, the recorder.
    """
    rec = Recorder()
    if n == 0:
        return state, kernel, rec
    if adapt is None:
        return run_steps(kernel, energy, state, n, generator, recorder=rec), kernel, rec
    da = adapt.init(kernel.step_size, like=state.x)
    da = dataclasses.replace(da, mu=da.log_step_size)
    state, kernel, _ = run_adaptive(kernel, energy, state, n, generator, adapt=adapt, adapt_state=da, recorder=rec)
    return state, kernel, rec


def step_factors(schedule: ec.VPSchedule, ts: Tensor, rule: str, kernel: MCMCKernel) -> List[float]:
    """Per-level factors multiplying a corrector's base step size, one per entry of the ladder ``ts``.

    ``rule``: ``"fixed"`` (1), ``"beta"`` (``beta(t)``) or ``"sigma2"`` / ``"adapt"`` (``sigma(t)²``),
    raised to the kernel's ``step_size_exponent`` (HMC's leapfrog step is a length: square roots).
    At ``t = 0`` (``sigma = 0``) the previous level's factor is used.
    """
    ts_rule = ts.clone()
    if len(ts) > 1 and float(ts[-1]) == 0.0:
        ts_rule[-1] = ts[-2]
    if rule == "fixed":
        f = torch.ones_like(ts)
    elif rule == "beta":
        f = schedule.beta(ts_rule)
    else:
        f = schedule.sigma(ts_rule) ** 2
    return (f ** float(type(kernel).step_size_exponent)).tolist()


def level_info(t: float, nfe: int, rec: Optional[Recorder] = None, step_size=None) -> LevelInfo:
    """A :class:`LevelInfo` from the level's evaluations and its transitions' recorder."""
    if rec is None or rec.n_steps == 0:
        return LevelInfo(t=t, nfe=nfe)
    return LevelInfo(t=t, nfe=nfe + rec.nfe, n_transitions=rec.n_steps, acceptance=rec.mean_acceptance(),
                     step_size=step_size, acc_sum=rec.acc_sum,
                     divergences=torch.cat(rec.divergences).sum())


def run_ladder(sampler: str, n_levels: int, start: LadderState, move: Move, *, progress: bool = False,
               callback=None, trace_every: int = 0, hint: str = ""):
    """Run ``move`` for levels ``0 .. n_levels-1`` from ``start``.

    Returns ``(final LadderState, [LevelInfo], trace, trace_t)``; raises
    :class:`NonFiniteStateError` naming the first level whose state was not finite (checked once,
    at the end). ``callback(i, state, info)`` after each level.
    """
    state = start
    infos: List[LevelInfo] = []
    finite: List[Tensor] = [torch.isfinite(start.x).all()]
    where = ["the starting point"]
    trace, trace_t = [], []
    for i in progress_bar(n_levels, progress, sampler):
        state, info = move(i, state)
        infos.append(info)
        ok = torch.isfinite(state.x).all()
        ks = state.kernel_state
        if ks is not None and ks.x is state.x:
            ok = ok & torch.isfinite(ks.grad).all()
            if ks.energy is not None:
                ok = ok & torch.isfinite(ks.energy).all()
        finite.append(ok)
        where.append(f"level {state.level} of the ladder (t={state.t:.4g})")
        if trace_every and (i + 1) % trace_every == 0:
            trace.append(state.x.detach().clone())
            trace_t.append(state.t)
        if callback is not None:
            callback(i, state, info)
    flags = torch.stack(finite)
    if not bool(flags.all()):
        first = int((~flags).nonzero()[0, 0])
        raise NonFiniteStateError(f"{sampler}: the state became non-finite (NaN or inf) at {where[first]}; " + hint)
    return state, infos, trace, trace_t


def summarise(ts: Sequence[float], infos: Sequence[LevelInfo], n_steps: int, trace, trace_t, *,
              corrected: Optional[Sequence[bool]] = None, extra_nfe: int = 0, **fields) -> LadderSummary:
    """The :class:`LadderSummary` of a run: per-level acceptance and step size of the corrected levels only."""
    done = [i for i in infos if i.n_transitions]
    if done:
        fields.update(
            acceptance=torch.stack([i.acceptance for i in done]),
            step_size=torch.stack([torch.as_tensor(i.step_size, dtype=torch.float64).detach().cpu().reshape(()) for i in done]),
            acceptance_per_chain=sum(i.acc_sum for i in done) / sum(i.n_transitions for i in done),
            divergences=int(torch.stack([i.divergences for i in done]).sum()),
            corrector_steps=sum(i.n_transitions for i in done),
        )
    if corrected is not None:
        fields["corrected"] = torch.tensor(list(corrected), dtype=torch.bool)
    if trace:
        fields.update(trace=torch.stack(trace), trace_t=torch.tensor(trace_t, dtype=torch.float64))
    return LadderSummary(nfe=extra_nfe + sum(i.nfe for i in infos), n_steps=n_steps,
                         ts=torch.tensor(list(ts), dtype=torch.float64), **fields)
