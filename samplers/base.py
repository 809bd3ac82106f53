"""The kernel contract shared by ULA, MALA and HMC (BlackJAX's ``init``/``step`` split).

``kernel = MALA(step_size=0.1, n_steps=500)``
    an immutable configuration; the step size is part of it (``kernel.with_step_size(h)`` is the
    same kernel with another one; adaptation produces such kernels);
``state = kernel.init(energy, x, t)``
    evaluates energy and gradient once and caches them in a :class:`State`;
``state, info = kernel.step(state, energy, generator)``
    one transition reusing what the state holds; ``info`` is the algorithm's typed record
    (:class:`StepInfo` subclass);
``result = kernel.sample(energy, x0, generator=g)``
    the one loop (``samplers.run``): warm-up, adaptation, recording, callbacks.

Accept/reject is per chain: ``info.accepted`` is ``(B,)``. A proposal whose energy or gradient is
not finite is rejected for that chain and counted in ``info.divergent``. Shapes: ``x`` is
``(B, *event)``, per-chain quantities ``(B,)``, ``t`` ``None`` or ``(B,)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Optional, Tuple

import torch
from torch import Tensor

import ebmcompose as ec
from ebmcompose.checks import check_generator, check_positive_int

from . import compile as _compile
from .compile import scan as _scan
from .tensors import (StepSize, all_finite, as_step_size, finite_per_chain, noise_draw, noise_via_uniforms, normal_noise, per_chain, randn_like,
                      sum_event, uniform)

__all__ = [
    "NonFiniteStateError", "State", "StepInfo", "MCMCKernel", "StepSize",
    "per_chain", "as_step_size", "sum_event", "finite_per_chain", "all_finite", "randn_like", "uniform", "noise_draw", "normal_noise", "check_generator", "check_step_size",
    "check_positive_int", "require_energy", "evaluate", "init_state", "progress_bar",
]

class NonFiniteStateError(FloatingPointError):
    """The state of a chain has a non-finite position, energy or gradient."""


@dataclass(frozen=True)
class State:
    """Cached position of a batch of chains.

    Attributes
    ----------
    x : Tensor
        ``(B, *event)`` positions.
    energy : Tensor or None
        ``(B,)`` energies at ``x`` (``None`` for gradient-only kernels).
    grad : Tensor
        ``∇x E`` at ``x``, like ``x``.
    t : Tensor or None
        ``(B,)`` diffusion time the energy is evaluated at, or ``None`` (static target).
    """

    x: Tensor
    energy: Optional[Tensor]
    grad: Tensor
    t: Optional[Tensor] = None

    def replace(self, **changes) -> "State":
        """A copy with some fields replaced (keeps the subclass, e.g. HMC's momentum)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class StepInfo:
    """What one transition did, per chain; each kernel extends it with what it has.

    Attributes
    ----------
    acceptance : Tensor
        ``(B,)`` acceptance probability (1 for unadjusted moves, 0 for divergent proposals).
    accepted : Tensor
        ``(B,)`` bool, whether the proposal was taken.
    divergent : Tensor
        ``(B,)`` bool, the proposal had a non-finite energy or gradient (and was rejected).
    nfe : int
        Function evaluations this step cost.
    """

    acceptance: Tensor
    accepted: Tensor
    divergent: Tensor
    nfe: int


# ------------------------------------------------------------------------------- small parts
# (per-chain tensor helpers live in samplers.tensors; imported here for the kernels and for
# custom kernels that import them from samplers.base)
def check_step_size(step_size, name: str = "step_size", allow_none: bool = True) -> None:
    """Validate a step size: ``None`` (adapt), a positive finite number, or a 0-d floating tensor.

    Tensors (made by adaptation, possibly on a GPU) are checked for shape only: reading their
    value would synchronise the device every step.
    """
    if step_size is None:
        if allow_none:
            return
        raise ec.InputError(f"{name} is required here; pass a positive number")
    if isinstance(step_size, Tensor):
        ok = step_size.dim() == 0 and step_size.is_floating_point()
    else:
        ok = isinstance(step_size, (int, float)) and not isinstance(step_size, bool) and 0 < step_size < float("inf")
    if not ok:
        raise ec.InputError(
            f"{name} must be a positive finite number, got {step_size!r}"
            + ("; or None to adapt it automatically" if allow_none else "")
        )


def require_energy(energy: ec.Energy, needed_by: str) -> None:
    """Raise :class:`ec.ScoreOnlyError` (naming the fix) when a Metropolis step gets a score-only energy."""
    if not energy.has_energy:
        raise ec.ScoreOnlyError.for_energy(energy, needed_by=needed_by)


def evaluate(energy: ec.Energy, x: Tensor, t, need_energy: bool) -> Tuple[Optional[Tensor], Tensor, int]:
    """Energy (``None`` unless ``need_energy``), gradient and NFE at ``x`` — the one call into the model.

    Unvalidated: samplers validate ``x0`` once with ``energy.check_input``.
    """
    ev = energy.evaluate(x, t, energy=need_energy, grad=True, validate=False)
    return ev.energy, ev.grad, ev.nfe


def init_state(kernel: "MCMCKernel", energy: ec.Energy, x: Tensor, t=None) -> Tuple[State, int]:
    """Validate ``x`` ``(B, *event)`` and ``t``, evaluate once; the kernel's state and the NFE it cost."""
    name = type(kernel).__name__
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 1:
        raise ec.InputError(f"{name}: x must be a floating-point tensor of shape (B, *event)")
    if kernel.needs_energy:
        require_energy(energy, name)
    tt = energy.check_input(x, t)
    e, g, nfe = evaluate(energy, x, tt, kernel.needs_energy)
    ok = torch.isfinite(g).flatten(1).all(dim=1)
    if e is not None:
        ok = ok & torch.isfinite(e)
    if not bool(ok.all()):
        bad = (~ok).nonzero().flatten()
        raise NonFiniteStateError(
            f"{name}: the initial state has a non-finite energy or gradient in {bad.numel()} chain(s) "
            f"(first: chain {int(bad[0])}); start the chains inside the support of the target "
            "(e.g. from the prior or a data sample)"
        )
    return kernel.state_type(x=x, energy=e, grad=g, t=tt), nfe


def progress_bar(n: int, enabled: bool, desc: str):
    """``range(n)``, wrapped in a tqdm bar when ``enabled`` (tqdm imported lazily)."""
    if not enabled:
        return range(n)
    from tqdm.auto import tqdm

    return tqdm(range(n), desc=desc, leave=False)


#: Most numbers a step may draw for a chunk's draws to be made in one generator call
#: (:meth:`MCMCKernel._chunk_draws`): below it a call's fixed cost (~3 µs) outweighs the copy.
ONE_CALL_DRAWS = 4096


# ------------------------------------------------------------------------------- the kernel
class MCMCKernel:
    """Base of the static kernels (frozen dataclasses with fields ``step_size``, ``n_steps``,
    ``target_accept``, ``n_warmup``, ``compile``); subclasses implement :meth:`step`."""

    #: Whether the kernel needs energy values (Metropolis kernels) or only gradients.
    needs_energy: ClassVar[bool] = True
    #: First guess of the step-size search before warm-up (for a unit-scale target in 1-D).
    initial_step_size_guess: ClassVar[float] = 0.1
    #: Power of the noise variance the step size scales with: 1 for Langevin steps
    #: (``h ∝ σ²``), 0.5 for leapfrog step lengths (``∝ σ``).
    step_size_exponent: ClassVar[float] = 1.0
    #: The state class ``init`` builds.
    state_type: ClassVar[type] = State
    #: Whether warm-up adapts a diagonal mass (HMC's ``adapt_mass``; ``samplers.mass_adaptation``).
    adapt_mass: bool = False
    #: Whether ``_draws`` makes only ``noise_draw`` and ``uniform`` draws, so that on chains whose
    #: noise is uniforms every draw is ``U(0, 1)`` (a chunk's draws are then one generator call).
    uniform_draws: ClassVar[bool] = False

    def _check_config(self) -> None:
        check_step_size(self.step_size)
        check_positive_int(self.n_steps, "n_steps", allow_zero=True)
        if self.n_warmup is not None:
            check_positive_int(self.n_warmup, "n_warmup", allow_zero=True)
        if not 0.0 < self.target_accept < 1.0:
            raise ec.InputError(f"target_accept must be in (0, 1), got {self.target_accept!r}")

    def _step_size(self, x: Tensor) -> Tensor:
        """The configured step size as a 0-d tensor on ``x``'s device and dtype.

        Every formula takes it as a tensor (fused ``addcmul`` updates; compiled graphs take it as
        an input, so a new value does not recompile).
        """
        h = self.step_size
        if h is None:
            raise ec.InputError(
                f"{type(self).__name__}.step needs a step size: use kernel.with_step_size(h), or "
                "sample(), which adapts a step_size of None"
            )
        if not isinstance(h, Tensor) or h.device != x.device or h.dtype != x.dtype:
            h = torch.as_tensor(h, device=x.device, dtype=x.dtype)
        return h

    def with_step_size(self, step_size: StepSize) -> "MCMCKernel":
        """The same kernel with another step size (float or 0-d tensor)."""
        return dataclasses.replace(self, step_size=step_size)

    def with_mass(self, mass: Tensor) -> "MCMCKernel":
        """The same kernel with another diagonal mass (kernels that have one)."""
        raise ec.InputError(f"{type(self).__name__} has no mass matrix to adapt; use HMC(adapt_mass=True)")

    def compiled(self) -> "MCMCKernel":
        """The same kernel with ``compile=True`` (see ``samplers.compile``)."""
        return dataclasses.replace(self, compile=True)

    def for_adaptation(self) -> "MCMCKernel":
        """The kernel to run while adapting the step size (ULA switches its acceptance proxy on)."""
        return self

    def adaptation_statistic(self, info: StepInfo) -> Tensor:
        """0-d statistic dual averaging drives towards ``target_accept``: the mean acceptance."""
        return info.acceptance.mean()

    @property
    def warmup_steps(self) -> int:
        """``n_warmup`` if set, else ``max(100, n_steps // 2)`` when adapting, else 0."""
        if self.n_warmup is not None:
            return self.n_warmup
        return max(100, self.n_steps // 2) if self.step_size is None else 0

    def init(self, energy: ec.Energy, x: Tensor, t=None) -> State:
        """Validate ``x`` ``(B, *event)`` and ``t``, evaluate once and cache energy and gradient."""
        return init_state(self, energy, x, t)[0]

    # A kernel either overrides ``step``, or gives its transition as a pure ``body(energy, carry,
    # draws, consts) -> (carry, outputs)`` with ``scan_body = samplers.record.reduced(body)`` and
    # implements ``_draws``, ``_carry``, ``_consts``, ``_state`` and ``_info``: then ``step`` runs
    # one transition and ``steps`` several per compiled graph call (``samplers.compile.scan``).
    # ``_draws(x, generator, out)`` makes one step's draws, written into the tensors ``out`` when
    # given (``steps`` fills its buffers' rows so, without a copy per draw).
    body: ClassVar[Optional[object]] = None
    scan_body: ClassVar[Optional[object]] = None

    def step(self, state: State, energy: ec.Energy, generator: Optional[torch.Generator]):
        """One transition at ``self.step_size`` from ``state`` (``x`` ``(B, *event)``): ``(State, Info)``."""
        name = type(self).__name__
        if type(self).body is None:
            raise NotImplementedError(f"{name} must implement step() or give its transition body")
        if self.needs_energy:
            if state.energy is None:
                raise ec.InputError(f"{name}.step needs a state with energies: create it with {name}().init(energy, x, t)")
            require_energy(energy, name)
        h = self._step_size(state.x)
        carry, outs = _compile.call(type(self).body, self.compile, energy, self._carry(state),
                                    self._draws(state.x, generator), self._consts(state, h))
        return self._state(state, carry), self._info(outs)

    def steps(self, state: State, energy: ec.Energy, generator: Optional[torch.Generator], n: int, *,
              chunk: Optional[int] = None, positions: bool = False):
        """``n`` transitions, in one graph call when compiled: ``(State, means, sums, kept)``.

        Draws are made in the order ``n`` calls of :meth:`step` make them, so the chains are the
        same. ``means`` ``(n, 4)`` and ``sums`` ``(4, B)`` reduce the steps' acceptance,
        divergence, ``|energy error|`` and NFE (``samplers.record.Recorder.record_chunk``);
        ``kept`` is ``(xs (n, B, *event), energies (n, B))`` (``(xs,)`` for a kernel without energies) after every step with ``positions``,
        else ``()``. ``chunk`` (``>= n``) pads the draws so that runs of any length up to it share
        one graph.
        """
        x = state.x
        h = self._step_size(x)
        draws = self._chunk_draws(x, generator, n, max(n, chunk or n))
        body = type(self).scan_body
        carry, means, sums, kept = _scan(body, self.compile, energy, n, self._carry(state), draws, 4,
                                         self._consts(state, h), keep=(2 if self.needs_energy else 1) if positions else 0)
        return self._state(state, carry), means, sums, kept

    def _chunk_draws(self, x: Tensor, generator, n: int, k: int) -> Tuple[Tensor, ...]:
        """The draws of ``n`` steps, ``(k, *draw)`` each (rows past ``n`` zero), made in the order of
        ``n`` calls of :meth:`step`.

        When every draw is a uniform (``uniform_draws`` and
        :func:`~samplers.tensors.noise_via_uniforms`) and a step draws at most
        :data:`ONE_CALL_DRAWS` numbers, steps ``1..n-1`` fill one buffer whose rows are the steps'
        draws side by side, in one generator call (torch's CPU ``uniform_`` is serial, so the
        numbers are those of step-by-step calls), then copied apart (a graph's inputs may not
        alias). Else each step's draws are written into the buffers' rows in turn."""
        one = self._draws(x, generator)  # step 0: gives the draws' shapes
        widths = [d.numel() for d in one]
        if self.uniform_draws and noise_via_uniforms(x) and sum(widths) <= ONE_CALL_DRAWS:
            flat = x.new_zeros((k, sum(widths)))
            torch.cat([d.reshape(-1) for d in one], out=flat[0])
            flat[1:n].uniform_(generator=generator)
            return tuple(v.unflatten(1, d.shape).clone() for v, d in zip(flat.split(widths, dim=1), one))
        draws = tuple(d.new_zeros((k,) + tuple(d.shape)) for d in one)
        rows = list(zip(*(d.unbind(0) for d in draws)))  # rows[i]: step i's draws, views of the buffers
        for buf, d in zip(rows[0], one):
            buf.copy_(d)
        for i in range(1, n):
            self._draws(x, generator, rows[i])  # in place, in the order of n calls of ``step``
        return draws

    def sample(self, energy: ec.Energy, x0: Tensor, t=None, *, generator=None, progress: bool = False,
               callback=None, trace_every: int = 0, on_divergence: str = "warn"):
        """Draw ``(B, *event)`` samples: warm-up (adapting a ``None`` step size), then ``n_steps``.

        See :func:`samplers.run.sample_kernel` for the parameters and the returned
        :class:`~samplers.result.SampleResult`. ``on_divergence`` (``"warn"``, ``"raise"``,
        ``"ignore"``): what to do when the run diverged or looks wrong (``res.info.warnings``
        lists it in every case; see :func:`samplers.health.finish`).
        """
        from .run import RunConfig, sample_kernel

        cfg = RunConfig.for_kernel(self, progress=progress, callback=callback, trace_every=trace_every,
                                   on_divergence=on_divergence)
        return sample_kernel(self, energy, x0, t, cfg, generator=generator)
