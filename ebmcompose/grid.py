"""Energies evaluated on a 2-D grid: the exact reference for any 2-D density.

A 2-D energy is normalised numerically on a fine grid of cells: cell probabilities are
``exp(-E(center)) · area / Z``. This is what :func:`toy.reference_sample` samples from and what
:func:`ebmcompose.metrics.histogram_tv` compares histograms against.

``bounds`` is ``(lo, hi)`` for the square ``[lo, hi]²`` or ``((x_lo, x_hi), (y_lo, y_hi))``.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from .checks import check_positive_int
from .energy import Energy, TimeLike
from .errors import InputError, InputTypeError

__all__ = ["Bounds", "parse_bounds", "GridDensity", "grid_density"]

Bounds = Union[Tuple[float, float], Tuple[Tuple[float, float], Tuple[float, float]]]


def _is_scalar(b) -> bool:
    """A real number: Python, NumPy scalar or 0-d tensor (not a pair)."""
    if isinstance(b, Tensor):
        return b.dim() == 0
    if isinstance(b, bool):
        return False
    return isinstance(b, numbers.Real)


def parse_bounds(bounds: Bounds) -> Tuple[Tuple[float, float], Tuple[float, float]]:
    """Normalise ``bounds`` to ``((x_lo, x_hi), (y_lo, y_hi))`` and check it.

    Raises
    ------
    ValueError
        If the bounds are malformed or empty.
    """
    try:
        if len(bounds) == 2 and all(_is_scalar(b) for b in bounds):
            lo, hi = float(bounds[0]), float(bounds[1])
            out = ((lo, hi), (lo, hi))
        else:
            (xl, xh), (yl, yh) = bounds
            out = ((float(xl), float(xh)), (float(yl), float(yh)))
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"bounds must be (lo, hi) for a square or ((x_lo, x_hi), (y_lo, y_hi)), got {bounds!r}"
        ) from exc
    for lo, hi in out:
        if not (lo < hi) or not all(map(torch.isfinite, torch.tensor([lo, hi]))):
            raise InputError(f"bounds need finite lo < hi in each axis, got {bounds!r}")
    return out


@dataclass(frozen=True)
class GridDensity:
    """A 2-D density discretised on a ``resolution × resolution`` grid of cells.

    Attributes
    ----------
    probs : Tensor
        ``(R, R)`` cell probabilities summing to 1; ``probs[i, j]`` is the cell with x-index
        ``i`` and y-index ``j``.
    x_edges, y_edges : Tensor
        ``(R + 1,)`` cell edges along each axis.
    log_z : Tensor
        Scalar ``log ∫ exp(-E)`` over the bounds (grid quadrature).
    """

    probs: Tensor
    x_edges: Tensor
    y_edges: Tensor
    log_z: Tensor

    @property
    def centers(self) -> Tensor:
        """``(R*R, 2)`` cell centres in the order of ``probs.flatten()``."""
        xc = 0.5 * (self.x_edges[1:] + self.x_edges[:-1])
        yc = 0.5 * (self.y_edges[1:] + self.y_edges[:-1])
        gx, gy = torch.meshgrid(xc, yc, indexing="ij")
        return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1)

    @property
    def cell_size(self) -> Tuple[float, float]:
        """``(dx, dy)``."""
        return (
            float(self.x_edges[1] - self.x_edges[0]),
            float(self.y_edges[1] - self.y_edges[0]),
        )

    def mean(self) -> Tensor:
        """``(2,)`` mean of the discretised density."""
        return (self.probs.reshape(-1, 1) * self.centers).sum(0)


@torch.no_grad()
def grid_density(
    energy: Energy,
    bounds: Bounds,
    resolution: int = 512,
    t: TimeLike = None,
    chunk_size: int = 65536,
    device: Optional[Union[str, torch.device]] = None,
    dtype: torch.dtype = torch.float64,
) -> GridDensity:
    """Normalise a 2-D energy on a grid.

    Parameters
    ----------
    energy : Energy
        Any energy with ``event_shape`` ``(2,)`` (or unspecified) that provides energy values.
    bounds : (lo, hi) or ((x_lo, x_hi), (y_lo, y_hi))
        The region; mass outside it is ignored (document the truncation where it matters).
    resolution : int
        Cells per axis (``R``); memory is ``O(R²)``, evaluation chunked by ``chunk_size``.
    t : float, Tensor or None
        Diffusion time for time-dependent energies.
    device, dtype
        Where and in what precision to evaluate (default: the energy's device, float64).

    Returns
    -------
    GridDensity
    """
    if not isinstance(resolution, int) or resolution < 2:
        raise InputError(f"resolution must be an integer >= 2, got {resolution!r}")
    check_positive_int(chunk_size, "chunk_size")
    if not isinstance(energy, Energy):
        raise InputTypeError(
            f"grid_density needs an ebmcompose.Energy, got {type(energy).__name__}; wrap a "
            "function with ec.EnergyFunction(fn)"
        )
    if energy.event_shape is not None and tuple(energy.event_shape) != (2,):
        raise InputError(f"grid densities are 2-D only; this energy has event shape {energy.event_shape}")
    (xl, xh), (yl, yh) = parse_bounds(bounds)
    if device is None:
        p = next(iter(list(energy.parameters()) + list(energy.buffers())), None)
        device = p.device if p is not None else torch.device("cpu")
    x_edges = torch.linspace(xl, xh, resolution + 1, dtype=dtype, device=device)
    y_edges = torch.linspace(yl, yh, resolution + 1, dtype=dtype, device=device)
    dens = GridDensity(torch.empty(0), x_edges, y_edges, torch.tensor(0.0))
    centers = dens.centers
    # Evaluate in the energy's own precision where it has parameters (modules may not accept
    # float64 inputs), then accumulate in float64.
    p = next(iter(list(energy.parameters()) + list(energy.buffers())), None)
    eval_dtype = p.dtype if (p is not None and p.is_floating_point()) else dtype
    energies = []
    for start in range(0, centers.shape[0], chunk_size):
        xc = centers[start : start + chunk_size].to(eval_dtype)
        energies.append(energy.energy(xc, t).to(dtype))
    e = torch.cat(energies)
    logp = -e
    finite = torch.isfinite(logp)
    if not bool(finite.any()):
        raise InputError("the energy is infinite (or NaN) everywhere on the grid; check the bounds")
    if bool(torch.isnan(logp).any()):
        raise InputError("the energy is NaN somewhere on the grid")
    if bool(torch.isposinf(logp).any()):
        raise InputError(
            "the energy is -inf somewhere on the grid (infinite density): the density cannot be "
            "normalised; use +inf for zero density"
        )
    dx, dy = dens.cell_size
    log_area = torch.log(torch.tensor(dx * dy, dtype=dtype, device=device))
    log_z = torch.logsumexp(logp, dim=0) + log_area
    probs = torch.softmax(logp, dim=0).reshape(resolution, resolution)
    return GridDensity(probs, x_edges, y_edges, log_z)
