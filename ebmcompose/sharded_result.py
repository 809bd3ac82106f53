"""What :func:`ebmcompose.distributed.sample` returns: the gathered samples and one report per block."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["EXTRA_KEYS", "BlockReport", "ShardedResult"]

#: Per-block scalars kept when a sampler reports them (SMC's log-normaliser and resampling events).
EXTRA_KEYS = ("log_z", "n_resampled")


@dataclass(frozen=True)
class BlockReport:
    """What one block's run reported (from its ``res.info`` and ``res.warnings``).

    Attributes
    ----------
    block, n : int
        The block and its number of chains.
    nfe : int
        Evaluations of the block's run (each one a batched call over its chains).
    acceptance : float or None
        Its mean acceptance (``None`` without a Metropolis or proxy acceptance).
    divergences : int
        Its divergent proposals.
    step_size : float or None
        Its final step size when it is one number (each block adapts its own).
    warnings : tuple
        Its ``res.warnings`` (``samplers.health.Problem``).
    extra : tuple of (str, float)
        The block's values of :data:`EXTRA_KEYS` that its sampler reports.
    """

    block: int
    n: int
    nfe: int
    acceptance: Optional[float]
    divergences: int
    step_size: Optional[float]
    warnings: Tuple[Any, ...] = ()
    extra: Tuple[Tuple[str, float], ...] = ()

    @classmethod
    def of(cls, block: int, res) -> "BlockReport":
        info = res.info
        h = info.get("step_size")
        h = float(torch.as_tensor(h)) if h is not None and torch.as_tensor(h).numel() == 1 else None
        return cls(block=block, n=int(res.samples.shape[0]), nfe=int(info["nfe"]),
                   acceptance=getattr(info, "mean_acceptance", None),
                   divergences=int(info.get("divergences", 0) or 0), step_size=h,
                   warnings=tuple(getattr(res, "warnings", ())),
                   extra=tuple((k, float(info.get(k))) for k in EXTRA_KEYS if info.get(k) is not None))


def _weighted(values: Sequence[Tuple[float, int]]) -> Optional[float]:
    if not values:
        return None
    return sum(v * k for v, k in values) / sum(k for _, k in values)


@dataclass(frozen=True)
class ShardedResult:
    """What :func:`ebmcompose.distributed.sample` returns on every rank.

    Attributes
    ----------
    samples : Tensor
        ``(n, *event)`` all chains in global order, on the run's device.
    blocks : tuple of BlockReport
        One per block, in block order.
    plan : ec.distributed.BlockPlan
        The blocks and this rank's share.
    population : dict or None
        For a sampler run as one population over all blocks (SMC): what describes the whole
        population, the same on every rank: ``log_z`` (float), ``n_resampled`` (int), ``ess``
        ``(L,)`` float64 and ``resampled`` ``(L,)`` bool per level; ``None`` for independent chains.
    """

    samples: Tensor
    blocks: Tuple[BlockReport, ...]
    plan: Any
    population: Optional[dict] = None

    @property
    def nfe(self) -> int:
        """Evaluations each chain went through (the most over the blocks)."""
        return max(b.nfe for b in self.blocks)

    @property
    def acceptance(self) -> Optional[float]:
        """Mean acceptance over the chains (blocks weighted by size); ``None`` without one."""
        return _weighted([(b.acceptance, b.n) for b in self.blocks if b.acceptance is not None])

    @property
    def divergences(self) -> int:
        return sum(b.divergences for b in self.blocks)

    @property
    def step_size(self) -> Optional[float]:
        """Mean final step size over the chains (blocks weighted by size); ``None`` if not one number."""
        return _weighted([(b.step_size, b.n) for b in self.blocks if b.step_size is not None])

    @property
    def warnings(self) -> Tuple[Any, ...]:
        """Every block's warnings, in block order, each kind once."""
        seen, out = set(), []
        for b in self.blocks:
            for p in b.warnings:
                key = (getattr(p, "kind", None), getattr(p, "fatal", None))
                if key not in seen:
                    seen.add(key)
                    out.append(p)
        return tuple(out)
