"""Per-chain tensor helpers of the kernels: shapes ``x`` ``(B, *event)``, per-chain ``(B,)``.

Broadcasting a per-chain value against ``x``, summing over the event, finiteness per chain (and a
cheap all-finite test), and the random draws every kernel makes in the same way.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

__all__ = ["StepSize", "per_chain", "as_step_size", "sum_event", "finite_per_chain", "all_finite", "randn_like", "uniform"]

StepSize = Union[float, Tensor]


def per_chain(v: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-chain ``(B,)`` tensor to broadcast against ``like`` ``(B, *event)``."""
    return v.reshape(v.shape[:1] + (1,) * (like.dim() - 1))


def as_step_size(step_size: StepSize, like: Tensor) -> Tensor:
    """A step size as a tensor on ``like``'s device/dtype (tensors pass through unchanged)."""
    return step_size if isinstance(step_size, Tensor) else torch.tensor(step_size, device=like.device, dtype=like.dtype)


def sum_event(v: Tensor) -> Tensor:
    """Sum over all but the batch dimension: ``(B, *event) -> (B,)``."""
    return v.sum(dim=1) if v.dim() == 2 else v.flatten(1).sum(dim=1)


def finite_per_chain(v: Tensor) -> Tensor:
    """``(B,)`` bool: rows of ``v`` ``(B, *event)`` with every entry finite (``inf·0`` and ``NaN·0`` are NaN)."""
    return sum_event(v * 0.0) == 0


def all_finite(v: Tensor) -> bool:
    """Whether every entry of ``v`` is surely finite, from one sum read back (a finite sum has no
    inf/NaN term; an overflowing sum only answers ``False``).

    Only on the CPU outside ``torch.compile``, where reading a number back costs no device
    synchronisation; elsewhere ``False``, and callers take their per-chain path. On the CPU the
    per-chain check and ``(B, 1)``-broadcast selects cost ~15× an add of the same tensors, so a
    kernel skips them this way when no proposal diverged.
    """
    if not v.is_cpu or torch.compiler.is_compiling():
        return False
    return math.isfinite(v.sum().item())


def randn_like(x: Tensor, generator: Optional[torch.Generator], out: Optional[Tensor] = None) -> Tensor:
    """Standard normal noise like ``x`` (contiguous, so the draws do not depend on ``x``'s strides);
    written into ``out`` (contiguous, like ``x``) when given: the same numbers, no new tensor."""
    if out is not None:
        return out.normal_(generator=generator)
    return torch.randn_like(x, generator=generator, memory_format=torch.contiguous_format)


def uniform(like: Tensor, generator: Optional[torch.Generator], out: Optional[Tensor] = None) -> Tensor:
    """``(B,)`` ``U(0, 1)`` draws on ``like``'s device/dtype (into ``out`` ``(B,)`` when given)."""
    if out is not None:
        return out.uniform_(generator=generator)
    return torch.rand(like.shape[:1], generator=generator, device=like.device, dtype=like.dtype)
