"""The one loop that drives any kernel: fixed-step runs, dual-averaging adaptation, ``sample``.

Every function takes a kernel (an immutable configuration that includes its step size) and
reports each step through one callback signature, ``callback(i, state, info)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

import ebmcompose as ec

from . import health
from .adaptation import DualAveraging, DualAveragingState, find_initial_step_size
from .mass_adaptation import VarianceEstimate, regularised_variance, windows
from .base import MCMCKernel, State, check_generator, check_positive_int, init_state, progress_bar
from .record import Recorder
from .result import KernelSummary, SampleResult

__all__ = ["RunConfig", "run_steps", "run_adaptive", "search_step_size", "warmup_with_mass", "sample_kernel"]

#: ``callback(i, state, info)`` after each step (ladder samplers: their ladder state and level info).
Callback = Callable[[int, object, object], object]


@dataclass(frozen=True)
class RunConfig:
    """How a kernel is run by :func:`sample_kernel`.

    Attributes
    ----------
    n_steps : int
        Kept transitions.
    n_warmup : int
        Warm-up transitions before them (adapting the step size when ``adapt`` is set).
    adapt : DualAveraging or None
        Step-size adaptation during warm-up.
    trace_every : int
        Keep every ``trace_every``-th kept position (0: none).
    progress : bool
        tqdm progress bar.
    callback : callable or None
        ``callback(i, state, info)`` after every step (warm-up included, ``i`` from 0).
    on_divergence : {"warn", "raise", "ignore"}
        What to do when the run diverged or looks wrong (see :func:`samplers.health.finish`).
    """

    n_steps: int
    n_warmup: int = 0
    adapt: Optional[DualAveraging] = None
    trace_every: int = 0
    progress: bool = False
    callback: Optional[Callback] = None
    on_divergence: str = "warn"

    def __post_init__(self):
        check_positive_int(self.n_steps, "n_steps", allow_zero=True)
        check_positive_int(self.n_warmup, "n_warmup", allow_zero=True)
        check_positive_int(self.trace_every, "trace_every", allow_zero=True)
        health.check_on_divergence(self.on_divergence)

    @classmethod
    def for_kernel(cls, kernel: MCMCKernel, **kwargs) -> "RunConfig":
        """The kernel's own ``n_steps``/warm-up, adapting when its ``step_size`` is ``None``."""
        adapt = DualAveraging(kernel.target_accept) if kernel.step_size is None else None
        return cls(n_steps=kernel.n_steps, n_warmup=kernel.warmup_steps, adapt=adapt, **kwargs)


def run_steps(kernel: MCMCKernel, energy: ec.Energy, state: State, n_steps: int, generator=None, *,
              recorder: Optional[Recorder] = None, callback: Optional[Callback] = None,
              progress: bool = False, start: int = 0) -> State:
    """``n_steps`` transitions of ``kernel`` (at its step size) from ``state``, at the state's fixed ``t``."""
    kernel = kernel.with_step_size(kernel._step_size(state.x))  # compiled kernels: one 0-d tensor per run
    if kernel.compile and kernel.scan_body is not None and callback is None and not progress:
        return _run_chunks(kernel, energy, state, n_steps, generator, recorder)
    for i in progress_bar(n_steps, progress, type(kernel).__name__):
        state, info = kernel.step(state, energy, generator)
        if recorder is not None:
            recorder.record(state, info)
        if callback is not None:
            callback(start + i, state, info)
    return state


#: Transitions per compiled graph call in :func:`run_steps` (a callback or progress bar: one per call).
CHUNK = 50
#: Chunk length when every step's position is traced: the chunk's positions ``(chunk, B, *event)``
#: are held in one buffer, so chunks hold at most about :data:`TRACE_NUMBERS` numbers (32 MB in
#: float64), between :data:`TRACE_CHUNK` and :data:`CHUNK` steps.
TRACE_CHUNK = 10
TRACE_NUMBERS = 2 ** 22


