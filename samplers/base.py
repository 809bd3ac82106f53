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
import math
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor

import ebmcompose as ec
from ebmcompose.energy import ENERGY as _NEED_ENERGY, GRAD as _NEED_GRAD, _normalise_t

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
    "surely_finite",
    "check_step_size",
    "check_positive_int",
    "Recorder",
    "progress_bar",
    "init_state",
    "sqrt_step",
    "compiled",
    "compiled_transition",
    "split_compiled",
    "MCMCKernel",
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
        cls = type(self)
        if cls in _PLAIN_STATE_TYPES:
            # fast path for State / HMCState (no __post_init__, no init=False fields): the same
            # result as dataclasses.replace without its per-call field introspection
            d = self.__dict__
            merged = {**d, **changes}
            if len(merged) == len(d):  # no unknown field (dataclasses.replace raises for those)
                new = object.__new__(cls)
                new.__dict__.update(merged)
                return new
        return dataclasses.replace(self, **changes)


#: State classes whose ``replace`` may copy ``__dict__`` directly (see :meth:`State.replace`).
_PLAIN_STATE_TYPES = {State}


class StepInfo:
    """What one transition did, per chain (immutable).

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
    all_accepted : bool
        ``True`` for an info made by :meth:`every_chain_accepted` (no tensors behind it yet).

    Notes
    -----
    :meth:`every_chain_accepted` describes an unadjusted step in which every chain took its
    proposal without holding any tensor: ``acceptance``, ``accepted`` and ``divergent`` are
    made on first access, and :class:`Recorder` counts such a step without touching a tensor.
    At small batch sizes each tensor op is a sizeable part of a step, so an unadjusted kernel
    (ULA) saves three per step this way.
    """

    __slots__ = ("_acceptance", "_accepted", "_divergent", "_energy_error", "_nfe", "_like")

    # Immutable through read-only properties (no setters) over private slots: plain slot stores
    # in the constructor, which runs once per step.
    def __init__(self, acceptance: Tensor, accepted: Tensor, divergent: Tensor, energy_error: Optional[Tensor], nfe: int):
        self._acceptance = acceptance
        self._accepted = accepted
        self._divergent = divergent
        self._energy_error = energy_error
        self._nfe = nfe
        self._like = None

    @classmethod
    def every_chain_accepted(cls, like: Tensor, nfe: int) -> "StepInfo":
        """An unadjusted step in which all ``B = like.shape[0]`` chains took their proposal.

        ``acceptance`` (ones of ``like``'s dtype), ``accepted`` (all ``True``) and ``divergent``
        (all ``False``) are ``(B,)`` tensors on ``like``'s device, made when first read.
        """
        info = cls(None, None, None, None, nfe)
        # the batch size, dtype and device only: holding ``like`` would keep its memory alive
        info._like = (like.shape[0], like.dtype, like.device)
        return info

    @property
    def all_accepted(self) -> bool:
        return self._like is not None

    def _made(self, name: str, fill, dtype: Optional[torch.dtype]) -> Tensor:
        v = getattr(self, name)
        if v is None and self._like is not None:
            n, like_dtype, device = self._like
            v = torch.full((n,), fill, dtype=dtype or like_dtype, device=device)
            setattr(self, name, v)
        return v

    @property
    def acceptance(self) -> Tensor:
        return self._made("_acceptance", 1.0, None)

    @property
    def accepted(self) -> Tensor:
        return self._made("_accepted", True, torch.bool)

    @property
    def divergent(self) -> Tensor:
        return self._made("_divergent", False, torch.bool)

    @property
    def energy_error(self) -> Optional[Tensor]:
        return self._energy_error

    @property
    def nfe(self) -> int:
        return self._nfe

    def __repr__(self) -> str:
        if self._like is not None:
            return f"StepInfo(every chain accepted, B={self._like[0]}, nfe={self._nfe})"
        return (
            f"StepInfo(acceptance={self._acceptance!r}, accepted={self._accepted!r}, divergent={self._divergent!r}, "
            f"energy_error={self._energy_error!r}, nfe={self._nfe})"
        )


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
    nd = like.dim()
    if nd == 2:
        return v.unsqueeze(1)
    return v.reshape((v.shape[0],) + (1,) * (nd - 1))


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
    """Standard normal noise shaped like ``x`` on its device/dtype, drawn from ``generator``.

    Always contiguous, so the draws equal ``torch.randn(x.shape, generator=generator)`` whatever
    ``x``'s strides (same seed, same samples for any layout).
    """
    # randn_like: one dispatch without reading x.device / x.dtype in Python (~2.5 us less per
    # call, a noticeable part of a step at small N)
    return torch.randn_like(x, generator=generator, memory_format=torch.contiguous_format)


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


