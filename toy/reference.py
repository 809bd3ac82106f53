"""Exact reference sampling of any 2-D energy on a fine grid, and the check that a target fits its bounds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ebmcompose import Energy, InputError, ScoreOnlyError
from ebmcompose.checks import check_generator, check_positive_int
from ebmcompose.grid import Bounds, grid_density, parse_bounds

from ._common import rng_device

__all__ = ["reference_sample", "ImproperTargetError", "EdgeMass", "edge_mass", "check_fits_bounds"]

#: A target whose mass in the edge band exceeds this fraction of the band's share of the area
#: (what a flat density puts there) does not fit its bounds.
EDGE_MASS_RATIO = 0.5


def reference_sample(
    energy: Energy,
    n: int,
    bounds: Bounds,
    resolution: int = 512,
    t=None,
    *,
    generator: Optional[torch.Generator] = None,
    dtype: Optional[torch.dtype] = None,
) -> Tensor:
    """Sample a 2-D energy exactly (up to the grid) by inverse-CDF sampling of grid cells.

    The density ``exp(−E)`` is normalised on a ``resolution × resolution`` grid over ``bounds``
    (:func:`ebmcompose.grid.grid_density`, cell probability ``∝ exp(−E(centre))``); cells are
    drawn from the cumulative distribution and each sample is placed uniformly within its
    cell. The result is an exact sample of the piecewise-constant density, which converges to
    ``exp(−E)`` restricted to ``bounds`` as ``resolution`` grows; mass outside ``bounds`` is
    dropped (choose bounds that hold it). Memory is ``O(resolution² + n)``: fine for
    ``n = 10⁶``.

    Parameters
    ----------
    energy : ebmcompose.Energy
        Any 2-D energy that provides energy values (composed, diffused or custom).
    n : int
        Number of samples (``> 0``).
    bounds : (lo, hi) or ((x_lo, x_hi), (y_lo, y_hi))
        The region.
    resolution : int
        Cells per axis (``>= 2``).
    t : float, Tensor or None
        Diffusion time, for time-dependent energies.
    generator : torch.Generator, optional
        Randomness (the same seed gives the same samples); torch's global RNG if ``None``.
    dtype : torch.dtype, optional
        Dtype of the samples (default: torch's default dtype).

    Returns
    -------
    Tensor
        ``(n, 2)`` samples on the energy's device.

    Raises
    ------
    ValueError
        If ``n <= 0``, the bounds are malformed, the energy is not 2-D, or it is infinite
        everywhere on the grid.
    ScoreOnlyError
        If the energy provides scores only (a grid needs energy values).
    """
    if not isinstance(energy, Energy):
        raise TypeError(
            f"reference_sample needs an ebmcompose.Energy, got {type(energy).__name__}; wrap a "
            "function with ebmcompose.EnergyFunction(fn)"
        )
    n = check_positive_int(n, "n")
    generator = check_generator(generator)
    if not energy.has_energy:
        raise ScoreOnlyError(
            f"reference_sample needs energy values, but {energy!r} provides scores only; "
            "reference sampling normalises exp(-E) on a grid, so use an energy (analytic or "
            "energy-parameterised) instead"
        )
    _check_2d(energy, "reference_sample")
    parse_bounds(bounds)  # clear error before any evaluation
    dens = _grid(energy, bounds, resolution, t, "reference_sample")
    r = dens.probs.shape[0]
    cdf = torch.cumsum(dens.probs.reshape(-1), dim=0)  # float64
    dev = cdf.device
    gdev = rng_device(generator, dev)
    u = torch.rand(n, generator=generator, device=gdev, dtype=torch.float64).to(dev)
    jitter = torch.rand(n, 2, generator=generator, device=gdev, dtype=torch.float64).to(dev)
    idx = torch.searchsorted(cdf, u * cdf[-1], right=True).clamp_(max=r * r - 1)
    ix, iy = idx // r, idx % r  # probs[i, j]: x-index i, y-index j (row-major flatten)
    dx, dy = dens.cell_size
    x = dens.x_edges[ix] + dx * jitter[:, 0]
    y = dens.y_edges[iy] + dy * jitter[:, 1]
    return torch.stack([x, y], dim=-1).to(dtype or torch.get_default_dtype())


def _check_2d(energy: Energy, who: str) -> None:
    shapes = {tuple(leaf.event_shape) for leaf in energy.leaves() if leaf.event_shape is not None}
    if shapes and shapes != {(2,)}:
        raise InputError(
            f"{who} is exact only for 2-D energies (event shape (2,)), but this energy has event "
            f"shape(s) {sorted(shapes)}; for other dimensions compare against samples of a known "
            "distribution (e.g. toy.GaussianMixture.sample)"
        )


def _grid(energy: Energy, bounds, resolution: int, t, who: str):
    """:func:`grid_density`, with a failure to evaluate 2-D points reported as a 2-D-only limit."""
    try:
        return grid_density(energy, bounds, resolution=resolution, t=t)
    except (RuntimeError, IndexError) as exc:
        raise InputError(
            f"{who} evaluates the energy at 2-D grid points, and that failed ({exc}); it is exact only "
            "for 2-D energies: give a 2-D energy (declare it with event_shape=(2,))"
        ) from exc


class ImproperTargetError(InputError):
    """A 2-D target has its mass at the edge of its bounds: flat, improper, or wider than the bounds."""


@dataclass(frozen=True)
class EdgeMass:
    """How much of a 2-D density (normalised on its bounds) lies in a band along their edges.

    Attributes
    ----------
    mass : float
        Probability of the edge band.
    area : float
        The band's share of the area (what a flat density puts there).
    flat : bool
        The density varies by less than a factor 2 over the bounds.
    peak_at_edge : bool
        Its highest cell lies in the band (it grows towards the edges).
    """

    mass: float
    area: float
    flat: bool
    peak_at_edge: bool

    @property
    def fits(self) -> bool:
        """Whether the mass lies inside the bounds (the band holds less than half a flat density's share)."""
        return self.mass <= EDGE_MASS_RATIO * self.area and not self.flat


def edge_mass(energy: Energy, bounds: Bounds, *, resolution: int = 128, band: float = 0.05, t=None) -> EdgeMass:
    """The mass of ``exp(−E)`` (normalised on ``bounds``) in the band of width ``band × side`` along the edges.

    Parameters
    ----------
    energy : Energy
        A 2-D energy with energy values.
    bounds : (lo, hi) or ((x_lo, x_hi), (y_lo, y_hi))
    resolution : int
        Grid cells per axis.
    band : float
        Width of the edge band as a fraction of each side, in ``(0, 0.5)``.
    t : float, optional
        Diffusion time of a time-dependent energy.
    """
    if not 0.0 < band < 0.5:
        raise InputError(f"band must be in (0, 0.5), got {band!r}")
    _check_2d(energy, "edge_mass")
    dens = _grid(energy, bounds, resolution, t, "edge_mass")
    p = dens.probs
    k = max(1, round(band * resolution))
    inner = torch.zeros_like(p, dtype=torch.bool)
    inner[k:-k, k:-k] = True
    edge = ~inner
    peak = int(torch.argmax(p))
    positive = p[p > 0]
    flat = positive.numel() == p.numel() and float(positive.max() / positive.min()) < 2.0
    return EdgeMass(mass=float(p[edge].sum()), area=float(edge.double().mean()), flat=flat,
                    peak_at_edge=bool(edge.reshape(-1)[peak]))


def check_fits_bounds(energy: Energy, bounds: Bounds, *, what: str = "the target", t=None, **kwargs) -> EdgeMass:
    """Raise :class:`ImproperTargetError` (with advice that fits) when ``energy``'s mass lies at the edge of ``bounds``.

    A density normalisable on the plane puts almost nothing near the edges of bounds that hold it;
    a flat density (``0*ring``), one that grows outwards (``NOT ring``, a NOT weight that outweighs
    the positive terms) or one wider than the bounds does not, and no sampler can fix that.
    ``kwargs`` go to :func:`edge_mass`. Returns the measurement when the target fits.
    """
    m = edge_mass(energy, bounds, t=t, **kwargs)
    if m.fits:
        return m
    where = f"{m.mass:.0%} of its mass on the bounds {tuple(bounds)} lies in the edge band ({m.area:.0%} of the area)"
    if m.flat:
        why = (f"{what} is flat: exp(-E) is (almost) constant over the bounds, so it is not a normalisable "
               f"density ({where}). Give the expression a term that confines it, e.g. a positive weight on a component")
    elif m.peak_at_edge:
        why = (f"{what} grows towards the edges of its bounds ({where}): it is improper (not normalisable), "
               "or its modes lie outside the bounds. "
               "NOT terms (negative weights) outweigh the positive ones away from the data; lower the NOT "
               'weights or raise the positive ones, e.g. "ring AND NOT 0.5*bar"')
    else:
        why = (f"{what} is wider than its bounds ({where}). Sharpen it (a larger weight, i.e. a lower "
               "temperature) or use a composition whose mass lies inside the bounds")
    raise ImproperTargetError(why + ". A smaller step size would not help.")
