"""Per-step diagnostics of a kernel run, reduced in blocks of steps as they come (no device synchronisation per step)."""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor

from .base import State, StepInfo, check_positive_int
from .health import divergent_flags

__all__ = ["Recorder", "reduced"]


def reduced(body: Callable) -> Callable:
    """A kernel's ``body`` (``carry, (acceptance, accepted, divergent, energy_error, nfe)``) with the
    per-chain outputs :meth:`Recorder.record_chunk` reduces: acceptance, divergent (incl. a large
    energy error), ``|energy error|``, NFE (``samplers.compile.scan``)."""

    def scan_body(energy, carry, draws, consts):
        carry, (acceptance, _, divergent_, energy_error, nfe) = body(energy, carry, draws, consts)
        flags = divergent_flags(divergent_, energy_error).to(acceptance.dtype)
        return carry, (acceptance, flags, energy_error.abs(), torch.full_like(acceptance, nfe))

    scan_body.__name__ = body.__name__
    return scan_body


#: Most per-chain numbers (steps × chains) of eager steps :meth:`Recorder.record` holds before it
#: reduces them together, and most steps so held.
PENDING_NUMBERS = 2 ** 18
PENDING_STEPS = 32


def _stack(ts: List[Tensor]) -> Tensor:
    """``(n, B)`` from ``n`` ``(B,)`` tensors (one step: a view, no copy)."""
    return ts[0].unsqueeze(0) if len(ts) == 1 else torch.stack(ts)


