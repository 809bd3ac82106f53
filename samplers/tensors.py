"""Per-chain tensor helpers of the kernels: shapes ``x`` ``(B, *event)``, per-chain ``(B,)``.

Broadcasting a per-chain value against ``x``, summing over the event, finiteness per chain (and a
cheap all-finite test), and the random draws every kernel makes in the same way.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

__all__ = ["StepSize", "per_chain", "as_step_size", "sum_event", "finite_per_chain", "all_finite", "randn_like", "uniform",
           "noise_draw", "normal_noise", "noise_via_uniforms"]

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


def noise_via_uniforms(x: Tensor) -> bool:
    """Whether a kernel's Gaussian noise like ``x`` is drawn as uniforms (see :func:`noise_draw`)."""
    return x.is_cpu and x.dtype == torch.float64


def noise_draw(x: Tensor, generator: Optional[torch.Generator], out: Optional[Tensor] = None) -> Tensor:
    """One step's draw for Gaussian noise like ``x`` ``(B, *event)``; :func:`normal_noise` makes the noise.

    Float64 chains on the CPU draw ``N + N mod 2`` uniforms (``N = x.numel()``, flat), turned into
    normals by Box–Muller inside the transition (compiled, on contiguous vectors: vectorised):
    torch's float64 ``randn`` is a scalar Box–Muller at ~4× the cost of a uniform. Other chains
    draw :func:`randn_like` (float32 ``randn`` is vectorised, and on a GPU both are cheap).
    Written into ``out`` when given.
    """
    if not noise_via_uniforms(x):
        return randn_like(x, generator, out)
    if out is not None:
        return out.uniform_(generator=generator)
    n = x.numel()
    return torch.rand(n + n % 2, generator=generator, device=x.device, dtype=x.dtype)


def normal_noise(draw: Tensor, x: Tensor) -> Tensor:
    """Standard normal noise like ``x`` from :func:`noise_draw`'s ``draw``: the draw itself, or Box–Muller
    of its uniforms, the first half with the second (``r = sqrt(-2 log(1 - u₁))``, ``θ = 2π u₂``:
    ``r cos θ`` and ``r sin θ``, two independent N(0, 1); ``1 - u₁`` is in ``(0, 1]``, so ``r`` is
    finite, at most 8.6)."""
    if not noise_via_uniforms(x):
        return draw
    m = draw.shape[0] // 2
    r = torch.log1p(-draw[:m]).mul(-2.0).sqrt()
    theta = draw[m:] * (2.0 * math.pi)
    return torch.cat((r * theta.cos(), r * theta.sin()))[:x.numel()].reshape(x.shape)
