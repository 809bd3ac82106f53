"""Is a learned score field conservative? Energy–score consistency checks.

A score ``s = −∇E`` has a symmetric Jacobian (the Hessian of ``−E``); an ε-network is trained
only to match scores and need not be the gradient of anything. These utilities measure how far
a field is from conservative, with finite differences, so they work for any
:class:`~ebmcompose.Energy` (score-only models included).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .energy import Energy, TimeLike
from .errors import InputError

__all__ = ["curl_2d", "jacobian_asymmetry"]


def _jvp_fd(energy: Energy, x: Tensor, t, v: Tensor, h: float) -> Tensor:
    """Central finite difference of the score along ``v``: ``J v`` ``(B, *event)``."""
    return (energy.score(x + h * v, t) - energy.score(x - h * v, t)) / (2 * h)


@torch.no_grad()
def curl_2d(energy: Energy, x: Tensor, t: TimeLike = None, h: float = 1e-3) -> Tensor:
    """Curl of a 2-D score field, ``∂s_y/∂x − ∂s_x/∂y``, by central differences.

    Zero for a conservative field (any true ``−∇E``).

    Parameters
    ----------
    energy : Energy
        A 2-D energy or score model.
    x : Tensor
        ``(B, 2)`` points.
    t : float, Tensor or None
        Diffusion time.
    h : float
        Finite-difference step.

    Returns
    -------
    Tensor
        ``(B,)`` curl at each point.
    """
    if x.dim() != 2 or x.shape[1] != 2:
        raise InputError(f"curl_2d needs 2-D points of shape (B, 2), got {tuple(x.shape)}")
    ex = torch.zeros_like(x)
    ex[:, 0] = 1
    ey = torch.zeros_like(x)
    ey[:, 1] = 1
    dsdx = _jvp_fd(energy, x, t, ex, h)  # column of J for ∂/∂x
    dsdy = _jvp_fd(energy, x, t, ey, h)
    return dsdx[:, 1] - dsdy[:, 0]


@torch.no_grad()
def jacobian_asymmetry(
    energy: Energy,
    x: Tensor,
    t: TimeLike = None,
    n_probes: int = 8,
    h: float = 1e-3,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Relative asymmetry of the score's Jacobian, ``E[(uᵀJv − vᵀJu)²] / E[(uᵀJv)² + (vᵀJu)²]``.

    Estimated with random Gaussian probes ``u, v`` and finite-difference Jacobian–vector
    products; 0 for a conservative field, 2 for a purely rotational one (about 1 for a Jacobian
    with independent random entries). Works in any
    dimension (points or images).

    Parameters
    ----------
    energy : Energy
        Energy or score model.
    x : Tensor
        ``(B, *event)`` points.
    t : float, Tensor or None
        Diffusion time.
    n_probes : int
        Number of probe pairs.
    h : float
        Finite-difference step.
    generator : torch.Generator, optional
        For the probes.

    Returns
    -------
    Tensor
        ``(B,)`` relative asymmetry in ``[0, 2]``.
    """
    num = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    den = torch.zeros_like(num)
    for _ in range(n_probes):
        u = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        v = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        ju = _jvp_fd(energy, x, t, u, h).reshape(x.shape[0], -1)
        jv = _jvp_fd(energy, x, t, v, h).reshape(x.shape[0], -1)
        uf, vf = u.reshape(x.shape[0], -1), v.reshape(x.shape[0], -1)
        a = (uf * jv).sum(1)  # uᵀ J v
        b = (vf * ju).sum(1)  # vᵀ J u
        num += (a - b) ** 2
        den += a**2 + b**2
    return num / den.clamp_min(torch.finfo(x.dtype).tiny)
