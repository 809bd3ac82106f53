"""The sampler contract shared by every algorithm in this package.

A sampler is an immutable configuration (a frozen dataclass). MCMC kernels follow BlackJAX's
``init``/``step`` split:

``state = kernel.init(energy, x, t)``
    evaluates the energy (and gradient) once and caches them in a :class:`State`;
``state, info = kernel.step(state, energy, step_size, generator)``
    makes one transition, reusing what the state holds (a rejected proposal costs one
    evaluation, an accepted one too: the proposal's energy and gradient become the new state's);
``result = sampler.sample(energy, x0, t=None, generator=g)``
    the one loop: adaptation, progress bar, callbacks, thinned traces, NFE accounting.

Accept/reject is always per chain: ``info.accepted`` is ``(B,)``. A proposal whose energy or
gradient is not finite is rejected for that chain and counted in ``info.divergent``; the state
therefore stays finite, and a non-finite *initial* state raises :class:`NonFiniteStateError`.

Shapes: ``x`` is ``(B, *event)`` (points or images); per-chain quantities are ``(B,)`` and are
broadcast against ``x`` with :func:`per_chain`; ``t`` is ``None`` or ``(B,)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor

import ebmcompose as ec

__all__ = [
    "State",
    "StepInfo",
    "SampleResult",
    "NonFiniteStateError",
    "per_chain",
    "randn_like",
    "uniform",
    "check_generator",
    "require_energy",
    "evaluate",
    "finite_rows",
    "check_step_size",
    "check_positive_int",
    "Recorder",
]


class NonFiniteStateError(FloatingPointError):
    """The current state of a chain has a non-finite energy or gradient."""


@dataclass(frozen=True)
class State:
    """Cached position of a batch of chains.

    Attributes
    ----------
    x : Tensor
        ``(B, *event)`` positions.
    energy : Tensor or None
        ``(B,)`` energies at ``x`` (``None`` for score-only kernels).
    grad : Tensor
        ``∇x E`` at ``x``, shaped like ``x``.
    t : Tensor or None
        ``(B,)`` diffusion time the energy is evaluated at, or ``None`` (static target).
    """

    x: Tensor
    energy: Optional[Tensor]
    grad: Tensor
    t: Optional[Tensor] = None

    def replace(self, **changes) -> "State":
        """A copy with some fields replaced (states are immutable)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class StepInfo:
    """What one transition did, per chain.

    Attributes
    ----------
    acceptance : Tensor
        ``(B,)`` Metropolis acceptance probability ``min(1, exp(log_ratio))`` (1 for
        unadjusted kernels; 0 for divergent proposals).
    accepted : Tensor
        ``(B,)`` bool, whether the proposal was taken.
    divergent : Tensor
        ``(B,)`` bool, proposal had a non-finite energy or gradient (and was rejected).
    energy_error : Tensor or None
        ``(B,)`` change of the Hamiltonian (HMC) or log Metropolis ratio (MALA); ``None`` for
        unadjusted kernels.
    nfe : int
        Function evaluations this step cost.
    """

    acceptance: Tensor
    accepted: Tensor
    divergent: Tensor
    energy_error: Optional[Tensor]
    nfe: int


@dataclass
class SampleResult:
    """Output of ``sampler.sample``.

    Attributes
    ----------
    samples : Tensor
        ``(B, *event)`` final positions, on ``x0``'s device and dtype.
    info : dict
        Diagnostics. Always: ``"nfe"`` (int, total evaluations), ``"n_steps"`` (int).
        MCMC kernels add ``"acceptance"`` (``(n_steps,)`` mean acceptance per step),
        ``"acceptance_per_chain"`` (``(B,)``), ``"divergences"`` (int), ``"step_size"`` (final,
        0-d tensor), and when asked ``"trace"`` (``(T, B, *event)`` thinned positions) and
        ``"energy_trace"`` (``(T, B)``).
    state : State or None
        The final state (to continue sampling without re-evaluating).
    """

    samples: Tensor
    info: Dict[str, Any] = field(default_factory=dict)
    state: Optional[State] = None


# ------------------------------------------------------------------------------- small parts
def per_chain(v: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-chain ``(B,)`` (or scalar) tensor to broadcast against ``like`` ``(B, *event)``."""
    if v.dim() == 0:
        return v
    return v.reshape((v.shape[0],) + (1,) * (like.dim() - 1))


def check_generator(generator: Optional[torch.Generator], x: Tensor) -> None:
    """Raise a clear error when ``generator`` lives on another device than ``x``."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator, got {type(generator).__name__}; "
            "use torch.Generator(device=x.device).manual_seed(seed)"
        )
    if generator.device.type != x.device.type:
        raise ValueError(
            f"the generator is on {generator.device} but x is on {x.device}; use "
            f"torch.Generator(device={str(x.device)!r}).manual_seed(seed)"
        )


