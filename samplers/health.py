"""Is a run's output a sample? The one set of checks behind ``info.warnings`` and ``on_divergence``.

Every sampler's ``sample`` ends in :func:`finish`, which looks at the samples, their start and the
run's summary, records what is wrong in ``info.warnings`` (a tuple of :class:`Problem`), and then
warns (one line each, :class:`SamplingWarning`), raises :class:`DivergenceError` or stays quiet,
as ``on_divergence`` says. The command line reads the same problems (``ebmcompose sample``).

A proposal is *divergent* (as in BlackJAX) when its energy or gradient is not finite, or when
its energy error (MALA's log Metropolis ratio, HMC's ``ΔH``) exceeds :data:`DIVERGENCE_THRESHOLD`
in magnitude: :func:`divergent` is what the recorder counts.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor

import ebmcompose as ec

from .base import NonFiniteStateError, StepInfo
from .result import SampleResult

__all__ = [
    "DIVERGENCE_THRESHOLD", "ESCAPE_FACTOR", "LOW_ACCEPTANCE", "HIGH_ACCEPTANCE", "ON_DIVERGENCE",
    "DIVERGENCE_KINDS", "Problem", "SamplingWarning", "DivergenceError", "divergent", "check_on_divergence",
    "assess", "finish",
]

#: ``|energy error|`` above which a proposal counts as divergent (BlackJAX's default).
DIVERGENCE_THRESHOLD = 1000.0
#: Samples farther out than this many times the start's scale (``max(1, max |x0|)``) escaped.
ESCAPE_FACTOR = 1000.0
#: Mean Metropolis acceptance below which (almost) every proposal was rejected.
LOW_ACCEPTANCE = 0.01
#: Mean Metropolis acceptance above which a *fixed* step size is far too small to mix.
HIGH_ACCEPTANCE = 0.995
#: Values of ``on_divergence``.
ON_DIVERGENCE = ("raise", "warn", "ignore")
#: Problems that ``on_divergence="raise"`` raises on.
DIVERGENCE_KINDS = ("non_finite", "escaped", "divergence")


class SamplingWarning(RuntimeWarning):
    """A run returned, but its samples are suspect (divergences, rejected proposals, frozen chains)."""


class DivergenceError(NonFiniteStateError):
    """A run diverged and ``on_divergence="raise"`` was asked for; ``problems`` lists what was found."""

    def __init__(self, message: str, problems: Tuple["Problem", ...] = ()):
        super().__init__(message)
        self.problems = problems


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a run.

    Attributes
    ----------
    kind : str
        ``"non_finite"``, ``"escaped"``, ``"divergence"``, ``"low_acceptance"``,
        ``"high_acceptance"`` or ``"frozen"``.
    what : str
        What happened.
    fix : str
        What to do about it (in the Python API's terms).
    fatal : bool
        The output is not a sample of the target (non-finite or escaped samples, chains stuck at
        a non-finite gradient, every proposal rejected); otherwise the samples are valid but suspect.
    """

    kind: str
    what: str
    fix: str = ""
    fatal: bool = False

    @property
    def message(self) -> str:
        """One line: what happened and what to do."""
        return f"{self.what}; {self.fix}" if self.fix else self.what

    def __str__(self) -> str:
        return self.message


_SMALLER = "use a smaller step_size, or None to adapt it"


def divergent(info: StepInfo) -> Tensor:
    """``(B,)`` bool: the step's proposal was non-finite or its ``|energy error|`` exceeded :data:`DIVERGENCE_THRESHOLD`."""
    return divergent_flags(info.divergent, getattr(info, "energy_error", None))


def divergent_flags(divergent_: Tensor, energy_error: Optional[Tensor]) -> Tensor:
    """:func:`divergent` from the fields themselves (inside compiled loops, which build no info)."""
    if energy_error is None:
        return divergent_
    return divergent_ | (energy_error.abs() > DIVERGENCE_THRESHOLD)


def check_on_divergence(value) -> str:
    """``value`` if it is one of :data:`ON_DIVERGENCE`, else a clear :class:`ec.InputError`."""
    if value not in ON_DIVERGENCE:
        raise ec.InputError(
            f"on_divergence must be one of {', '.join(map(repr, ON_DIVERGENCE))} (default 'warn'), got {value!r}"
        )
    return value


