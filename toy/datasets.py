"""Classic 2-D training sets, sampled deterministically from an explicit generator.

All sets live roughly in ``[−4, 4]²`` and are returned as ``(n, 2)`` float32 tensors:

=================  ===========================================================================
``8gaussians``     8 isotropic Gaussians on a circle of radius 4, std 0.3 (:func:`toy.ring`)
``checkerboard``   uniform on the 8 cells ``(i + j)`` even of a 4×4 board of 2×2 cells on ``[−4, 4]²``
``moons``          two interleaving half circles (radius 2), Gaussian noise std 0.2
``rings``          concentric circles of radii 1, 2, 3, 4 (points ∝ circumference), noise 0.08
``spirals``        two interleaved spiral arms of 1.5 turns out to radius 4, noise 0.1
=================  ===========================================================================
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

from ebmcompose.checks import check_generator, check_positive_int

from .gaussian import ring

__all__ = ["sample", "names"]


def _rand(g, *shape) -> Tensor:
    return torch.rand(*shape, generator=g, dtype=torch.float64)


def _randn(g, *shape) -> Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _randint(g, high: int, n: int) -> Tensor:
    return torch.randint(high, (n,), generator=g)


def _eight_gaussians(n: int, g) -> Tensor:
    return ring(8, radius=4.0, std=0.3, dtype=torch.float64).sample(n, generator=g)


def _checkerboard(n: int, g) -> Tensor:
    # cells (i, j), i, j in 0..3, of side 2 starting at -4; keep the 8 with i + j even
    cell = _randint(g, 8, n)
    i = cell // 2
    j = 2 * (cell % 2) + (i % 2)  # j has the parity of i
    corner = torch.stack([i, j], dim=-1).double() * 2.0 - 4.0
    return corner + 2.0 * _rand(g, n, 2)


def _moons(n: int, g) -> Tensor:
    which = _randint(g, 2, n).double()  # 0: upper moon, 1: lower moon
    theta = math.pi * _rand(g, n)
    upper = torch.stack([torch.cos(theta), torch.sin(theta)], dim=-1)
    lower = torch.stack([1.0 - torch.cos(theta), 0.5 - torch.sin(theta)], dim=-1)
    pts = torch.where(which[:, None] == 0, upper, lower)
    pts = (pts - torch.tensor([0.5, 0.25], dtype=torch.float64)) * 2.0
    return pts + 0.2 * _randn(g, n, 2)


def _rings(n: int, g) -> Tensor:
    radii = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    which = torch.multinomial(radii / radii.sum(), n, replacement=True, generator=g)
    theta = 2.0 * math.pi * _rand(g, n)
    r = radii[which]
    pts = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=-1)
    return pts + 0.08 * _randn(g, n, 2)


def _spirals(n: int, g) -> Tensor:
    arm = _randint(g, 2, n).double()
    s = torch.sqrt(_rand(g, n))  # denser towards the outside, like arc length
    theta = 3.0 * math.pi * s + math.pi * arm
    r = 4.0 * s
    pts = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=-1)
    return pts + 0.1 * _randn(g, n, 2)


_SETS: Dict[str, Callable[[int, Optional[torch.Generator]], Tensor]] = {
    "8gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
    "moons": _moons,
    "rings": _rings,
    "spirals": _spirals,
}


def names() -> Tuple[str, ...]:
    """Names of the datasets, sorted."""
    return tuple(sorted(_SETS))


def sample(name: str, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """Draw ``n`` points of the dataset ``name``.

    Parameters
    ----------
    name : str
        One of :func:`names`.
    n : int
        Number of points (``> 0``).
    generator : torch.Generator, optional
        CPU generator; the same seed gives the same points (torch's global RNG if ``None``).

    Returns
    -------
    Tensor
        ``(n, 2)`` float32 on the CPU.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the valid ones) or ``n <= 0``.
    """
    try:
        fn = _SETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown dataset {name!r}; valid names are {', '.join(names())}") from None
    n = check_positive_int(n, "n")
    generator = check_generator(generator)
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(f"datasets are drawn on the CPU; pass a CPU generator, got one on {generator.device}")
    return fn(n, generator).to(torch.float32)