def surely_finite(*tensors: Optional[Tensor]) -> bool:
    """``True`` when every element of the given tensors is finite, decided cheaply; ``False`` when unsure.

    One contiguous ``sum`` per tensor, read back as a Python number (a finite sum has no inf or
    NaN term; two dispatches, where ``isfinite`` on the sum would add four). Only on the CPU,
    where reading the answer back costs nothing, and never while ``torch.compile`` traces (a
    data-dependent branch would break the graph); elsewhere, and when a sum overflows or is not
    finite, it answers ``False`` and the caller takes its per-row path. Per-row checks and
    ``torch.where`` over ``(B, 2)`` rows are slow on the CPU (reductions over a tiny last axis),
    so a kernel skips them this way in the common all-finite case.
    """
    if torch.compiler.is_compiling():
        return False
    for v in tensors:
        if v is None:
            continue
        if not v.is_cpu or not math.isfinite(v.sum().item()):
            return False
    return True


def finite_rows(*tensors: Optional[Tensor]) -> Tensor:
    """``(B,)`` bool: rows where every given tensor is finite (``None`` entries are skipped)."""
    ok = None
    for v in tensors:
        if v is None:
            continue
        # v * 0 is 0 where v is finite and NaN where it is inf or NaN (fewer ops than isfinite + all)
        z = v * 0.0
        r = (z if v.dim() == 1 else z.reshape(v.shape[0], -1).sum(dim=1)) == 0
        ok = r if ok is None else ok & r
    return ok


def evaluate(energy: ec.Energy, x: Tensor, t: Optional[Tensor], need_energy: bool, validate: bool = False):
    """Energy (or ``None``), gradient and NFE at ``x`` — the one place kernels call the model.

    Samplers validate ``x0`` once (``validate=True``) and then evaluate unchecked.
    """
    if validate:
        ev = energy.evaluate(x, t, energy=need_energy, grad=True, validate=True)
        return ev.energy, ev.grad, ev.nfe
    if need_energy and not energy.has_energy:  # what Energy.evaluate raises, naming the fix
        raise ec.ScoreOnlyError(energy._score_only_message())
    if t is not None:
        t = _normalise_t(t, x)
    # the evaluation itself, without the keyword parsing and the result object of
    # ``Energy.evaluate`` (a sizeable part of a step's Python time at small batch sizes)
    return energy._evaluate_prepared(x, t, _NEED_GRAD | (_NEED_ENERGY if need_energy else 0))


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


def _mean_abs(v: Tensor, dim=None) -> Tensor:
    """Mean ``|v|`` (over ``dim``; all elements by default) as an L1 norm: one pass, no ``abs()`` temporary."""
    n = v.numel() if dim is None else v.shape[dim]
    return torch.linalg.vector_norm(v, ord=1, dim=dim) / n