def randn_like(x: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    """Standard normal noise shaped like ``x`` on its device/dtype, drawn from ``generator``."""
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def uniform(shape, like: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    """``U(0, 1)`` draws of ``shape`` on ``like``'s device/dtype."""
    return torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)


def require_energy(energy: ec.Energy, sampler: str) -> None:
    """Raise :class:`ec.ScoreOnlyError` naming the fix when a Metropolis kernel gets a score-only energy."""
    if not energy.has_energy:
        only = ", ".join(l._label() for l in energy.leaves() if not l.has_energy)
        raise ec.ScoreOnlyError(
            f"{sampler} needs energy values for its Metropolis accept/reject step, but "
            f"{only or 'this energy'} provides scores only. Use ULA (or AnnealedLangevin / "
            "ReverseDiffusion / PredictorCorrector with a ULA corrector), which needs only the "
            "score, or an energy-parameterised model"
        )


def check_step_size(step_size, name: str = "step_size", allow_none: bool = True) -> None:
    """Validate a step size: ``None`` (adapt) or a positive finite number."""
    if step_size is None:
        if allow_none:
            return
        raise ValueError(f"{name} is required here; pass a positive number")
    if isinstance(step_size, Tensor):
        ok = bool(torch.isfinite(step_size).all()) and bool((step_size > 0).all())
    else:
        ok = isinstance(step_size, (int, float)) and not isinstance(step_size, bool) and step_size > 0 and step_size < float("inf")
    if not ok:
        raise ValueError(
            f"{name} must be a positive finite number, got {step_size!r}; "
            + ("or None to adapt it automatically" if allow_none else "")
        )


def check_positive_int(value, name: str, allow_zero: bool = False) -> None:
    """Validate a count such as ``n_steps``."""
    lo = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")


def finite_rows(*tensors: Optional[Tensor]) -> Tensor:
    """``(B,)`` bool: rows where every given tensor is finite (``None`` entries are skipped)."""
    ok = None
    for v in tensors:
        if v is None:
            continue
        r = torch.isfinite(v) if v.dim() == 1 else torch.isfinite(v.reshape(v.shape[0], -1)).all(dim=1)
        ok = r if ok is None else ok & r
    return ok


def evaluate(energy: ec.Energy, x: Tensor, t: Optional[Tensor], need_energy: bool, validate: bool = False):
    """Energy (or ``None``), gradient and NFE at ``x`` — the one place kernels call the model.

    Samplers validate ``x0`` once (``validate=True``) and then evaluate unchecked.
    """
    ev = energy.evaluate(x, t, energy=need_energy, grad=True, validate=validate)
    return ev.energy, ev.grad, ev.nfe


def init_state(energy: ec.Energy, x: Tensor, t, need_energy: bool, sampler: str) -> Tuple[State, int]:
    """Validate ``x`` and ``t``, evaluate once, and check the initial state is finite."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (B, *event), got {type(x).__name__}")
    if need_energy:
        require_energy(energy, sampler)
    tt = energy._validate(x, t)  # clear errors for shape / device / NaN / t range
    e, g, nfe = evaluate(energy, x, tt, need_energy)
    ok = finite_rows(e, g)
    if not bool(ok.all()):
        bad = (~ok).nonzero().flatten()
        raise NonFiniteStateError(
            f"{sampler}: the initial state has a non-finite energy or gradient in {bad.numel()} "
            f"chain(s) (first: chain {int(bad[0])}); start the chains inside the support of the "
            "target (e.g. from the prior or a data sample)"
        )
    return State(x=x, energy=e, grad=g, t=tt), nfe


class Recorder:
    """Collects per-step diagnostics without synchronising the device every step.

    Parameters
    ----------
    n_chains : int
        ``B``.
    trace_every : int
        Keep every ``trace_every``-th position (0: none).
    """

    def __init__(self, n_chains: int, trace_every: int = 0):
        check_positive_int(trace_every, "trace_every", allow_zero=True)
        self.trace_every = trace_every
        self.acceptance: List[Tensor] = []
        self.acc_sum: Optional[Tensor] = None
        self.divergent: Optional[Tensor] = None
        self.energy_error: List[Tensor] = []
        self.trace: List[Tensor] = []
        self.energy_trace: List[Tensor] = []
        self.nfe = 0
        self.n_steps = 0

    def record(self, state: State, info: StepInfo) -> None:
        """Add one step's :class:`StepInfo` (and the state to the trace when due)."""
        self.n_steps += 1
        self.nfe += info.nfe
        acc = info.acceptance
        self.acceptance.append(acc.mean())
        self.acc_sum = acc.clone() if self.acc_sum is None else self.acc_sum + acc
        div = info.divergent.long()
        self.divergent = div if self.divergent is None else self.divergent + div
        if info.energy_error is not None:
            self.energy_error.append(info.energy_error.abs().mean())
        if self.trace_every and self.n_steps % self.trace_every == 0:
            self.trace.append(state.x.detach().clone())
            if state.energy is not None:
                self.energy_trace.append(state.energy.detach().clone())

    def info(self, init_nfe: int = 0) -> Dict[str, Any]:
        """The diagnostics dict of :class:`SampleResult` (one device sync here)."""
        out: Dict[str, Any] = {"nfe": self.nfe + init_nfe, "n_steps": self.n_steps}
        if self.acceptance:
            out["acceptance"] = torch.stack(self.acceptance)
            out["acceptance_per_chain"] = self.acc_sum / self.n_steps
            out["divergences"] = int(self.divergent.sum())
        if self.energy_error:
            out["energy_error"] = torch.stack(self.energy_error)
        if self.trace:
            out["trace"] = torch.stack(self.trace)
        if self.energy_trace:
            out["energy_trace"] = torch.stack(self.energy_trace)
        return out


def progress_bar(n: int, enabled: bool, desc: str):
    """``range(n)`` wrapped in a tqdm bar when ``enabled`` (tqdm imported lazily)."""
    if not enabled:
        return range(n)
    from tqdm.auto import tqdm

    return tqdm(range(n), desc=desc, leave=False)


Callback = Callable[[int, State, StepInfo], Optional[bool]]
