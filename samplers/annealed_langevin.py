"""Annealed Langevin dynamics: an MCMC corrector run down a ladder of noise levels.

Song & Ermon 2019 ("Generative Modeling by Estimating Gradients of the Data Distribution",
Algorithm 1): for levels ``σ_1 > … > σ_L`` run ``T`` Langevin steps with step size
``α_i = ε σ_i² / σ_L²`` on ``p_{σ_i}``, each level starting where the previous one ended. Here the
levels are diffusion times ``t_1 > … > t_L`` of a :class:`ebmcompose.VPSchedule` with
``σ_i = schedule.sigma(t_i)``, and the per-level transition is any static kernel of this package
(:class:`~samplers.ULA` by default, or :class:`~samplers.MALA` / :class:`~samplers.HMC`), run at the
fixed ``t_i`` through its ``init`` / ``run`` API.

The kernels' Langevin step is ``x' = x − h ∇E + sqrt(2h) ξ``, so Song & Ermon's ``α`` is ``2h``;
the ``σ²`` rule is the same for ``h``. HMC's ``step_size`` is a leapfrog step (a length, one
leapfrog step = MALA with ``h = step²/2``), so for HMC the rule scales it by ``σ_i / σ_L``.

AIS. With a Metropolis kernel (MALA, HMC), every transition leaves its level's target invariant,
so the increments ``−(E_{t_{i+1}}(x) − E_{t_i}(x))`` at the state reached at the end of level ``i``
are annealed-importance-sampling log-weights (Neal 2001): ``info["log_weights"]`` ``(B,)``. They
cost nothing (the new level's energy at the same ``x`` is the first evaluation of that level),
start at 0 (the starting points are treated as draws from the first level's target), and
``logsumexp(log_weights) − log B`` estimates ``log Z_{t_L} − log Z_{t_1}``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

import ebmcompose as ec

from .adaptation import DualAveraging
from .base import (
    MCMCKernel,
    Recorder,
    SampleResult,
    State,
    check_generator,
    check_positive_int,
    check_step_size,
    evaluate,
    finite_rows,
    prior_sample,
    progress_bar,
    raise_if_nonfinite,
    require_energy,
)

__all__ = ["AnnealedLangevin", "step_size_exponent", "level_state", "run_level"]

_NONFINITE_HINT = (
    "use a smaller step_size, more levels, or a Metropolis kernel (MALA/HMC), and check that the "
    "model's score is finite at every t of the ladder"
)


# --------------------------------------------------------------------------- shared level pieces
def step_size_exponent(kernel: MCMCKernel) -> float:
    """Power of the noise *variance* a kernel's ``step_size`` scales with under a ``σ²`` rule.

    1 for Langevin-type steps ``h`` (ULA, MALA: ``h ∝ σ²``), 0.5 for HMC's leapfrog step (a
    length, ``∝ σ``); declared by each kernel class as ``MCMCKernel.step_size_exponent``.
    """
    return float(type(kernel).step_size_exponent)


def level_state(
    kernel: MCMCKernel,
    energy: ec.Energy,
    x: Tensor,
    t: float,
    validate: bool = False,
    previous: Optional[State] = None,
    need_energy: Optional[bool] = None,
) -> Tuple[State, int, Tensor]:
    """Evaluate ``energy`` at ``(x, t)`` and build the kernel's state for level ``t``.

    The energy value is computed when ``need_energy`` (default: when the kernel needs it). With
    ``previous`` (the state that ended the last level), its other fields are kept (e.g. HMC's
    persistent momentum: ``dataclasses.replace`` keeps the state's class); otherwise a plain
    :class:`State` is built (every kernel's ``step`` accepts one). Returns the state, its NFE and
    a 0-d bool tensor "every chain finite" (no device sync; the caller checks once at the end).
    ``validate=True`` runs the energy's input checks (once per run).
    """
    tt = torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)
    if need_energy is None:
        need_energy = kernel.needs_energy
    e, g, nfe = evaluate(energy, x, tt, need_energy, validate=validate)
    if previous is None:
        state = State(x=x, energy=e, grad=g, t=tt)
    else:
        state = previous.replace(x=x, energy=e, grad=g, t=tt)
    return state, nfe, finite_rows(e, g).all()


def run_level(
    kernel: MCMCKernel,
    energy: ec.Energy,
    state: State,
    n_steps: int,
    step_size: Union[float, Tensor],
    generator: Optional[torch.Generator],
    adapt: Optional[DualAveraging] = None,
) -> Tuple[State, Union[float, Tensor], Recorder]:
    """``n_steps`` kernel transitions at the state's fixed ``t``.

    With ``adapt``, a fresh dual averaging (Hoffman & Gelman 2014, Alg. 5) runs during the level,
    started at ``step_size`` and shrinking towards it (``μ = log step_size``: the carried step size
    is already a good guess, unlike the cold start ``μ = log 10 h0``); the level's averaged step
    size is returned to be carried to the next level.

    Returns
    -------
    state, step_size, recorder
        Final state, the step size to carry on (0-d tensor when adapted), and the level's
        :class:`Recorder` (acceptance, NFE).
    """
    rec = Recorder(state.x.shape[0])
    if n_steps == 0:
        return state, step_size, rec
    if adapt is None:
        state, h, _ = kernel.run(energy, state, n_steps, step_size, generator, recorder=rec)
        return state, h, rec
    da = adapt.init(step_size, like=state.x)
    da = dataclasses.replace(da, mu=da.log_step_size)
    state, h, _ = kernel.run(energy, state, n_steps, None, generator, adapt=adapt, adapt_state=da, recorder=rec)
    return state, h, rec


def level_summary(recorders: Sequence[Recorder], like: Tensor) -> Tensor:
    """``(L,)`` mean acceptance per level (NaN for levels without transitions); no device sync."""
    out = []
    for rec in recorders:
        if rec.acceptance:
            out.append(torch.stack(rec.acceptance).mean())
        else:
            out.append(torch.tensor(float("nan"), device=like.device, dtype=like.dtype))
    return torch.stack(out) if out else torch.empty(0, device=like.device, dtype=like.dtype)


def default_kernel(kernel: Optional[MCMCKernel], n_steps: int) -> MCMCKernel:
    """The given kernel, or ``ULA(step_size=1.0, n_steps=n_steps)`` (its step size is overridden)."""
    if kernel is None:
        from .ula import ULA

        return ULA(step_size=1.0, n_steps=n_steps)
    for attr in ("init", "step", "run", "needs_energy"):
        if not hasattr(kernel, attr):
            raise TypeError(
                f"kernel must be an MCMC kernel instance such as ULA(...), MALA(...) or HMC(...) "
                f"(with .{attr}), got {type(kernel).__name__}"
            )
    return kernel


# --------------------------------------------------------------------------- the sampler
@dataclass(frozen=True)
class AnnealedLangevin:
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1) with any static kernel.

    Parameters
    ----------
    schedule : ec.VPSchedule
        Noise schedule the energy's ``t`` refers to.
    n_levels : int
        Number of noise levels ``L``; the levels are ``schedule.timesteps(L − 1, t_max, t_min)``
        (``L`` times from ``t_max`` down to ``t_min``), or ``levels`` when given.
    n_steps_per_level : int
        Transitions ``T`` per level.
    step_size : float
        ``ε``: the kernel's step size at the *last* (least noisy) level; level ``i`` uses
        ``ε (σ_i² / σ_L²)`` (``ε (σ_i / σ_L)`` for HMC's leapfrog step, see module notes).
    kernel : MCMCKernel, optional
        ``ULA(...)`` (default), ``MALA(...)`` or ``HMC(...)``; its own ``step_size`` and
        ``n_steps`` are ignored (the ladder sets them), its other settings are used.
    t_max, t_min : float
        First and last level (default 1.0 and 0.01; ``t_min`` must be > 0 because the rule
        divides by ``σ_L`` and time-dependent models are not evaluated at ``t = 0``).
    levels : sequence of float, optional
        Explicit descending level times in ``(0, 1]`` instead of the ladder.
    adapt : bool
        Per-level dual averaging of the step size towards ``kernel.target_accept`` (Metropolis
        acceptance for MALA/HMC, ULA's gradient-only proxy for ULA); the first level starts at
        the rule's step size and each level's adapted step size is carried to the next one scaled
        by the rule's ratio ``σ_{i+1}² / σ_i²``.

    Notes
    -----
    NFE: ``L`` level evaluations (energy and gradient of the first state of each level) plus the
    kernel's NFE per transition (1 for ULA/MALA, ``n_leapfrog`` for HMC) ``× T × L``.
    """

    schedule: ec.VPSchedule
    n_levels: int
    n_steps_per_level: int
    step_size: float
    kernel: Optional[MCMCKernel] = None
    t_max: float = 1.0
    t_min: float = 1e-2
    levels: Optional[Tuple[float, ...]] = None
    adapt: bool = False

    def __post_init__(self):
        if not isinstance(self.schedule, ec.VPSchedule):
            raise TypeError(f"schedule must be an ebmcompose.VPSchedule, got {type(self.schedule).__name__}")
        check_positive_int(self.n_levels, "n_levels")
        check_positive_int(self.n_steps_per_level, "n_steps_per_level")
        check_step_size(self.step_size, allow_none=False)
        default_kernel(self.kernel, self.n_steps_per_level)
        if self.levels is not None:
            lv = tuple(float(t) for t in self.levels)
            if len(lv) != self.n_levels:
                raise ValueError(f"{len(lv)} levels given but n_levels={self.n_levels}")
            if any(not (0.0 < t <= 1.0) for t in lv) or any(b >= a for a, b in zip(lv, lv[1:])):
                raise ValueError(f"levels must be strictly decreasing times in (0, 1], got {lv}")
            object.__setattr__(self, "levels", lv)
        elif not (0.0 < float(self.t_min) < float(self.t_max) <= 1.0) and not (
            self.n_levels == 1 and 0.0 < float(self.t_min) <= 1.0
        ):
            raise ValueError(
                f"need 0 < t_min < t_max <= 1, got t_min={self.t_min}, t_max={self.t_max}; the "
                "last level must have t_min > 0 (sigma > 0)"
            )

    # ------------------------------------------------------------------ pieces
    def ladder(self) -> Tensor:
        """Level times ``(L,)`` (float64, descending)."""
        if self.levels is not None:
            return torch.tensor(self.levels, dtype=torch.float64)
        if self.n_levels == 1:
            return torch.tensor([float(self.t_min)], dtype=torch.float64)
        return self.schedule.timesteps(self.n_levels - 1, t_max=float(self.t_max), t_min=float(self.t_min), dtype=torch.float64)

    def step_sizes(self) -> Tensor:
        """Per-level step sizes ``(L,)`` of the ``σ²`` rule (float64)."""
        kernel = default_kernel(self.kernel, self.n_steps_per_level)
        var = self.schedule.sigma(self.ladder()) ** 2
        if not bool((var > 0).all()):
            raise ValueError("every level needs sigma(t) > 0; raise t_min")
        return float(self.step_size) * (var / var[-1]) ** step_size_exponent(kernel)

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
        """Run the kernel down the ladder.

        Parameters
        ----------
        energy : ec.Energy
            Time-dependent energy whose ``t`` follows ``schedule`` (score-only models work with ULA).
        x0 : Tensor, optional
            Starting points ``(B, *event)``, used as given. When omitted, ``x ~ N(0, I)`` of
            ``shape`` is drawn from ``generator`` (the VP prior; device: the generator's).
        generator : torch.Generator, optional
            Source of all randomness (same seed → identical samples).
        shape, device, dtype
            For the drawn start when ``x0`` is omitted.
        progress : bool
            tqdm bar over levels.
        callback : callable, optional
            ``callback(i, x, t)`` at the end of level ``i`` (``t`` its time).
        trace_every : int
            Keep ``x`` at the end of every ``trace_every``-th level (``info["trace"]``
            ``(T, B, *event)``, ``info["trace_t"]``).

        Returns
        -------
        SampleResult
            ``samples`` ``(B, *event)`` at the last level ``t_L``; ``info``: ``"nfe"``,
            ``"n_steps"`` (transitions), ``"ts"`` ``(L,)``, ``"step_size"`` ``(L,)`` (used per
            level), ``"acceptance"`` ``(L,)`` mean acceptance per level, ``"acceptance_per_chain"``
            ``(B,)``, ``"divergences"``, and ``"log_weights"`` ``(B,)`` for Metropolis kernels.

        Raises
        ------
        ec.ScoreOnlyError
            Metropolis kernel with a score-only energy (use ULA).
        NonFiniteStateError
            The state became NaN/inf; names the level.
        """
        check_positive_int(trace_every, "trace_every", allow_zero=True)
        kernel = default_kernel(self.kernel, self.n_steps_per_level)
        if kernel.needs_energy:
            require_energy(energy, type(kernel).__name__ + " in AnnealedLangevin")
        x = prior_sample(x0, shape, generator, device, dtype, "AnnealedLangevin")
        check_generator(generator, x)
        ts = self.ladder().tolist()
        rule = self.step_sizes().tolist()
        adapt = DualAveraging(kernel.target_accept) if self.adapt else None
        metropolis = kernel.needs_energy

        nfe = 0
        finite: List[Tensor] = []
        recorders: List[Recorder] = []
        used: List[Union[float, Tensor]] = []
        trace, trace_t = [], []
        log_w = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype) if metropolis else None
        state: Optional[State] = None
        h: Union[float, Tensor] = rule[0]
        for i in progress_bar(len(ts), progress, "annealed Langevin"):
            new, n, ok = level_state(
                kernel, energy, x if state is None else state.x, ts[i], validate=state is None, previous=state
            )
            nfe += n
            if metropolis and state is not None:
                log_w = log_w - (new.energy - state.energy)  # AIS increment at the same x
            state = new
            if self.adapt and i > 0:
                h = h * (rule[i] / rule[i - 1])  # carry the adapted step size, scaled by the rule
            elif not self.adapt:
                h = rule[i]
            used.append(h)
            state, h_out, rec = run_level(kernel, energy, state, self.n_steps_per_level, h, generator, adapt)
            if self.adapt:
                h = h_out
            recorders.append(rec)
            finite.append(ok & finite_rows(state.x, state.energy, state.grad).all())
            if trace_every and (i + 1) % trace_every == 0:
                trace.append(state.x.detach().clone())
                trace_t.append(ts[i])
            if callback is not None:
                callback(i, state.x, ts[i])
        raise_if_nonfinite(finite, ts, "AnnealedLangevin", _NONFINITE_HINT)

        acc_chain = sum(r.acc_sum for r in recorders) / sum(r.n_steps for r in recorders)
        info = {
            "nfe": nfe + sum(r.nfe for r in recorders),
            "n_steps": sum(r.n_steps for r in recorders),
            "ts": torch.tensor(ts, dtype=torch.float64),
            "step_size": torch.stack([torch.as_tensor(v, dtype=torch.float64).cpu() for v in used]),
            "acceptance": level_summary(recorders, x),
            "acceptance_per_chain": acc_chain,
            "divergences": int(sum(r.divergent.sum() for r in recorders)),
        }
        if log_w is not None:
            info["log_weights"] = log_w
        if trace:
            info["trace"] = torch.stack(trace)
            info["trace_t"] = torch.tensor(trace_t, dtype=torch.float64)
        return SampleResult(samples=state.x, info=info, state=state)