class Recorder:
    """Collects per-step diagnostics without synchronising the device every step.

    Per-step tensors are buffered and reduced in chunks (a few ops per chunk instead of five per
    step), and a step in which every chain took its proposal
    (:meth:`StepInfo.every_chain_accepted`) is counted without a tensor op. The public
    attributes ``acceptance`` (list of 0-d tensors, the mean acceptance of each step),
    ``acc_sum`` (``(B,)``), ``divergent`` (``(B,)`` long counts) and ``energy_error`` (list of
    0-d tensors) reduce what is pending when read.

    Parameters
    ----------
    n_chains : int
        ``B``.
    trace_every : int
        Keep every ``trace_every``-th position (0: none).
    """

    #: Buffered per-chain values before a chunk is reduced (bounds the extra memory), on the CPU.
    _BUFFER_ELEMENTS = 1 << 20
    #: The same bound on a GPU, where each op costs the host a launch (several microseconds)
    #: whatever its size and memory traffic is cheap: chunks of 8 steps even at N = 1e6.
    _DEVICE_BUFFER_ELEMENTS = 1 << 23
    _MAX_CHUNK = 256
    #: From this many chains on, each step is reduced at once on the CPU: stacking a chunk then
    #: costs more memory traffic than the handful of ops per step it saves.
    _DIRECT_CHAINS = 8192

    def __init__(self, n_chains: int, trace_every: int = 0):
        check_positive_int(trace_every, "trace_every", allow_zero=True)
        self.trace_every = trace_every
        # per-step mean acceptance, in step order: 1-d tensors (reduced chunks) and ints (runs of
        # steps in which every chain accepted, acceptance exactly 1)
        self._acc_parts: List[Union[Tensor, int]] = []
        self._acc_list: Optional[List[Tensor]] = None  # ``acceptance`` as 0-d tensors, cached
        self._acc_sum: Optional[Tensor] = None
        self._divergent: Optional[Tensor] = None
        self._like = None  # (B, dtype, device) of the steps in which every chain accepted
        self._err_parts: List[Tensor] = []
        self._pending_acc: List[Tensor] = []
        self._pending_div: List[Tensor] = []
        self._pending_err: List[Tensor] = []
        self._n_chains = max(int(n_chains), 1)
        self._chunk = 0  # steps per reduced chunk, set by the first recorded step (it depends on the device)
        self.trace: List[Tensor] = []
        self.energy_trace: List[Tensor] = []
        self.nfe = 0
        self.n_steps = 0

    def record(self, state: State, info: StepInfo) -> None:
        """Add one step's :class:`StepInfo` (and the state to the trace when due)."""
        # the slots directly (not the properties): this runs once per step
        self.n_steps += 1
        self.nfe += info._nfe
        if info._like is not None:
            if self._pending_acc:
                self._flush()  # keep the steps in order
            parts = self._acc_parts
            if parts and type(parts[-1]) is int:
                parts[-1] += 1
            else:
                parts.append(1)
            self._like = info._like
            self._acc_list = None
        else:
            self._pending_acc.append(info._acceptance)
            self._pending_div.append(info._divergent)
            if info._energy_error is not None:
                self._pending_err.append(info._energy_error)
            if len(self._pending_acc) >= (self._chunk or self._chunk_for(info._acceptance)):
                self._flush()
        if self.trace_every and self.n_steps % self.trace_every == 0:
            self.trace.append(state.x.detach().clone())
            if state.energy is not None:
                self.energy_trace.append(state.energy.detach().clone())

    def _chunk_for(self, like: Tensor) -> int:
        """Steps buffered before a reduction, for per-chain values like ``like`` (and remember it)."""
        n = self._n_chains
        if like.is_cpu:
            chunk = 1 if n >= self._DIRECT_CHAINS else min(self._MAX_CHUNK, self._BUFFER_ELEMENTS // n)
        else:
            chunk = min(self._MAX_CHUNK, max(1, self._DEVICE_BUFFER_ELEMENTS // n))
        self._chunk = chunk
        return chunk

    def _flush(self) -> None:
        """Reduce the buffered steps into the running statistics (no device sync)."""
        acc = self._pending_acc
        if acc:
            self._acc_list = None
            if len(acc) == 1 or any(a.shape != acc[0].shape for a in acc):  # step by step
                for a, dv in zip(acc, self._pending_div):
                    self._acc_parts.append(a.mean().reshape(1))
                    if self._acc_sum is None:
                        self._acc_sum = a.clone()
                        self._divergent = dv.long()
                    else:
                        self._acc_sum.add_(a)
                        self._divergent.add_(dv)
            else:
                a = torch.stack(acc)  # (c, B)
                self._acc_parts.append(a.mean(dim=1))
                a_sum = a.sum(dim=0)
                # counted as bytes into int32: a bool sum would first copy the (c, B) stack to int64
                d_sum = torch.stack(self._pending_div).view(torch.uint8).sum(dim=0, dtype=torch.int32)
                if self._acc_sum is None:
                    self._acc_sum, self._divergent = a_sum, d_sum.long()
                else:
                    self._acc_sum.add_(a_sum)
                    self._divergent.add_(d_sum)
            self._pending_acc, self._pending_div = [], []
        err = self._pending_err
        if err:
            if len(err) == 1 or any(e.shape != err[0].shape for e in err):
                self._err_parts.extend(_mean_abs(e).reshape(1) for e in err)
            else:
                self._err_parts.append(_mean_abs(torch.stack(err), dim=1))
            self._pending_err = []

    def _acceptance_vector(self) -> Optional[Tensor]:
        """``(n_steps,)`` mean acceptance per step, in order (``None`` before any step)."""
        self._flush()
        parts = self._acc_parts
        if not parts:
            return None
        like = next((p for p in parts if type(p) is not int), None)
        dtype, device = (like.dtype, like.device) if like is not None else self._like[1:]
        return torch.cat([torch.ones(p, dtype=dtype, device=device) if type(p) is int else p for p in parts])

    @property
    def acceptance(self) -> List[Tensor]:
        """Mean acceptance of each recorded step (0-d tensors)."""
        if self._acc_list is None or self._pending_acc:
            v = self._acceptance_vector()
            self._acc_list = [] if v is None else list(v.unbind(0))
        return self._acc_list

    @property
    def acc_sum(self) -> Optional[Tensor]:
        """``(B,)`` sum of the per-chain acceptance over the recorded steps (``None`` before any)."""
        self._flush()
        unanimous = sum(p for p in self._acc_parts if type(p) is int)  # each of those adds 1 per chain
        if not unanimous:
            return self._acc_sum
        if self._acc_sum is None:
            n, dtype, device = self._like
            return torch.full((n,), float(unanimous), dtype=dtype, device=device)
        return self._acc_sum + unanimous

    @property
    def divergent(self) -> Optional[Tensor]:
        """``(B,)`` number of divergent proposals per chain (``None`` before any step)."""
        self._flush()
        if self._divergent is None and self._like is not None:  # only steps without divergences so far
            self._divergent = torch.zeros(self._like[0], dtype=torch.long, device=self._like[2])
        return self._divergent

    @property
    def energy_error(self) -> List[Tensor]:
        """Mean absolute energy error of each recorded step (0-d tensors)."""
        self._flush()
        if len(self._err_parts) > 1:
            self._err_parts = [torch.cat(self._err_parts)]
        return list(self._err_parts[0].unbind(0)) if self._err_parts else []

    def info(self, init_nfe: int = 0) -> Dict[str, Any]:
        """The diagnostics dict of :class:`SampleResult` (one device sync here)."""
        out: Dict[str, Any] = {"nfe": self.nfe + init_nfe, "n_steps": self.n_steps}
        acc = self._acceptance_vector()
        if acc is not None:
            out["acceptance"] = acc
            out["acceptance_per_chain"] = self.acc_sum / self.n_steps
            out["divergences"] = int(self.divergent.sum())
        if self._err_parts:
            out["energy_error"] = torch.cat(self._err_parts)
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


# ------------------------------------------------------------------ noise-ladder samplers
# Added for the samplers that run down a noise ladder (ReverseDiffusion, AnnealedLangevin,
# PredictorCorrector). New names only.


def prior_sample(
    x0: Optional[Tensor],
    shape=None,
    generator: Optional[torch.Generator] = None,
    device=None,
    dtype: Optional[torch.dtype] = None,
    sampler: str = "sampler",
) -> Tensor:
    """The starting point ``x_T`` of a sampler that runs down a noise ladder.

    ``x0`` itself when given (checked to be a floating tensor); otherwise ``N(0, I)`` of
    ``shape = (B, *event)`` drawn from ``generator`` on ``device`` (default: the generator's
    device) with ``dtype`` (default: torch's default dtype).
    """
    if x0 is not None:
        if shape is not None and tuple(shape) != tuple(x0.shape):
            raise ValueError(f"{sampler}: shape={tuple(shape)} disagrees with x0 of shape {tuple(x0.shape)}; pass one of them")
        if not isinstance(x0, Tensor) or not x0.is_floating_point():
            raise TypeError(
                f"{sampler}: x0 must be a floating-point torch.Tensor of shape (B, *event), got "
                f"{type(x0).__name__ if not isinstance(x0, Tensor) else x0.dtype}"
            )
        check_generator(generator, x0)
        return x0
    if shape is None:
        raise ValueError(
            f"{sampler}: pass x0 (the starting noise x_T, shape (B, *event)) or shape=(B, *event) "
            "to draw x_T ~ N(0, I) from the generator"
        )
    shape = tuple(int(s) for s in shape)
    if len(shape) < 1 or any(s < 1 for s in shape):
        raise ValueError(f"{sampler}: shape must be (B, *event) with positive sizes, got {shape}")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    x = torch.randn(shape, generator=generator, device=device, dtype=dtype or torch.get_default_dtype())
    return x


def raise_if_nonfinite(flags: List[Tensor], ts, sampler: str, hint: str) -> None:
    """Raise :class:`NonFiniteStateError` naming the first level whose state was not finite.

    ``flags`` holds one 0-d bool tensor per level (``True``: every chain finite), collected
    without a device synchronisation; this is the one sync at the end of a run. ``ts`` are
    the levels' times (a sequence of floats).
    """
    if not flags:
        return
    ok = torch.stack(flags)
    if bool(ok.all()):
        return
    first = int((~ok).nonzero()[0, 0])
    raise NonFiniteStateError(
        f"{sampler}: the state became non-finite (NaN or inf) at level {first} of the ladder "
        f"(t={float(ts[first]):.4g}); "
        + hint
    )


__all__ += ["prior_sample", "raise_if_nonfinite"]


# ------------------------------------------------------------------------------- kernel pieces
StepSize = Union[float, Tensor]


def sqrt_step(step_size: StepSize, factor: float = 1.0) -> StepSize:
    """``sqrt(factor * step_size)`` for a Python float or a 0-d tensor (no host sync)."""
    if isinstance(step_size, Tensor):
        return (factor * step_size).sqrt()
    return math.sqrt(factor * step_size)


def _compile(fn: Callable, fullgraph: bool = False) -> Callable:
    # Static shapes: one specialised graph per (shape, dtype), compiled on first use and reused
    # for every later step (step sizes are 0-d tensor inputs, not constants).
    return torch.compile(fn, dynamic=False, fullgraph=fullgraph)


class _CompiledFn:
    """``torch.compile(fn)`` that falls back to eager ``fn`` (with one warning) if compiling fails."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.compiled: Optional[Callable] = None
        self.failed = False

    def __call__(self, *args):
        if self.failed:
            return self.fn(*args)
        try:
            if self.compiled is None:
                self.compiled = _compile(self.fn)
            return self.compiled(*args)
        except Exception as exc:  # compiler missing, unsupported op, ...
            self.failed = True
            warnings.warn(
                f"torch.compile of {getattr(self.fn, '__name__', self.fn)} failed "
                f"({type(exc).__name__}: {str(exc)[:200]}); running it eagerly instead",
                RuntimeWarning,
                stacklevel=2,
            )
            return self.fn(*args)


_COMPILED: Dict[Callable, _CompiledFn] = {}


def compiled(fn: Callable) -> Callable:
    """A cached ``torch.compile`` of a pure tensor function, with graceful eager fallback.

    Kernels compile their step *math* (proposal, Metropolis correction) this way when the whole
    transition cannot be compiled (see :func:`compiled_transition`). Pass step sizes as 0-d
    tensors so a new value does not trigger a recompilation.
    """
    out = _COMPILED.get(fn)
    if out is None:
        out = _COMPILED[fn] = _CompiledFn(fn)
    return out


class _CompiledTransition:
    """``torch.compile(fn, fullgraph=True)`` of a whole transition, energy evaluation included.

    ``fn(energy, *tensors)`` must be pure (random draws are passed in). Energies whose
    evaluation cannot be captured in one graph (autograd inside, data-dependent Python, a
    missing compiler) are remembered and get ``None`` back: the caller then runs its
    split path (compiled step math around an eager evaluation), which warns if compiling
    fails there too.
    """

    def __init__(self, fn: Callable):
        self.fn = fn
        self.compiled: Optional[Callable] = None
        self.failed: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
        self.disabled = False

    def __call__(self, energy: ec.Energy, *args):
        if self.disabled or energy in self.failed:
            return None
        try:
            if self.compiled is None:
                self.compiled = _compile(self.fn, fullgraph=True)
            return self.compiled(energy, *args)
        except Exception:  # graph break (e.g. autograd in the energy), compiler missing, ...
            try:
                self.failed[energy] = True
            except TypeError:  # not weak-referenceable: stop trying for every energy
                self.disabled = True
            return None


_COMPILED_TRANSITIONS: Dict[Callable, _CompiledTransition] = {}

#: From this many elements of ``x`` on, a compiled transition on the CPU runs as two graphs, the
#: move (proposal and energy evaluation) and the Metropolis correction, instead of one. In one
#: graph torch 2.13's inductor fuses the correction's per-chain selects into the energy's C++
#: kernel and the step ran up to 2x slower at N = 1e5 (ring energy, 2-core CPU); below this size
#: the second graph call's fixed cost (guards, ~0.1 ms here) outweighs that. On a GPU (H200,
#: triton) one graph was faster in 8 of 9 cases measured (ULA, MALA, HMC at 1e4 to 1e6 chains:
#: the split step took 1.3-2.3x as long; HMC at 1e4 was 0.7x in a 7-repeat A/B), so the split is
#: CPU-only. See ``benchmarks/sampler_speed.py``.
SPLIT_COMPILE_NUMEL = 1 << 15


def split_compiled(x: Tensor) -> bool:
    """Whether a compiled transition on ``x`` runs as two graphs (CPU tensors of at least
    :data:`SPLIT_COMPILE_NUMEL` elements)."""
    return x.is_cpu and x.numel() >= SPLIT_COMPILE_NUMEL


def compiled_transition(fn: Callable) -> _CompiledTransition:
    """A cached whole-transition compile of ``fn(energy, ...)`` (``None`` result: use the split path)."""
    out = _COMPILED_TRANSITIONS.get(fn)
    if out is None:
        out = _COMPILED_TRANSITIONS[fn] = _CompiledTransition(fn)
    return out


class MCMCKernel:
    """The loop shared by the static kernels (ULA, MALA, HMC); subclasses are frozen dataclasses.

    A subclass defines the fields ``step_size`` (``None``: adapt), ``n_steps``, ``n_warmup``
    (``None``: default), ``target_accept`` and ``compile``, and implements :meth:`step`.

    ``run(energy, state, n_steps, step_size, generator, adapt=None, adapt_state=None,
    recorder=None, callback=None)`` is a loop of :meth:`step` at the *fixed* ``t`` the state
    was initialised with; annealed samplers call it once per noise level. With ``adapt`` (a
    :class:`~samplers.adaptation.DualAveraging`) the step size is adapted during the run,
    continuing from ``adapt_state`` when given (continuous adaptation across levels).
    It returns ``(state, step_size, adapt_state)`` where ``step_size`` is the averaged
    (frozen) dual-averaging step size when adapting, else the one passed in.

    ``sample`` = ``init`` + (warm-up with dual averaging when ``step_size`` is ``None``) +
    ``run`` for ``n_steps`` at the frozen step size.
    """

    #: Whether the kernel needs energy values (Metropolis kernels) or only gradients.
    needs_energy: ClassVar[bool] = True
    #: First guess for the step-size search before warm-up.
    initial_step_size_guess: ClassVar[float] = 0.1
    #: Power of the noise variance the step size scales with across noise levels: 1 for
    #: Langevin steps (``h ∝ σ²``), 0.5 for leapfrog step lengths (``∝ σ``).
    step_size_exponent: ClassVar[float] = 1.0

    # --------------------------------------------------------------------------- to override
    def step(self, state: State, energy: ec.Energy, step_size: StepSize, generator: Optional[torch.Generator]):
        """One transition: ``(State, StepInfo)``."""
        raise NotImplementedError

    def _transition(self, state, energy, step_size, generator, adapting: bool):
        """:meth:`step` plus the statistic dual averaging tracks (mean acceptance) when ``adapting``."""
        state, info = self.step(state, energy, step_size, generator)
        return state, info, (info.acceptance.mean() if adapting else None)

    # --------------------------------------------------------------------------- shared
    @property
    def warmup_steps(self) -> int:
        """Resolved warm-up length: ``n_warmup`` if set, else ``max(100, n_steps // 2)`` when adapting, else 0."""
        if self.n_warmup is not None:
            return self.n_warmup
        return max(100, self.n_steps // 2) if self.step_size is None else 0

    def _check_config(self) -> None:
        check_step_size(self.step_size)
        check_positive_int(self.n_steps, "n_steps", allow_zero=True)
        if self.n_warmup is not None:
            check_positive_int(self.n_warmup, "n_warmup", allow_zero=True)
        if not 0.0 < self.target_accept < 1.0:
            raise ValueError(f"target_accept must be in (0, 1), got {self.target_accept!r}")

    def compiled(self):
        """The same kernel with the ``torch.compile`` path switched on (``compile=True``)."""
        return dataclasses.replace(self, compile=True)

    def init(self, energy: ec.Energy, x: Tensor, t=None) -> State:
        """Validate ``x`` ``(B, *event)`` and ``t``, evaluate once and cache energy and gradient."""
        return self._init(energy, x, t)[0]

    def _init(self, energy: ec.Energy, x: Tensor, t=None) -> Tuple[State, int]:
        """:meth:`init` and the NFE it cost."""
        return init_state(energy, x, t, self.needs_energy, type(self).__name__)

    def initial_step_size(
        self,
        energy: ec.Energy,
        state: State,
        generator: Optional[torch.Generator],
        recorder: Optional[Recorder] = None,
    ) -> float:
        """Heuristic starting step size for warm-up: double/halve until the mean acceptance crosses ``target_accept``.

        Trial transitions start from ``state`` and are discarded (their NFE go to ``recorder``).
        """
        from .adaptation import find_initial_step_size

        def trial(h):
            _, info, stat = self._transition(state, energy, h, generator, True)
            if recorder is not None:
                recorder.nfe += info.nfe
            return stat

        return find_initial_step_size(trial, self.initial_step_size_guess, target=self.target_accept)

    def run(
        self,
        energy: ec.Energy,
        state: State,
        n_steps: int,
        step_size: Optional[StepSize] = None,
        generator: Optional[torch.Generator] = None,
        *,
        adapt=None,
        adapt_state=None,
        recorder: Optional[Recorder] = None,
        callback: Optional[Callable] = None,
        progress: bool = False,
        desc: Optional[str] = None,
        start: int = 0,
    ):
        """Run ``n_steps`` transitions at the state's fixed ``t``.

        Parameters
        ----------
        energy : Energy
            Target (evaluated at ``state.t``).
        state : State
            From :meth:`init` (or a previous run).
        n_steps : int
            Number of transitions.
        step_size : float or 0-d Tensor, optional
            Fixed step size, or the starting point of adaptation (ignored when ``adapt_state``
            is given).
        generator : torch.Generator, optional
            Source of randomness.
        adapt : DualAveraging, optional
            Adapt the step size during this run.
        adapt_state : DualAveragingState, optional
            Continue a previous adaptation.
        recorder : Recorder, optional
            Receives every step's :class:`StepInfo`.
        callback : callable, optional
            ``callback(i, state, info)`` after each step, ``i`` counting from ``start``.
        progress : bool
            Show a progress bar.

        Returns
        -------
        (State, step_size, DualAveragingState or None)
        """
        check_positive_int(n_steps, "n_steps", allow_zero=True)
        adapting = adapt is not None
        if adapting:
            if adapt_state is None:
                if step_size is None:
                    raise ValueError("run(adapt=...) needs a starting step_size or an adapt_state")
                adapt_state = adapt.init(step_size, like=state.x)
        elif step_size is None:
            raise ValueError(f"{type(self).__name__}.run needs a step_size (or adapt=DualAveraging(...))")
        h = step_size
        h_step = h
        if getattr(self, "compile", False) and not adapting and not isinstance(h, Tensor):
            # one 0-d tensor for the whole run (the compiled graphs take the step size as input)
            h_step = torch.tensor(float(h), device=state.x.device, dtype=state.x.dtype)
        for i in progress_bar(n_steps, progress, desc or type(self).__name__):
            if adapting:
                h = h_step = adapt_state.step_size
            state, info, stat = self._transition(state, energy, h_step, generator, adapting)
            if adapting:
                adapt_state = adapt.update(adapt_state, stat)
            if recorder is not None:
                recorder.record(state, info)
            if callback is not None:
                callback(start + i, state, info)
        if adapting:
            h = adapt_state.final_step_size
        return state, h, adapt_state

    def sample(
        self,
        energy: ec.Energy,
        x0: Tensor,
        t=None,
        *,
        generator: Optional[torch.Generator] = None,
        progress: bool = False,
        callback: Optional[Callable] = None,
        trace_every: int = 0,
    ) -> SampleResult:
        """Draw ``(B, *event)`` samples: warm-up (adapting the step size if it is ``None``), then ``n_steps``.

        Parameters
        ----------
        energy : Energy
            Target ``p(x) ∝ exp(-E(x, t))``.
        x0 : Tensor
            ``(B, *event)`` initial positions (one chain per row); fixes device and dtype.
        t : float, Tensor or None
            Fixed diffusion time of the target (``None``: static).
        generator : torch.Generator, optional
            Source of randomness (same seed → identical samples).
        progress : bool
            tqdm progress bar.
        callback : callable, optional
            ``callback(i, state, info)`` after every step (warm-up included, ``i`` from 0).
        trace_every : int
            Keep every ``trace_every``-th post-warm-up position in ``info["trace"]`` ``(T, B, *event)``.

        Returns
        -------
        SampleResult
            ``info`` per :class:`Recorder` (post-warm-up steps) plus ``"step_size"`` (0-d tensor),
            ``"n_warmup"`` and ``"warmup_acceptance"`` (0-d tensor, ``None`` without warm-up);
            ``"nfe"`` counts everything (initial evaluation, step-size search, warm-up).
        """
        name = type(self).__name__
        check_generator(generator, x0 if isinstance(x0, Tensor) else torch.empty(0))
        state, nfe = self._init(energy, x0, t)
        n_warmup = self.warmup_steps
        warm = Recorder(x0.shape[0])
        h = self.step_size
        if h is None:
            from .adaptation import DualAveraging

            probe = Recorder(x0.shape[0])
            h0 = self.initial_step_size(energy, state, generator, probe)
            nfe += probe.nfe
            state, h, _ = self.run(
                energy, state, n_warmup, h0, generator,
                adapt=DualAveraging(self.target_accept), recorder=warm,
                callback=callback, progress=progress, desc=f"{name} warm-up",
            )
        elif n_warmup:
            state, h, _ = self.run(
                energy, state, n_warmup, h, generator, recorder=warm,
                callback=callback, progress=progress, desc=f"{name} warm-up",
            )
        rec = Recorder(x0.shape[0], trace_every)
        state, h, _ = self.run(
            energy, state, self.n_steps, h, generator, recorder=rec,
            callback=callback, progress=progress, desc=name, start=n_warmup,
        )
        info = rec.info(nfe + warm.nfe)
        info["step_size"] = torch.as_tensor(h, device=x0.device, dtype=x0.dtype).detach().reshape(())
        info["n_warmup"] = n_warmup
        warm_acc = warm._acceptance_vector()
        info["warmup_acceptance"] = warm_acc.mean() if warm_acc is not None else None
        ok = finite_rows(state.x, state.energy, state.grad)
        if not bool(ok.all()):  # cannot happen by construction (non-finite proposals are rejected)
            bad = (~ok).nonzero().flatten()
            raise NonFiniteStateError(
                f"{name}: {bad.numel()} chain(s) have a non-finite state after {n_warmup + self.n_steps} "
                f"steps (first: chain {int(bad[0])}); use a smaller step_size"
            )
        return SampleResult(samples=state.x, info=info, state=state)