class Recorder:
    """Running statistics of the :class:`~samplers.base.StepInfo` of each step.

    Steps come one at a time (:meth:`record`) or in chunks (:meth:`record_chunk`). Single steps'
    infos are held (up to :data:`PENDING_STEPS` steps and :data:`PENDING_NUMBERS` numbers) and
    reduced together, a few ops per held block rather than per step; the attributes below reduce
    what is held when read. Each list holds one tensor per block or chunk; :meth:`steps`
    concatenates a list into one tensor over the steps.

    Attributes
    ----------
    acceptance : list of Tensor
        ``(n,)`` mean acceptance of each step.
    acc_sum : Tensor or None
        ``(B,)`` sum of the per-chain acceptance.
    divergences : list of Tensor
        ``(n,)`` count of divergent proposals of each step (:func:`samplers.health.divergent`:
        non-finite, or an energy error above the threshold).
    energy_error : list of Tensor
        ``(n,)`` mean ``|energy_error|`` of each step (kernels whose info has one).
    trace, energy_trace : list of Tensor
        ``(n, B, *event)`` positions and ``(n, B)`` energies every ``trace_every`` steps.
    nfe, n_steps : int
    """

    def __init__(self, trace_every: int = 0):
        check_positive_int(trace_every, "trace_every", allow_zero=True)
        self.trace_every = trace_every
        self._acceptance: List[Tensor] = []
        self._acc_sum: Optional[Tensor] = None
        self._divergences: List[Tensor] = []
        self._energy_error: List[Tensor] = []
        self._pending: List[Tuple[Tensor, Tensor, Optional[Tensor]]] = []  # single steps' (acceptance, divergent, energy error)
        self.trace: List[Tensor] = []
        self.energy_trace: List[Tensor] = []
        self.nfe = 0
        self.n_steps = 0

    @property
    def acceptance(self) -> List[Tensor]:
        return self._reduced()._acceptance

    @property
    def acc_sum(self) -> Optional[Tensor]:
        return self._reduced()._acc_sum

    @property
    def divergences(self) -> List[Tensor]:
        return self._reduced()._divergences

    @property
    def energy_error(self) -> List[Tensor]:
        return self._reduced()._energy_error

    def record(self, state: State, info: StepInfo) -> None:
        """Add one step (and the state to the trace when due).

        The info's ``(B,)`` tensors are held until reduced: a kernel must not write into them later.
        """
        self.n_steps += 1
        self.nfe += info.nfe
        err = getattr(info, "energy_error", None)
        if self._pending and (err is None) != (self._pending[0][2] is None):
            self._reduced()  # a block is stacked whole: all with an energy error, or none
        self._pending.append((info.acceptance, info.divergent, err))
        held = len(self._pending)
        if held == PENDING_STEPS or (held + 1) * info.acceptance.shape[0] > PENDING_NUMBERS:  # the next would not fit
            self._reduced()
        self._trace_state(state)

    def _reduced(self) -> "Recorder":
        """Reduce the held single steps into the lists (a few ops for the whole block)."""
        if self._pending:
            acc, div, err = (list(f) for f in zip(*self._pending))
            self._pending = []
            acc, div, err = _stack(acc), _stack(div), None if err[0] is None else _stack(err)  # (n, B)
            self._acceptance.append(acc.mean(1))
            self._add_sum(acc[0] if acc.shape[0] == 1 else acc.sum(0))
            self._divergences.append(divergent_flags(div, err).sum(1))
            if err is not None:
                self._energy_error.append(err.abs().mean(1))
        return self

    def _add_sum(self, acc_sum: Tensor) -> None:
        self._acc_sum = acc_sum.clone() if self._acc_sum is None else self._acc_sum.add_(acc_sum)

    def record_chunk(self, state: State, means: Tensor, sums: Tensor, kept: tuple = (), energy_error: bool = True) -> None:
        """Add ``n`` steps run as one chunk (:meth:`~samplers.base.MCMCKernel.steps`, :func:`reduced`).

        ``means`` ``(n, 4)``: each step's chain means of (acceptance, divergent, ``|energy error|``,
        NFE); ``sums`` ``(4, B)``: each chain's sums over the chunk; ``energy_error``: whether the
        kernel has one (ULA has not: its column is not recorded). The trace takes ``kept``
        (``(xs, energies)`` or ``(xs,)`` of every step) when given, else ``state`` (the state after
        the chunk) when the chunk ends on a trace step (chunks are cut so).
        """
        self._reduced()
        n, b = means.shape[0], sums.shape[1]
        first = self.n_steps
        self.n_steps += n
        self.nfe += int(means[:, 3].sum().round())
        self._acceptance.append(means[:, 0])
        self._add_sum(sums[0])
        self._divergences.append((means[:, 1] * b).round())
        if energy_error:
            self._energy_error.append(means[:, 2])
        if kept:
            due = slice((-first - 1) % self.trace_every, None, self.trace_every)  # rows i with (first + i + 1) % every == 0
            self._trace(kept[0][due], kept[1][due] if len(kept) > 1 else None)
        else:
            self._trace_state(state)

    def _trace_state(self, state: State) -> None:
        """Add ``state`` (the state after the steps recorded so far) to the trace when it is a trace step."""
        if self.trace_every and self.n_steps % self.trace_every == 0:
            energies = None if state.energy is None else state.energy.detach().unsqueeze(0).clone()
            self._trace(state.x.detach().unsqueeze(0).clone(), energies)

    def _trace(self, xs: Tensor, energies: Optional[Tensor]) -> None:
        if xs.shape[0]:
            self.trace.append(xs)
            if energies is not None:
                self.energy_trace.append(energies)

    @staticmethod
    def steps(chunks: List[Tensor]) -> Optional[Tensor]:
        """One of the lists above as one tensor over the steps (``None`` when empty)."""
        return torch.cat(chunks) if chunks else None

    def total_divergences(self) -> int:
        """Divergent proposals over the recorded steps (one device sync)."""
        return int(torch.cat(self.divergences).sum()) if self.divergences else 0

    def mean_acceptance(self) -> Optional[Tensor]:
        """0-d mean acceptance over the recorded steps (``None`` before any)."""
        return torch.cat(self.acceptance).mean() if self.acceptance else None