def trace_chunk(x: Tensor) -> int:
    """Steps per compiled call when every position ``x`` ``(B, *event)`` is kept."""
    return max(TRACE_CHUNK, min(CHUNK, TRACE_NUMBERS // max(x.numel(), 1)))


def _run_chunks(kernel: MCMCKernel, energy: ec.Energy, state: State, n_steps: int, generator, recorder) -> State:
    """:func:`run_steps` of a compiled kernel, several transitions per graph call.

    Chunks of :data:`CHUNK` steps, or of ``trace_every`` steps when recording a trace (each chunk
    then ends on a recorded step), or, to trace every step, of :func:`trace_chunk` steps that keep
    their positions (fewer for very large states, whose chunk of positions is held in memory).
    """
    every = recorder.trace_every if recorder is not None else 0
    keep = every == 1
    chunk = min(trace_chunk(state.x) if keep else every or CHUNK, n_steps)
    done = 0
    while done < n_steps:
        m = min(chunk, n_steps - done)
        state, means, sums, kept = kernel.steps(state, energy, generator, m, chunk=chunk, positions=keep)
        if recorder is not None:
            recorder.record_chunk(state, means, sums, kept, energy_error=kernel.needs_energy)
        done += m
    return state


def run_adaptive(kernel: MCMCKernel, energy: ec.Energy, state: State, n_steps: int, generator=None, *,
                 adapt: DualAveraging, adapt_state: Optional[DualAveragingState] = None,
                 recorder: Optional[Recorder] = None, callback: Optional[Callback] = None,
                 progress: bool = False, start: int = 0) -> Tuple[State, MCMCKernel, DualAveragingState]:
    """``n_steps`` transitions adapting the step size by dual averaging (Hoffman & Gelman 2014, Alg. 5).

    Starts from ``adapt_state`` (to continue an adaptation) or from ``kernel.step_size``. Returns
    the state, the kernel at the averaged (frozen) step size, and the adaptation state.
    """
    if adapt_state is None:
        if kernel.step_size is None:
            raise ec.InputError("run_adaptive needs a kernel with a starting step_size, or an adapt_state")
        adapt_state = adapt.init(kernel.step_size, like=state.x)
    moving = kernel.for_adaptation()
    for i in progress_bar(n_steps, progress, f"{type(kernel).__name__} warm-up"):
        state, info = moving.with_step_size(adapt_state.step_size).step(state, energy, generator)
        adapt_state = adapt.update(adapt_state, moving.adaptation_statistic(info))
        if recorder is not None:
            recorder.record(state, info)
        if callback is not None:
            callback(start + i, state, info)
    return state, kernel.with_step_size(adapt_state.final_step_size), adapt_state


def search_step_size(kernel: MCMCKernel, energy: ec.Energy, state: State, generator=None,
                     guess: Optional[float] = None) -> Tuple[float, int]:
    """A starting step size: double/halve until one trial's mean acceptance crosses ``target_accept``.

    Trials start from ``state`` and are discarded. Returns the step size and the NFE spent.
    """
    moving = kernel.for_adaptation()
    nfe = 0

    def trial(h: float) -> Tensor:
        nonlocal nfe
        _, info = moving.with_step_size(h).step(state, energy, generator)
        nfe += info.nfe
        return moving.adaptation_statistic(info)

    h0 = kernel.initial_step_size_guess if guess is None else guess
    return find_initial_step_size(trial, h0, target=kernel.target_accept), nfe


def warmup_with_mass(kernel: MCMCKernel, energy: ec.Energy, state: State, config: RunConfig, generator=None,
                     recorder: Optional[Recorder] = None) -> Tuple[State, MCMCKernel, int]:
    """Warm-up that adapts a diagonal mass and the step size in Stan's windows (``samplers.mass_adaptation``).

    Starts from ``kernel.step_size`` (as :func:`run_adaptive`). Returns the state, the kernel at its
    final mass and step size, and the NFE of the step-size searches after each mass update (the
    transitions' NFE go to ``recorder``).
    """
    first, slow, last = windows(config.n_warmup)
    nfe = 0
    common = dict(adapt=config.adapt, recorder=recorder, progress=config.progress)
    state, kernel, _ = run_adaptive(kernel, energy, state, first, generator, callback=config.callback, **common)
    start = first
    for size in slow:
        estimate = VarianceEstimate()

        def collect(i, s, info, estimate=estimate):
            estimate.update(s.x)
            if config.callback is not None:
                config.callback(i, s, info)

        state, kernel, _ = run_adaptive(kernel, energy, state, size, generator, callback=collect, start=start, **common)
        start += size
        kernel = kernel.with_mass(1.0 / regularised_variance(estimate, state.x))
        h0, n = search_step_size(kernel, energy, state, generator, guess=float(kernel.step_size))
        kernel, nfe = kernel.with_step_size(h0), nfe + n
    state, kernel, _ = run_adaptive(kernel, energy, state, last, generator, callback=config.callback, start=start, **common)
    return state, kernel, nfe


def sample_kernel(kernel: MCMCKernel, energy: ec.Energy, x0: Tensor, t, config: RunConfig, *,
                  generator: Optional[torch.Generator] = None) -> SampleResult:
    """Warm-up (adapting when ``config.adapt``), then ``config.n_steps`` recorded transitions.

    Parameters
    ----------
    kernel : MCMCKernel
        ULA, MALA or HMC (``step_size`` ``None`` needs ``config.adapt``).
    energy : Energy
        Target ``p(x) ∝ exp(-E(x, t))``.
    x0 : Tensor
        ``(B, *event)`` initial positions (one chain per row); fixes device and dtype.
    t : float, Tensor or None
        Fixed diffusion time of the target (``None``: static).
    config : RunConfig
        Steps, warm-up, adaptation, recording, callback.
    generator : torch.Generator, optional
        Source of randomness (same seed → identical samples).

    Returns
    -------
    SampleResult
        ``samples`` ``(B, *event)``, ``state``, ``info`` a :class:`KernelSummary` whose
        ``warnings`` list what is wrong with the run (warned or raised per ``config.on_divergence``).

    Raises
    ------
    samplers.health.DivergenceError
        With ``on_divergence="raise"``, when the run diverged.
    """
    if isinstance(x0, Tensor):
        check_generator(generator, x0)
    state, nfe = init_state(kernel, energy, x0, t)
    warm = Recorder()
    if kernel.adapt_mass and config.adapt is None:
        raise ec.InputError(
            f"{type(kernel).__name__}(adapt_mass=True) adapts the step size with the mass (a fixed step would not "
            "fit the new mass): leave step_size=None, or pass mass=... yourself with a fixed step_size"
        )
    if config.adapt is not None:
        if kernel.step_size is None:
            h0, n = search_step_size(kernel, energy, state, generator)
            nfe += n
            kernel = kernel.with_step_size(h0)
        if kernel.adapt_mass:
            state, kernel, n = warmup_with_mass(kernel, energy, state, config, generator, warm)
            nfe += n
        else:
            state, kernel, _ = run_adaptive(kernel, energy, state, config.n_warmup, generator, adapt=config.adapt,
                                            recorder=warm, callback=config.callback, progress=config.progress)
    elif config.n_warmup:
        state = run_steps(kernel, energy, state, config.n_warmup, generator, recorder=warm,
                          callback=config.callback, progress=config.progress)
    rec = Recorder(config.trace_every)
    state = run_steps(kernel, energy, state, config.n_steps, generator, recorder=rec, callback=config.callback,
                      progress=config.progress, start=config.n_warmup)
    info = KernelSummary(
        nfe=nfe + warm.nfe + rec.nfe,
        n_steps=rec.n_steps,
        step_size=torch.as_tensor(kernel.step_size, device=x0.device, dtype=x0.dtype).detach().reshape(()),
        n_warmup=config.n_warmup,
        acceptance=rec.steps(rec.acceptance),
        acceptance_per_chain=rec.acc_sum / rec.n_steps if rec.n_steps else None,
        divergences=rec.total_divergences() if rec.n_steps else None,
        energy_error=rec.steps(rec.energy_error),
        warmup_acceptance=warm.mean_acceptance(),
        trace=rec.steps(rec.trace),
        energy_trace=rec.steps(rec.energy_trace),
        kernel=kernel,
    )
    return health.finish(SampleResult(samples=state.x, info=info, state=state), x0, sampler=type(kernel).__name__,
                         on_divergence=config.on_divergence, metropolis=kernel.needs_energy,
                         adapted=config.adapt is not None)