def assess(samples: Tensor, start: Tensor, info, *, metropolis: bool, adapted: bool,
           moves_every_chain: bool = False) -> Tuple[Problem, ...]:
    """What is wrong with a run, from its samples ``(B, *event)``, start points and summary.

    Parameters
    ----------
    samples, start : Tensor
        ``(B, *event)`` final and initial positions.
    info : KernelSummary or LadderSummary
        Reads ``divergences``, ``acceptance``, ``n_steps`` / ``corrector_steps``, ``n_warmup``.
    metropolis : bool
        Proposals are accepted or rejected (MALA, HMC): acceptance is meaningful and a divergent
        proposal is rejected (the chain stays valid). Otherwise (ULA) a divergence stops the chain.
    adapted : bool
        The step size was adapted (acceptance near one is then not the user's choice).
    moves_every_chain : bool
        Every chain moves regardless of the kernel (a reverse-diffusion predictor): no frozen check.
    """
    problems = []
    b = samples.shape[0]
    flat = samples.detach().reshape(b, -1)
    bad = ~torch.isfinite(flat).all(dim=1)
    if bool(bad.any()):
        problems.append(Problem("non_finite", f"{int(bad.sum())} of {b} samples are NaN or infinite", _SMALLER, True))
    # kept MCMC transitions: a ladder's corrector steps (None: it has none), a kernel's n_steps
    transitions = (info.corrector_steps if hasattr(info, "corrector_steps") else info.n_steps) or 0
    n_div = getattr(info, "divergences", None) or 0
    if n_div:
        problems.append(Problem(
            "divergence",
            f"{n_div} of {transitions * b} proposals diverged (a non-finite energy or gradient, or an energy "
            f"error above {DIVERGENCE_THRESHOLD:g})", _SMALLER, fatal=not metropolis,
        ))
    scale = max(1.0, float(start.detach().abs().max())) if start.numel() else 1.0
    finite = flat[~bad]
    big = float(finite.abs().max()) if finite.numel() else 0.0
    if big > ESCAPE_FACTOR * scale:
        problems.append(Problem(
            "escaped",
            f"samples reached |x| = {big:.3g}, {big / scale:.3g} times the scale of the start points: the "
            "chains diverged", _SMALLER, True,
        ))
    acc = info.mean_acceptance if metropolis else None
    if acc is not None and acc < LOW_ACCEPTANCE:
        problems.append(Problem(
            "low_acceptance",
            f"the mean acceptance was {acc:.3g}: almost every proposal was rejected, so the samples are "
            "(nearly) the start points", _SMALLER, True,
        ))
    elif acc is not None and acc > HIGH_ACCEPTANCE and not adapted:
        problems.append(Problem(
            "high_acceptance",
            f"the mean acceptance was {acc:.4f} with a fixed step_size: the steps are probably far too small "
            "for the chains to mix", "use a larger step_size, or None to adapt it",
        ))
    ran = transitions + (getattr(info, "n_warmup", 0) or 0)
    if not moves_every_chain and ran > 0 and samples.shape == start.shape:
        frozen = (flat == start.detach().reshape(b, -1)).all(dim=1)
        k = int(frozen.sum())
        if k:
            problems.append(Problem(
                "frozen",
                f"{k} of {b} chains never moved from their start points in {ran} transitions (every "
                "proposal rejected or divergent)", _SMALLER, fatal=k == b,
            ))
    return tuple(problems)


def finish(result: SampleResult, start: Tensor, *, sampler: str, on_divergence: str, metropolis: bool,
           adapted: bool, moves_every_chain: bool = False) -> SampleResult:
    """Assess ``result`` (see :func:`assess`), store the problems in ``info.warnings``, then act on them.

    ``on_divergence``: ``"warn"`` emits one :class:`SamplingWarning` per problem; ``"raise"``
    raises :class:`DivergenceError` when a problem is a divergence (:data:`DIVERGENCE_KINDS`) and
    warns about the others; ``"ignore"`` only records them.
    """
    problems = assess(result.samples, start, result.info, metropolis=metropolis, adapted=adapted,
                      moves_every_chain=moves_every_chain)
    result = dataclasses.replace(result, info=dataclasses.replace(result.info, warnings=problems))
    if on_divergence == "ignore" or not problems:
        return result
    if on_divergence == "raise":
        div = tuple(p for p in problems if p.kind in DIVERGENCE_KINDS)
        if div:
            raise DivergenceError(f"{sampler} diverged: " + "; ".join(p.message for p in div), problems)
    for p in problems:
        warnings.warn(f"{sampler}: {p.message}", SamplingWarning, stacklevel=3)
    return result
